"""Typed definitions a marketer writes: sequences, segments, the scoring model, sales reps.

These are the only shapes the rest of Nurture sees; the workflow receives these
validated models (as a snapshot), never raw YAML. Loading lives in
`models/loader.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Every response type Nurture understands. Webhooks and the events API map onto these.
RESPONSE_TYPES: frozenset[str] = frozenset(
    {
        "email.delivered",
        "email.open",
        "email.click",
        "email.reply",
        "email.bounce",
        "email.unsubscribe",
        "email.spamreport",
        "sms.delivered",
        "sms.reply",
        "sms.stop",
        "page.view",
        "content.download",
        "webinar.registered",
        "webinar.attended",
        "newsletter.signup",
        "trial.started",
        "product.action",
        "form.submitted",
    }
)

STAGES = ("lead", "mql", "sql")
IDENTIFIER = r"^[a-z][a-z0-9_]*$"

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int) -> int:
    """'90s', '15m', '2h', '3d', '1w' (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '2h', '3d' or '1w'")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"{value!r} is not a duration; use a number and a unit: "
                "'30s', '15m', '2h', '3d' or '1w'"
            )
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    return seconds


class _Definition(BaseModel):
    # Unknown keys are almost always typos ("duraton:"), so they are errors.
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Step(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    next: str | None = Field(
        default=None, description="step to go to afterwards; default: the following step"
    )


class EmailStep(_Step):
    type: Literal["email"]
    template: str


class SmsStep(_Step):
    type: Literal["sms"]
    template: str


class WaitStep(_Step):
    type: Literal["wait"]
    duration: int = Field(description="seconds; written as '3d', '2h', ...")

    _parse = field_validator("duration", mode="before")(parse_duration)


class WaitForStep(_Step):
    """Wait until the lead does something (e.g. clicks), or give up after `timeout`."""

    type: Literal["wait_for"]
    event: str
    timeout: int
    on_event: str | None = None
    on_timeout: str | None = None

    _parse = field_validator("timeout", mode="before")(parse_duration)

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in RESPONSE_TYPES:
            raise ValueError(f"unknown event {value!r}; known: {', '.join(sorted(RESPONSE_TYPES))}")
        return value


class BranchStep(_Step):
    """Go to `then` when the Jinja2 condition `if` holds, else to `else`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["branch"]
    condition: str = Field(alias="if")
    then: str
    otherwise: str | None = Field(default=None, alias="else")


class ExitStep(_Step):
    type: Literal["exit"]
    reason: str = "sequence finished"


Step = Annotated[
    EmailStep | SmsStep | WaitStep | WaitForStep | BranchStep | ExitStep,
    Field(discriminator="type"),
]


class Sequence(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    name: str
    version: int = 1
    description: str = ""
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _targets_exist(self) -> Sequence:
        ids = [step.id for step in self.steps]
        seen: set[str] = set()
        for index, step_id in enumerate(ids):
            if step_id in seen:
                raise _LocatedValueError(("steps", index, "id"), f"duplicate step id {step_id!r}")
            seen.add(step_id)
        for index, step in enumerate(self.steps):
            for field, target in self.step_targets(step).items():
                if target is not None and target not in seen:
                    raise _LocatedValueError(
                        ("steps", index, field),
                        f"step {step.id!r} goes to {target!r}, which is not a step of this "
                        f"sequence (steps: {', '.join(ids)})",
                    )
        return self

    @staticmethod
    def step_targets(step: Step) -> dict[str, str | None]:
        targets: dict[str, str | None] = {"next": step.next}
        if isinstance(step, WaitForStep):
            targets |= {"on_event": step.on_event, "on_timeout": step.on_timeout}
        if isinstance(step, BranchStep):
            targets |= {"if": step.then, "else": step.otherwise}
        return targets

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def following(self, step_id: str) -> str | None:
        """The step after `step_id` in file order, or None at the end."""
        ids = [step.id for step in self.steps]
        index = ids.index(step_id)
        return ids[index + 1] if index + 1 < len(ids) else None

    def after(self, step_id: str, outcome: str = "done") -> str | None:
        """The step that follows `step_id` given its outcome; None ends the sequence.

        Outcomes: "done" (sends, waits), "event" / "timeout" (wait_for),
        "then" / "else" (branch). An outcome with no target of its own goes to
        `next`, or else to the following step in the file.
        """
        step = self.step(step_id)
        if step.type == "exit":
            return None
        default = step.next or self.following(step_id)
        if isinstance(step, WaitForStep):
            target = step.on_event if outcome == "event" else step.on_timeout
            return target or default
        if isinstance(step, BranchStep):
            return step.then if outcome == "then" else (step.otherwise or default)
        return default

    def successors(self, step_id: str) -> set[str]:
        """Every step that can directly follow `step_id`."""
        outcomes = {"wait_for": ("event", "timeout"), "branch": ("then", "else")}
        step = self.step(step_id)
        return {
            target
            for outcome in outcomes.get(step.type, ("done",))
            if (target := self.after(step_id, outcome)) is not None
        }

    def templates(self) -> list[tuple[str, str, str]]:
        """(step id, channel, template name) of every send step."""
        return [
            (step.id, step.type, step.template)
            for step in self.steps
            if isinstance(step, EmailStep | SmsStep)
        ]


class _LocatedValueError(ValueError):
    """A model-level error that knows which field it is about (mapped by the loader)."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        self.loc = loc
        super().__init__(message)


class Segment(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    description: str = ""
    when: str = Field(description="Jinja2 expression over `lead`")
    sequence: str


class DefaultSegment(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    description: str = ""
    sequence: str


class Segments(_Definition):
    segments: list[Segment]
    default: DefaultSegment


class Thresholds(_Definition):
    mql: int = Field(gt=0)
    sql: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.sql <= self.mql:
            raise _LocatedValueError(("sql",), f"sql ({self.sql}) must be above mql ({self.mql})")
        return self


class ScoringModel(_Definition):
    """Points per response type and the MQL / SQL thresholds.

    Deliberately small for now; fit rules, decay and gates extend it later.
    """

    name: str = "default"
    points: dict[str, int]
    thresholds: Thresholds

    @field_validator("points")
    @classmethod
    def _known_types(cls, points: dict[str, int]) -> dict[str, int]:
        for response_type in points:
            if response_type not in RESPONSE_TYPES:
                raise _LocatedValueError(
                    (response_type,),
                    f"unknown response type {response_type!r}; known: "
                    f"{', '.join(sorted(RESPONSE_TYPES))}",
                )
        return points


class SalesRep(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    name: str
    email: str
    phone: str | None = None
    active: bool = True


class SalesTeam(_Definition):
    reps: list[SalesRep] = Field(min_length=1)
