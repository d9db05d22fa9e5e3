"""The scoring model a marketer writes in `scoring.yaml`: typed and validated.

A file holds one or more named models; each segment names the one it uses (or
gets `default_model`). A model has two dimensions kept apart:

- **fit**: rules on the profile (title, company size, industry, country, email
  domain, any attribute or Jinja2 expression), each adding or taking points;
- **engagement**: rules on responses (type, plus glob patterns on its data such
  as the page URL), with a cap per rule, once-only or repeatable, losing value
  with age (a half-life).

Each dimension is scaled to 0-100 against its `max`, and the two are combined
with `weights` into a 0-100 total. Fit also gives a letter grade. Stages (MQL,
PQL, SQL) are thresholds on the total or expressions over the dimensions; SQL
may need a gate (e.g. BANT) too. The engine (`scoring/engine.py`) does the maths.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from models.definitions import (
    IDENTIFIER,
    RESPONSE_TYPES,
    _Definition,
    _LocatedValueError,
    parse_duration,
)
from models.jinja import ConditionError, compile_condition

# The stage ladder of nurture; `lead` is where everyone starts. Stages after SQL
# (accepted, rejected...) belong to sales and scoring never moves them.
STAGE_LADDER = ("lead", "mql", "pql", "sql")
PROFILE_FIELDS = (
    "email", "email_domain", "first_name", "last_name", "title", "company", "company_size",
    "industry", "country", "timezone", "source", "segment",
)  # fmt: skip


def _expression(value: str) -> str:
    try:
        compile_condition(value)
    except ConditionError as exc:
        raise ValueError(str(exc)) from None
    return value


class FitRule(_Definition):
    """Points for a profile that matches: one field test, or a Jinja2 `when` over `lead`."""

    id: Annotated[str, Field(pattern=IDENTIFIER)]
    points: float
    description: str = ""
    field: str | None = Field(
        default=None, description="a profile field, `email_domain`, or `attributes.NAME`"
    )
    matches: str | None = Field(default=None, description="regular expression, any case")
    equals: str | int | float | bool | None = None
    in_: list[str | int | float] | None = Field(default=None, alias="in")
    at_least: float | None = None
    below: float | None = None
    when: str | None = Field(default=None, description="Jinja2 expression over `lead`")

    model_config = {**_Definition.model_config, "populate_by_name": True}

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str | None) -> str | None:
        if (
            value is not None
            and value not in PROFILE_FIELDS
            and not value.startswith("attributes.")
        ):
            raise ValueError(
                f"unknown field {value!r}; use one of {', '.join(PROFILE_FIELDS)} "
                "or attributes.NAME"
            )
        return value

    @field_validator("matches")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    _when = field_validator("when")(lambda v: v if v is None else _expression(v))

    @model_validator(mode="after")
    def _one_test(self) -> FitRule:
        tests = [self.matches, self.equals, self.in_, self.at_least, self.below]
        given = [t for t in tests if t is not None]
        if self.when is not None:
            if self.field is not None or given:
                raise _LocatedValueError(("when",), "a rule has either `when` or a field test")
            return self
        if self.field is None:
            raise _LocatedValueError(("field",), "give a `field` to test (or a `when` expression)")
        if not given:
            raise _LocatedValueError(
                ("field",), "say how to test the field: matches, equals, in, at_least or below"
            )
        if (self.matches, self.equals, self.in_).count(None) < 2:
            raise _LocatedValueError(("field",), "use one of matches, equals and in")
        if self.at_least is not None and self.below is not None and self.below <= self.at_least:
            raise _LocatedValueError(("below",), "`below` must be above `at_least`")
        return self


class EngagementRule(_Definition):
    """Points per matching response; the first rule (in file order) that matches counts."""

    id: Annotated[str, Field(pattern=IDENTIFIER)]
    event: list[str] = Field(description="response types, e.g. page.view")
    points: float
    description: str = ""
    where: dict[str, str] = Field(
        default_factory=dict, description="glob patterns on the response's data, e.g. url"
    )
    cap: float | None = Field(default=None, gt=0, description="most points this rule gives")
    once: bool = False
    decays: bool = True

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:  # YAML 1.1 reads a bare `on:` as true
            raise _LocatedValueError(("event",), "write `event:` (YAML reads `on:` as true)")
        return data

    @field_validator("event", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("event")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        for response_type in value:
            if response_type not in RESPONSE_TYPES:
                raise ValueError(
                    f"unknown response type {response_type!r}; known: "
                    f"{', '.join(sorted(RESPONSE_TYPES))}"
                )
        if not value:
            raise ValueError("name at least one response type")
        return value


class Dimension(_Definition):
    max: float = Field(default=100, gt=0, description="raw points that make a full 100")


class Fit(Dimension):
    rules: list[FitRule] = Field(default_factory=list)


class Engagement(Dimension):
    half_life: int | None = Field(
        default=None, description="engagement points halve in value over this; none: no decay"
    )
    rules: list[EngagementRule] = Field(default_factory=list)

    _parse = field_validator("half_life", mode="before")(
        lambda v: v if v is None else parse_duration(v)
    )


class Weights(_Definition):
    fit: float = Field(ge=0, le=100)
    engagement: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _hundred(self) -> Weights:
        if abs(self.fit + self.engagement - 100) > 1e-9:
            raise _LocatedValueError(
                ("fit",), f"weights must add up to 100 (fit {self.fit} + engagement "
                f"{self.engagement} = {self.fit + self.engagement})",
            )  # fmt: skip
        return self


class Grades(_Definition):
    """The least fit score (0-100) for each grade; below C is D."""

    A: float = 75
    B: float = 50
    C: float = 25

    @model_validator(mode="after")
    def _ordered(self) -> Grades:
        if not self.A > self.B > self.C:
            raise _LocatedValueError(("A",), "grades must fall: A above B above C")
        return self


class Stage(_Definition):
    """When a lead enters the stage: `at` a total, or `when` an expression (or both)."""

    at: float | None = Field(default=None, ge=0, le=100, description="total at least this")
    when: str | None = Field(default=None, description="expression over the score card")
    # Hysteresis: once in the stage, the lead leaves it (recycled to nurture) only when
    # this holds, well below the entry point, so it does not flap around a threshold.
    recycle_below: float | None = Field(default=None, ge=0, le=100)
    recycle_when: str | None = None
    gate: dict[Annotated[str, Field(pattern=IDENTIFIER)], str] = Field(
        default_factory=dict, description="criteria that must all hold too, e.g. BANT"
    )
    gate_name: str = "gate"

    _when = field_validator("when", "recycle_when")(lambda v: v if v is None else _expression(v))

    @field_validator("gate")
    @classmethod
    def _gate(cls, value: dict[str, str]) -> dict[str, str]:
        for name, expression in value.items():
            try:
                _expression(expression)
            except ValueError as exc:
                raise _LocatedValueError((name,), str(exc)) from None
        return value

    @model_validator(mode="after")
    def _entry(self) -> Stage:
        if self.at is None and self.when is None:
            raise _LocatedValueError(("at",), "give `at` (a total) or `when` (an expression)")
        if self.recycle_below is not None and self.at is not None and self.recycle_below >= self.at:
            raise _LocatedValueError(
                ("recycle_below",),
                f"recycle_below ({self.recycle_below}) must be under `at` ({self.at}), "
                "or the lead would flap between stages",
            )
        return self


class Stages(_Definition):
    mql: Stage
    pql: Stage | None = None
    sql: Stage

    @model_validator(mode="after")
    def _ordered(self) -> Stages:
        if self.sql.recycle_below is not None or self.sql.recycle_when is not None:
            raise _LocatedValueError(
                ("sql", "recycle_below"), "an SQL belongs to sales; only they send it back"
            )
        if self.mql.at is not None and self.sql.at is not None and self.sql.at <= self.mql.at:
            raise _LocatedValueError(
                ("sql", "at"), f"sql ({self.sql.at}) must be above mql ({self.mql.at})"
            )
        return self

    def ladder(self) -> list[tuple[str, Stage]]:
        """The stages above `lead`, lowest first."""
        stages = [("mql", self.mql), ("pql", self.pql), ("sql", self.sql)]
        return [(name, stage) for name, stage in stages if stage is not None]


class ScoringModel(_Definition):
    name: str = "default"
    description: str = ""
    fit: Fit = Field(default_factory=Fit)
    engagement: Engagement = Field(default_factory=Engagement)
    weights: Weights = Field(default_factory=lambda: Weights(fit=40, engagement=60))
    grades: Grades = Field(default_factory=Grades)
    stages: Stages
    # How often the lead workflow re-scores a lead while its points are still decaying.
    rescore_every: int = Field(default=86400)

    _parse = field_validator("rescore_every", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _unique_rules(self) -> ScoringModel:
        seen: set[str] = set()
        for dimension in ("fit", "engagement"):
            for index, rule in enumerate(getattr(self, dimension).rules):
                if rule.id in seen:
                    raise _LocatedValueError(
                        (dimension, "rules", index, "id"), f"duplicate rule id {rule.id!r}"
                    )
                seen.add(rule.id)
        return self

    @property
    def fingerprint(self) -> str:
        """Names this exact model, so a worker can tell it scores with the same one."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
        return f"{self.name}@{digest}"

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self.fit.rules] + [r.id for r in self.engagement.rules]


class PredictiveSettings(_Definition):
    """`predictive:` in scoring.yaml: what `nurture train` learns and what it accepts
    (docs/predictive.md)."""

    horizon: int = Field(
        default=90 * 86400, description="predict a win within this of the moment scored"
    )
    min_auc: float = Field(
        default=0.6, ge=0.5, le=1, description="a model under this ROC AUC is refused"
    )
    kind: Literal["logistic", "boosted"] = Field(
        default="logistic", description="regularised logistic regression, or gradient boosting"
    )
    reasons: int = Field(default=3, ge=0, le=10, description="top reasons shown with `predicted`")
    retrain: Literal["off", "weekly"] = Field(
        default="off", description="weekly: a Temporal Schedule trains a candidate model"
    )

    _parse = field_validator("horizon", mode="before")(parse_duration)

    @property
    def horizon_days(self) -> int:
        return max(1, round(self.horizon / 86400))


class ScoringBook(_Definition):
    """The whole `scoring.yaml`: named models and the one used when a segment names none."""

    default_model: str
    models: dict[Annotated[str, Field(pattern=IDENTIFIER)], ScoringModel] = Field(min_length=1)
    predictive: PredictiveSettings = Field(default_factory=PredictiveSettings)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        # Each model knows its own name (for the score card), taken from its key.
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = {**data, "models": {
                name: ({"name": name, **body} if isinstance(body, dict) else body)
                for name, body in data["models"].items()
            }}  # fmt: skip
        return data

    @model_validator(mode="after")
    def _default_exists(self) -> ScoringBook:
        if self.default_model not in self.models:
            raise _LocatedValueError(
                ("default_model",),
                f"no model {self.default_model!r} (models: {', '.join(self.models)})",
            )
        return self

    def model(self, name: str | None) -> ScoringModel:
        return self.models.get(name or self.default_model) or self.models[self.default_model]


StageName = Literal["lead", "mql", "pql", "sql"]
