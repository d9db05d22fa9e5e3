"""The pure scoring engine: profile + responses + now + model -> score card.

No I/O and no clock of its own: the same inputs give the same card, so the
scoring activity, `nurture score`, `nurture rescore` and the backtest all use it.

The maths, for one model:
- fit: the points of every fit rule the profile matches;
- engagement: each response counts for the first rule it matches; its points lose
  half their value every `half_life` (unless the rule says `decays: false`);
  a rule gives at most `cap` points, and a `once` rule counts its best response only;
- each dimension is clamped to 0..max and scaled to 0-100; the total is their
  weighted sum (0-100). Every line of the breakdown is in total points, with a
  line for any clamping, so the breakdown always adds up to the total.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models.jinja import ConditionError, condition_names, evaluate_condition
from models.scoring_model import STAGE_LADDER, FitRule, ScoringModel, Stage

# Below this many total points a still-decaying engagement is not worth a rescore.
DECAY_NEGLIGIBLE = 0.05


@dataclass(frozen=True)
class ResponseFact:
    """A response as the engine sees it."""

    type: str
    occurred_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Line:
    """One line of the breakdown: a rule and what it is worth now."""

    rule: str
    dimension: str  # fit | engagement
    count: int  # profile rules: 1; engagement rules: matching responses
    points: float  # in the dimension's own points, after decay and cap
    contribution: float  # in total points (0-100 scale)
    note: str = ""

    def describe(self) -> str:
        times = f" ×{self.count}" if self.dimension == "engagement" and self.count > 1 else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.rule}{times} {self.contribution:+.1f}{note}"


@dataclass
class ScoreCard:
    model: str
    at: datetime
    fit: float  # 0-100
    engagement: float  # 0-100
    total: float  # 0-100
    grade: str  # A-D, from fit
    lines: list[Line]
    counts: dict[str, int]  # matching responses per engagement rule
    answers: dict[str, Any]  # what responses told us (form fields...), latest first wins
    decaying: bool  # decay can still move the total: worth rescoring later
    problems: list[str] = field(default_factory=list)  # rules that could not be evaluated
    # The active predictive model's P(won within its horizon) and its reasons in words;
    # None when no model is active (stage rules naming `predicted` then do not hold).
    predicted: float | None = None
    predicted_reasons: list[str] = field(default_factory=list)
    predictive_model: str | None = None  # its fingerprint
    predicted_horizon_days: int | None = None  # "won within N days"

    def add_prediction(
        self, probability: float, reasons: list[str], fingerprint: str, horizon_days: int
    ) -> None:
        """Attach the predictive model's answer before the stage is decided, so stage
        rules and the SQL gate can use `predicted`. The engine computes none itself: it
        stays pure, and the caller chooses the model."""
        self.predicted, self.predicted_reasons = probability, list(reasons)
        self.predictive_model, self.predicted_horizon_days = fingerprint, horizon_days

    def prediction_line(self) -> str | None:
        """The prediction as a rep reads it first; None without one."""
        if self.predicted is None:
            return None
        return prediction_line(self.predicted, self.predicted_horizon_days, self.predicted_reasons)

    def reasons(self, limit: int = 5) -> list[str]:
        """The lines that matter most, biggest first."""
        ranked = sorted(self.lines, key=lambda line: -abs(line.contribution))
        return [line.describe() for line in ranked[:limit] if abs(line.contribution) >= 0.05]

    def points(self) -> dict[str, float]:
        return {line.rule: line.points for line in self.lines}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "at": self.at.isoformat(),
            "total": round(self.total, 2),
            "fit": round(self.fit, 2),
            "engagement": round(self.engagement, 2),
            "grade": self.grade,
            "breakdown": [
                {
                    "rule": line.rule,
                    "dimension": line.dimension,
                    "count": line.count,
                    "points": round(line.points, 4),
                    "contribution": round(line.contribution, 4),
                    **({"note": line.note} if line.note else {}),
                }
                for line in self.lines
            ],  # fmt: skip
            "problems": self.problems,
            **self._prediction_dict(),
        }

    def _prediction_dict(self) -> dict[str, Any]:
        if self.predicted is None:
            return {}
        return {"predicted": round(self.predicted, 4), "predicted_reasons": self.predicted_reasons,
                "predictive_model": self.predictive_model,
                "predicted_horizon_days": self.predicted_horizon_days}  # fmt: skip


def prediction_line(predicted: float, horizon_days: int | None, reasons: list[str]) -> str:
    """One line a rep reads first in a handoff, from a card or its stored dict: "predicted
    42% likely to be won within 90 days (visited /pricing 3 times in 7 days +0.12; ...)"."""
    within = f" within {horizon_days} days" if horizon_days else ""
    text = f"predicted {predicted:.0%} likely to be won{within}"
    return f"{text} ({'; '.join(reasons)})" if reasons else text


@dataclass(frozen=True)
class StageDecision:
    old: str
    new: str
    entered: list[str]  # stages entered, lowest first (a jump to SQL passes MQL)
    recycled: bool  # went back down (decay), never silently: the reason says why
    reason: str
    gate: dict[str, bool] | None = None  # the SQL gate's criteria when the score got there

    @property
    def changed(self) -> bool:
        return self.old != self.new


# --- the score card ----------------------------------------------------------------------------


def score(
    model: ScoringModel,
    profile: Mapping[str, Any],
    responses: Iterable[ResponseFact],
    now: datetime,
) -> ScoreCard:
    """The lead's score card at `now`; responses after `now` are not counted."""
    compiled = _compiled(model)
    problems: list[str] = []
    fit_kept, lines = _fit(model, compiled, _lead_view(profile), problems)
    tally = _tally(compiled, model.engagement.half_life, responses, now)
    engagement = _engagement(model, tally)
    lines += engagement.lines

    fit = fit_kept * 100 / model.fit.max
    engagement_score = engagement.kept * 100 / model.engagement.max
    total = round((fit * model.weights.fit + engagement_score * model.weights.engagement) / 100, 9)
    return ScoreCard(
        model=model.name,
        at=now,
        fit=fit,
        engagement=engagement_score,
        total=total,
        grade=_grade(model, fit),
        lines=lines,
        counts=engagement.counts,
        answers=tally.answers,
        decaying=engagement.decaying_points >= DECAY_NEGLIGIBLE,
        problems=problems,
    )


def _fit(
    model: ScoringModel, compiled: _Compiled, lead: Mapping[str, Any], problems: list[str]
) -> tuple[float, list[Line]]:
    """The fit points kept (clamped to 0..max) and their lines, a clamping line last.
    A rule that cannot be evaluated does not match, and is added to `problems`."""
    raw_fit = 0.0
    fit_lines: list[tuple[str, float]] = []
    for rule, test in compiled.fit_tests:
        try:
            matched = test(lead)
        except ConditionError as exc:
            problems.append(f"fit rule {rule.id}: {exc}")
            matched = False
        if matched:
            raw_fit += rule.points
            fit_lines.append((rule.id, rule.points))
    fit_scale = model.weights.fit / model.fit.max
    lines = [Line(rule_id, "fit", 1, points, points * fit_scale) for rule_id, points in fit_lines]
    fit_kept = _clamp(raw_fit, model.fit.max)
    if fit_kept != raw_fit:
        lines.append(_clamp_line("fit", raw_fit, fit_kept, fit_scale))
    return fit_kept, lines


@dataclass
class _Tally:
    """The responses up to `now`, per engagement rule (by its index in the model): how
    many, the sum and the best (largest) of their decayed points; and the answers they
    carried (per key, the latest response's)."""

    counts: dict[int, int] = field(default_factory=dict)
    sums: dict[int, float] = field(default_factory=dict)
    best: dict[int, float] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    latest: dict[str, datetime] = field(default_factory=dict)


def _tally(
    compiled: _Compiled,
    half_life: int | None,
    responses: Iterable[ResponseFact],
    now: datetime,
) -> _Tally:
    """One pass over `responses` (an iterable may be read only once)."""
    tally = _Tally()
    for response in responses:
        if response.occurred_at > now:
            continue
        for key, value in response.data.items():
            if value in (None, ""):
                continue
            if key not in tally.latest or response.occurred_at >= tally.latest[key]:
                tally.answers[key], tally.latest[key] = value, response.occurred_at
        for index, rule, where in compiled.by_type.get(response.type, ()):
            if where and not all(
                pattern.match(str(response.data.get(key, ""))) for key, pattern in where
            ):
                continue
            value = rule.points
            if half_life and rule.decays:
                age = (now - response.occurred_at).total_seconds()
                value *= 0.5 ** (age / half_life)
            tally.counts[index] = tally.counts.get(index, 0) + 1
            tally.sums[index] = tally.sums.get(index, 0.0) + value
            if index not in tally.best or abs(value) > abs(tally.best[index]):
                tally.best[index] = value
            break  # a response counts for the first rule it matches only
    return tally


@dataclass(frozen=True)
class _EngagementPart:
    kept: float  # engagement points, clamped to 0..max
    lines: list[Line]  # one per rule with responses, then any clamping line
    counts: dict[str, int]  # matching responses per rule id
    decaying_points: float  # total points that decay can still take away


def _engagement(model: ScoringModel, tally: _Tally) -> _EngagementPart:
    """The tallied responses as engagement points: a `once` rule's best response, else
    their sum, within the rule's cap."""
    half_life = model.engagement.half_life
    engagement_scale = model.weights.engagement / model.engagement.max
    raw_engagement = 0.0
    decaying_points = 0.0
    lines: list[Line] = []
    rule_counts: dict[str, int] = {}
    for index, rule in enumerate(model.engagement.rules):
        if index not in tally.counts:
            continue
        points = tally.best[index] if rule.once else tally.sums[index]
        note = ""
        if rule.cap is not None and abs(points) > rule.cap:
            points, note = (rule.cap if points > 0 else -rule.cap), f"capped at {rule.cap:g}"
        raw_engagement += points
        count = rule_counts[rule.id] = tally.counts[index]
        lines.append(Line(rule.id, "engagement", count, points, points * engagement_scale, note))
        if half_life and rule.decays:
            decaying_points += abs(points * engagement_scale)
    engagement_kept = _clamp(raw_engagement, model.engagement.max)
    if engagement_kept != raw_engagement:
        lines.append(_clamp_line("engagement", raw_engagement, engagement_kept, engagement_scale))
    return _EngagementPart(engagement_kept, lines, rule_counts, decaying_points)


def _clamp(raw: float, maximum: float) -> float:
    return min(max(raw, 0.0), maximum)


def _clamp_line(dimension: str, raw: float, kept: float, scale: float) -> Line:
    note = "above its max" if raw > kept else "below zero"
    return Line(f"{dimension}_limit", dimension, 0, kept - raw, (kept - raw) * scale, note)


def _grade(model: ScoringModel, fit: float) -> str:
    grades = model.grades
    if fit >= grades.A:
        return "A"
    if fit >= grades.B:
        return "B"
    if fit >= grades.C:
        return "C"
    return "D"


# --- stages ------------------------------------------------------------------------------------


def decide_stage(
    model: ScoringModel,
    current: str,
    card: ScoreCard,
    profile: Mapping[str, Any],
    hold_sql: bool = False,
) -> StageDecision:
    """Where the card puts a lead that is at `current`.

    Stages move forward (a jump passes the stages between) and never flap: a lead
    leaves MQL or PQL only when the stage's `recycle_below` / `recycle_when` holds,
    well under the entry point. SQL is left only by sales. Stages past SQL
    (sales-owned) are never moved. `hold_sql`: sales turned the lead down and its
    cool-down runs, so it may reach MQL or PQL but not SQL.
    """
    if current not in STAGE_LADDER:
        return StageDecision(current, current, [], False, f"{current}: owned by sales")
    ladder = model.stages.ladder()
    names = [name for name, _ in ladder]
    rank = {name: i + 1 for i, name in enumerate(names)} | {"lead": 0}
    if current not in rank:  # e.g. a PQL under a model without one: keep it
        return StageDecision(current, current, [], False, f"{current}: not in model")
    context = stage_context(card, profile)

    earned, gate = "lead", None
    for name, stage in ladder:
        if not _holds(stage, card, context) or (hold_sql and name == "sql"):
            continue
        if name == "sql" and stage.gate:
            gate = {criterion: _true(expression, context, card)
                    for criterion, expression in stage.gate.items()}  # fmt: skip
            if not all(gate.values()):
                continue
        earned = name

    if rank[earned] > rank[current]:
        # The funnel passes MQL on the way up; PQL (a product path) only if it held.
        entered = [
            name for name, stage in ladder
            if rank[current] < rank[name] <= rank[earned]
            and (name in (earned, "mql") or _holds(stage, card, context))
        ]  # fmt: skip
        reason = f"total {card.total:.1f} ({_why(model, earned)})"
        if gate and all(gate.values()):  # not when the gate kept it at MQL or PQL
            reason += f"; {model.stages.sql.gate_name} holds: {', '.join(gate)}"
        return StageDecision(current, earned, entered, False, reason, gate)

    if current in ("mql", "pql"):
        stage = dict(ladder)[current]
        if _recycles(stage, card, context):
            target = "lead"
            for name, lower in reversed(ladder[: rank[current] - 1]):
                if _holds(lower, card, context) and not _recycles(lower, card, context):
                    target = name
                    break
            reason = f"recycled: total {card.total:.1f} fell to {_recycle_why(stage)}"
            return StageDecision(current, target, [], True, reason)

    held = ""
    sql = model.stages.sql
    if gate is not None and not all(gate.values()):
        missing = [criterion for criterion, ok in gate.items() if not ok]
        held = f"; SQL score reached but {sql.gate_name} lacks {', '.join(missing)}"
    return StageDecision(current, current, [], False, f"stays {current}{held}", gate)


def _holds(stage: Stage, card: ScoreCard, context: dict[str, Any]) -> bool:
    if stage.at is not None and card.total < stage.at:
        return False
    return stage.when is None or _true(stage.when, context, card)


def _recycles(stage: Stage, card: ScoreCard, context: dict[str, Any]) -> bool:
    if stage.recycle_below is not None and card.total < stage.recycle_below:
        return True
    return stage.recycle_when is not None and _true(stage.recycle_when, context, card)


def _why(model: ScoringModel, name: str) -> str:
    stage = dict(model.stages.ladder())[name]
    parts = ([f"{name} at {stage.at:g}"] if stage.at is not None else []) + (
        [stage.when] if stage.when else []
    )
    return "; ".join(parts)


def _recycle_why(stage: Stage) -> str:
    if stage.recycle_below is not None:
        return f"below {stage.recycle_below:g}"
    return f"{stage.recycle_when}"


def _true(expression: str, context: dict[str, Any], card: ScoreCard) -> bool:
    try:
        return condition_holds(expression, context)
    except ConditionError as exc:
        # One problem per expression, however often it is asked (a jump asks PQL's twice).
        if str(exc) not in card.problems:
            card.problems.append(str(exc))
        return False


class _Loose(dict):
    """A mapping where a missing key is `default`, so `answers.budget` is simply empty."""

    def __init__(self, data: Mapping[str, Any], default: Any = None):
        super().__init__(data)
        self._default = default

    def __missing__(self, key: str) -> Any:
        return self._default


def _lead_view(profile: Mapping[str, Any]) -> dict[str, Any]:
    lead = _Loose(profile)
    lead["attributes"] = _Loose(profile.get("attributes") or {})
    email = str(profile.get("email") or "")
    lead["email_domain"] = email.rpartition("@")[2].lower() if "@" in email else None
    return lead


def condition_holds(expression: str, context: dict[str, Any]) -> bool:
    """A stage or gate expression on `stage_context`. One naming `predicted` when no
    predictive model is active is a ConditionError saying so (not a comparison with None
    failing somewhere): the rule does not hold, and the card's problems say why."""
    if context.get("predicted") is None and "predicted" in condition_names(expression):
        raise ConditionError(f"condition {expression!r}: no predictive model is active")
    return evaluate_condition(expression, context)


def stage_context(card: ScoreCard, profile: Mapping[str, Any]) -> dict[str, Any]:
    """What stage and gate expressions see."""
    return {
        "total": card.total,
        "predicted": card.predicted,
        "fit": card.fit,
        "engagement": card.engagement,
        "grade": card.grade,
        "counts": _Loose(card.counts, 0),
        "points": _Loose(card.points(), 0),
        "answers": _Loose(card.answers),
        "lead": _lead_view(profile),
    }


# --- compiling a model once ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    fit_tests: list[tuple[FitRule, Callable[[Mapping[str, Any]], bool]]]
    by_type: dict[str, list[tuple[int, Any, list[tuple[str, re.Pattern]]]]]


_CACHE: dict[int, tuple[ScoringModel, _Compiled]] = {}


def _compiled(model: ScoringModel) -> _Compiled:
    hit = _CACHE.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    if len(_CACHE) > 64:
        _CACHE.clear()
    by_type: dict[str, list] = {}
    for index, rule in enumerate(model.engagement.rules):
        where = [
            (key, re.compile(fnmatch.translate(pattern), re.IGNORECASE))
            for key, pattern in rule.where.items()
        ]
        for response_type in rule.event:
            by_type.setdefault(response_type, []).append((index, rule, where))
    compiled = _Compiled([(rule, _fit_test(rule)) for rule in model.fit.rules], by_type)
    _CACHE[id(model)] = (model, compiled)  # holding the model keeps its id unique
    return compiled


def _fit_test(rule: FitRule) -> Callable[[Mapping[str, Any]], bool]:
    if rule.when is not None:
        expression = rule.when
        return lambda lead: evaluate_condition(expression, {"lead": lead})
    path = rule.field.split(".", 1)

    def value_of(lead: Mapping[str, Any]) -> Any:
        value = lead.get(path[0])
        if len(path) == 2:
            value = (value or {}).get(path[1])
        return value

    checks: list[Callable[[Any], bool]] = []
    if rule.matches is not None:
        pattern = re.compile(rule.matches, re.IGNORECASE)
        checks.append(lambda v: pattern.search(str(v)) is not None)
    if rule.equals is not None:
        wanted = _folded(rule.equals)
        checks.append(lambda v: _folded(v) == wanted)
    if rule.in_ is not None:
        allowed = {_folded(item) for item in rule.in_}
        checks.append(lambda v: _folded(v) in allowed)
    if rule.at_least is not None:
        least = rule.at_least
        checks.append(lambda v: _number(v) is not None and _number(v) >= least)
    if rule.below is not None:
        below = rule.below
        checks.append(lambda v: _number(v) is not None and _number(v) < below)

    def test(lead: Mapping[str, Any]) -> bool:
        value = value_of(lead)
        return value not in (None, "") and all(check(value) for check in checks)

    return test


def _folded(value: Any) -> Any:
    return value.strip().casefold() if isinstance(value, str) else value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
