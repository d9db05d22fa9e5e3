"""The results of the experiments (`nurture experiments`, the console's Experiments page,
`validate`'s warnings): per arm, the leads assigned and what they did after it, each arm
against control with always-valid intervals, the sample-ratio check and a verdict.

Counted by the database in three grouped queries whatever the number of leads or
experiments: the funnel (each lead's latest response, stage change, accepted handoff and
opportunity of each kind, compared with its assignment's `recorded_at` and counted per
experiment and arm), the sends after assignment, and the won revenue after assignment as
each arm's sum and sum of squares per lead (so the revenue comparison needs no lead's
amount in Python). A lead did something after its assignment if its latest such event is
at or after `recorded_at`, the database's clock, which stamps the other rows too.

What counts (docs/commands.md, "Experiments"): open and click are `email.open` and
`email.click` responses by when they occurred; MQL, SQL, opportunity and won are
`services.reports.REACHED`'s stage changes (an SQL counts as an MQL too), opportunity
also an opportunity opened, won also a won opportunity closed; accepted is a stage
change to `accepted` or an accepted handoff's answer; revenue the amounts of the won
opportunities closed after assignment, in one currency (the one most of the
experiment's winning leads paid in; other currencies are listed, never added).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, case, cast, func, or_, select, text
from sqlalchemy.orm import Session

from experiments.statistics import (
    Comparison,
    Plan,
    Srm,
    compare,
    compare_moments,
    plan,
    sample_ratio_mismatch,
)
from models.db import (
    AMOUNT_SCALE,
    OPENS_CLICKS,
    ExperimentAssignment,
    ExperimentRecord,
    Handoff,
    Message,
    Opportunity,
    Response,
    StageChange,
    as_utc,
)
from models.definition_set import Definitions
from models.definitions import EXPERIMENT_METRICS, holdout_experiment
from services.json_output import iso
from services.reports import REACHED

RATE_METRICS = tuple(m for m in EXPERIMENT_METRICS if m != "revenue")  # open ... won
RESPONSE_TYPES = {"open": "email.open", "click": "email.click"}
# The effect `leads_needed` is planned for, and the plan whose count tunes each interval:
# a fifth more than control's rate (e.g. 10% -> 12%), a common minimum worth finding.
MINIMUM_LIFT = 0.2
NO_CURRENCY = "(none)"  # a won opportunity without a currency


@dataclass
class ArmResult:
    name: str
    weight: float  # as recorded when the experiment started (0: an arm added since)
    holdout: bool
    control: bool
    leads: int  # assigned
    sends: int  # messages sent to these leads after assignment
    converted: dict[str, int]  # metric -> leads who did it after assignment (RATE_METRICS)
    revenue: float  # won after assignment, in the experiment's currency
    comparisons: dict[str, Comparison]  # metric (and "revenue") -> against control
    revenue_by_currency: dict[str, float] = field(default_factory=dict)

    def rate(self, metric: str) -> float | None:
        """Share of the arm's leads who did `metric` (revenue: revenue per lead)."""
        if not self.leads:
            return None
        value = self.revenue if metric == "revenue" else self.converted[metric]
        return value / self.leads

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "weight": self.weight, "holdout": self.holdout,
            "control": self.control, "leads": self.leads, "sends": self.sends,
            "converted": dict(self.converted),
            "rates": {metric: self.rate(metric) for metric in EXPERIMENT_METRICS},
            "revenue": self.revenue, "revenue_by_currency": dict(self.revenue_by_currency),
            "comparisons": {metric: c.to_dict() for metric, c in self.comparisons.items()},
        }  # fmt: skip


@dataclass
class ExperimentResult:
    name: str
    kind: str  # split | holdout
    sequence_id: str
    step_id: str | None
    segment: str | None  # a holdout's segment (None for a split)
    metric: str  # the primary metric, as recorded at the start
    control: str
    started_at: datetime  # the first assignment
    status: str  # running | ended (a winner in the definitions) | removed (not in them)
    winner: str | None
    arms: list[ArmResult]
    srm: Srm
    conclusive: bool  # the primary metric's interval excludes 0 for some arm
    verdict: str
    leads_needed: int | None  # in all, to find MINIMUM_LIFT on the primary metric
    alpha: float = 0.05  # family-wise, over the arms
    compared_at: float = 0.05  # each arm's comparison: alpha / (arms - 1) (Bonferroni)
    currency: str | None = None  # of `revenue`; None when nothing was won
    minimum_effect: float | None = None  # the absolute effect `leads_needed` is for

    @property
    def leads(self) -> int:
        return sum(arm.leads for arm in self.arms)

    def arm(self, name: str) -> ArmResult:
        return next(arm for arm in self.arms if arm.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "sequence_id": self.sequence_id,
            "step_id": self.step_id, "segment": self.segment, "metric": self.metric,
            "control": self.control, "started_at": iso(self.started_at),
            "status": self.status, "winner": self.winner, "leads": self.leads,
            "arms": [arm.to_dict() for arm in self.arms], "srm": self.srm.to_dict(),
            "conclusive": self.conclusive, "verdict": self.verdict,
            "leads_needed": self.leads_needed, "minimum_effect": self.minimum_effect,
            "alpha": self.alpha, "compared_at": self.compared_at, "currency": self.currency,
        }  # fmt: skip


def experiment_results(
    sessions, definitions: Definitions | None, name: str | None = None, alpha: float = 0.05
) -> list[ExperimentResult]:
    """Every experiment in the experiments table, oldest first (or the one named: a
    LookupError names the known ones). `sessions` is a sessionmaker (or a Session).
    Without definitions an experiment's status is `running` and it has no winner."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, not {alpha}")
    with _session(sessions) as session:
        records = _records(session, name)
        names = None if name is None else [name]
        funnel = _funnel_counts(session, names)
        sends = _send_counts(session, names)
        revenue = _revenue_sums(session, names)
    defined = _defined(definitions) if definitions is not None else None
    return [_result(record, funnel, sends, revenue, defined, alpha) for record in records]


@contextlib.contextmanager
def _session(sessions) -> Iterator[Session]:
    if isinstance(sessions, Session):
        yield sessions
        return
    with sessions() as session:
        yield session


def _records(session: Session, name: str | None) -> list[ExperimentRecord]:
    records = list(session.scalars(
        select(ExperimentRecord).order_by(ExperimentRecord.started_at, ExperimentRecord.name)
    ))  # fmt: skip
    if name is None:
        return records
    found = [record for record in records if record.name == name]
    if not found:
        known = ", ".join(record.name for record in records) or "none yet"
        raise LookupError(f"no experiment {name!r} (experiments: {known})")
    return found


def _defined(definitions: Definitions) -> dict[str, tuple[str, str | None]]:
    """Experiment name -> (status, winner) for each experiment the definitions hold."""
    found: dict[str, tuple[str, str | None]] = {}
    for sequence in definitions.sequences.values():
        for step in sequence.splits():
            status = "ended" if step.winner else "running"
            found.setdefault(sequence.experiment_of(step), (status, step.winner))
    for segment in (*definitions.segments.segments, definitions.segments.default):
        if segment.holdout:
            found.setdefault(holdout_experiment(segment.id), ("running", None))
    return found


# --- the queries ---------------------------------------------------------------------------------

Key = tuple[str, str]  # (experiment, arm)


def _assigned(names: list[str] | None):
    """The experiments' assignments (all of them when `names` is None)."""
    a = ExperimentAssignment
    return select(a.lead_id).where(a.experiment.in_(names)) if names is not None else None


def _of_leads(query, lead_id, names: list[str] | None):
    """`query` narrowed to the named experiments' leads: a small experiment reads its
    own leads' rows, not every lead's."""
    return query if names is None else query.where(lead_id.in_(_assigned(names)))


def _latest_events(names: list[str] | None):
    """Per lead, when it last did each thing the funnel counts: one row per lead per
    source table, each aggregated in one pass."""
    r, sc, h, o = Response, StageChange, Handoff, Opportunity

    def last_response(metric: str):
        return func.max(case((r.type == RESPONSE_TYPES[metric], r.occurred_at))).label(metric)

    # The index's own predicate, word for word, so both databases read the index: SQLite
    # proves a partial index applies only from the same constants, not from parameters.
    responses = select(r.lead_id, last_response("open"), last_response("click")).where(
        text(OPENS_CLICKS), r.lead_id.is_not(None)
    )

    def last_stage(metric: str):
        return func.max(case((sc.to_stage.in_(REACHED[metric]), sc.created_at))).label(metric)

    counted = sorted({stage for metric in RATE_METRICS[2:] for stage in REACHED[metric]})
    stages = select(sc.lead_id, *(last_stage(m) for m in RATE_METRICS[2:])).where(
        sc.to_stage.in_(counted)
    )
    handoffs = select(h.lead_id, func.max(h.answered_at).label("accepted")).where(
        h.status == "accepted"
    )
    opened = func.max(func.coalesce(o.opened_at, o.closed_at)).label("opportunity")
    won = func.max(case((o.status == "won", o.closed_at))).label("won")
    deals = select(o.lead_id, opened, won).where(o.lead_id.is_not(None))
    parts = {"responses": (responses, r.lead_id), "stages": (stages, sc.lead_id),
             "handoffs": (handoffs, h.lead_id), "deals": (deals, o.lead_id)}  # fmt: skip
    return {label: _of_leads(query, lead_id, names).group_by(lead_id).subquery(label)
            for label, (query, lead_id) in parts.items()}  # fmt: skip


def _funnel_counts(session: Session, names: list[str] | None) -> dict[Key, dict[str, int]]:
    """Per (experiment, arm): the leads, and how many did each RATE_METRICS after their
    assignment."""
    a = ExperimentAssignment
    latest = _latest_events(names)
    resp, st, ho, de = (latest[k] for k in ("responses", "stages", "handoffs", "deals"))
    after = {
        "open": [resp.c.open], "click": [resp.c.click], "mql": [st.c.mql], "sql": [st.c.sql],
        "accepted": [st.c.accepted, ho.c.accepted],
        "opportunity": [st.c.opportunity, de.c.opportunity], "won": [st.c.won, de.c.won],
    }  # fmt: skip

    def did(metric: str):
        return func.count(case((or_(*(at >= a.recorded_at for at in after[metric])), 1)))

    query = select(a.experiment, a.arm, func.count(), *(did(m) for m in RATE_METRICS))
    for part in (resp, st, ho, de):
        query = query.outerjoin(part, part.c.lead_id == a.lead_id)
    if names is not None:
        query = query.where(a.experiment.in_(names))
    found = {}
    for experiment, arm, leads, *done in session.execute(query.group_by(a.experiment, a.arm)):
        found[experiment, arm] = {"leads": leads} | dict(zip(RATE_METRICS, done, strict=True))
    return found


def _send_counts(session: Session, names: list[str] | None) -> dict[Key, int]:
    """Per (experiment, arm): the messages sent to its leads after their assignment."""
    a, m = ExperimentAssignment, Message
    query = (
        select(a.experiment, a.arm, func.count())
        .join(m, m.lead_id == a.lead_id)
        .where(m.sent_at >= a.recorded_at)  # sent_at is set when, and only when, sent
        .group_by(a.experiment, a.arm)
    )
    if names is not None:
        query = query.where(a.experiment.in_(names))
    return {(experiment, arm): sends for experiment, arm, sends in session.execute(query)}


@dataclass(frozen=True)
class _Revenue:
    winners: int  # leads with won revenue after assignment
    total: float
    squares: float  # the sum over those leads of their revenue squared


def _revenue_sums(session: Session, names: list[str] | None) -> dict[Key, dict[str, _Revenue]]:
    """Per (experiment, arm) and currency: the won revenue after assignment, as the
    leads who won, the sum and the sum of squares of each lead's revenue (amounts)."""
    a, o = ExperimentAssignment, Opportunity
    per_lead = (
        select(a.experiment, a.arm, o.currency, func.sum(o.amount_units).label("units"))
        .join(o, o.lead_id == a.lead_id)
        .where(o.status == "won", o.amount_units.is_not(None), o.closed_at >= a.recorded_at)
        .group_by(a.experiment, a.arm, a.lead_id, o.currency)
    )
    if names is not None:
        per_lead = per_lead.where(a.experiment.in_(names))
    lead = per_lead.subquery("lead_revenue")
    amount = cast(lead.c.units, Float) / AMOUNT_SCALE
    query = select(lead.c.experiment, lead.c.arm, lead.c.currency, func.count(),
                   func.sum(lead.c.units), func.sum(amount * amount)
                   ).group_by(lead.c.experiment, lead.c.arm, lead.c.currency)  # fmt: skip
    found: dict[Key, dict[str, _Revenue]] = defaultdict(dict)
    for experiment, arm, currency, winners, units, squares in session.execute(query):
        found[experiment, arm][currency or NO_CURRENCY] = _Revenue(
            winners, int(units) / AMOUNT_SCALE, float(squares))  # fmt: skip
    return found


# --- one experiment's result ---------------------------------------------------------------------


def _result(
    record: ExperimentRecord,
    funnel: dict[Key, dict[str, int]],
    sends: dict[Key, int],
    revenue: dict[Key, dict[str, _Revenue]],
    defined: dict[str, tuple[str, str | None]] | None,
    alpha: float,
) -> ExperimentResult:
    specs = _arm_specs(record, funnel)
    counts = {arm: funnel.get((record.name, arm), {}) for arm in specs}
    leads = {arm: counts[arm].get("leads", 0) for arm in specs}
    treatments = [arm for arm in specs if arm != record.control]
    compared_at = alpha / max(1, len(treatments))
    money = {arm: revenue.get((record.name, arm), {}) for arm in specs}
    currency = _currency(money)
    found = _plan(record, specs, counts, compared_at)
    arms = [_arm(record, arm, spec, counts[arm], sends.get((record.name, arm), 0),
                 money[arm], currency) for arm, spec in specs.items()]  # fmt: skip
    by_name = {arm.name: arm for arm in arms}
    control = by_name[record.control]
    for index, name in enumerate(treatments):  # the plan's `planned` are in this order
        planned = found.planned[index] if found else None
        by_name[name].comparisons = _comparisons(control, by_name[name], compared_at, planned,
                                                 money, currency)  # fmt: skip
    status, winner = ("running", None) if defined is None else defined.get(
        record.name, ("removed", None))  # fmt: skip
    srm = _srm(specs, leads)
    primary = [by_name[name].comparisons[record.metric] for name in treatments]
    return ExperimentResult(
        name=record.name, kind=record.kind, sequence_id=record.sequence_id,
        step_id=record.step_id, segment=record.segment if record.kind == "holdout" else None,
        metric=record.metric, control=record.control, started_at=as_utc(record.started_at),
        status=status, winner=winner, arms=arms, srm=srm,
        # Not while assignment is off: a mismatch biases every comparison.
        conclusive=not srm.flagged and any(c.significant for c in primary),
        verdict=_verdict(record, treatments, by_name, srm, compared_at, currency),
        leads_needed=found.leads_total if found else None, alpha=alpha,
        compared_at=compared_at, currency=currency,
        minimum_effect=found.minimum_effect if found else None,
    )  # fmt: skip


@dataclass(frozen=True)
class _Spec:
    weight: float
    holdout: bool


def _arm_specs(record: ExperimentRecord, funnel: dict[Key, dict[str, int]]) -> dict[str, _Spec]:
    """The arms as recorded at the start (control among them), then any arm leads are in
    that the record does not know (added while running: weight 0)."""
    specs = {arm["name"]: _Spec(float(arm["weight"]), bool(arm.get("holdout", False)))
             for arm in record.arms}  # fmt: skip
    specs.setdefault(record.control, _Spec(0.0, False))
    for experiment, arm in sorted(funnel):
        if experiment == record.name:
            specs.setdefault(arm, _Spec(0.0, False))
    return specs


def _arm(
    record: ExperimentRecord,
    name: str,
    spec: _Spec,
    counts: dict[str, int],
    sends: int,
    money: dict[str, _Revenue],
    currency: str | None,
) -> ArmResult:
    won = money.get(currency) if currency else None
    return ArmResult(
        name=name, weight=spec.weight, holdout=spec.holdout, control=name == record.control,
        leads=counts.get("leads", 0), sends=sends,
        converted={metric: counts.get(metric, 0) for metric in RATE_METRICS},
        revenue=won.total if won else 0.0, comparisons={},
        revenue_by_currency={c: r.total for c, r in sorted(money.items())},
    )  # fmt: skip


def _currency(money: dict[str, dict[str, _Revenue]]) -> str | None:
    """The currency the revenue is compared in: the one most winning leads paid in (then
    the larger sum, then by name); None when nothing was won."""
    winners: dict[str, int] = defaultdict(int)
    totals: dict[str, float] = defaultdict(float)
    for by_currency in money.values():
        for currency, won in by_currency.items():
            winners[currency] += won.winners
            totals[currency] += won.total
    if not winners:
        return None
    return min(winners, key=lambda c: (-winners[c], -totals[c], c))


def _plan(
    record: ExperimentRecord,
    specs: dict[str, _Spec],
    counts: dict[str, dict[str, int]],
    compared_at: float,
) -> Plan | None:
    """The plan to find MINIMUM_LIFT over control's rate of the primary metric (of wins,
    for revenue) with the recorded weights (control first), when that rate allows one.
    The rate is rounded to two significant figures, so the planned count, where every
    interval of the experiment is narrowest, stays put from one look to the next."""
    control = counts[record.control]
    weights = [specs[record.control].weight or 1.0]
    weights += [spec.weight or 1.0 for arm, spec in specs.items() if arm != record.control]
    leads = control.get("leads", 0)
    metric = "won" if record.metric == "revenue" else record.metric
    baseline = float(f"{control.get(metric, 0) / leads:.2g}") if leads else 0.0
    effect = baseline * MINIMUM_LIFT
    if len(weights) < 2 or not 0 < baseline < baseline + effect < 1:
        return None
    return plan(baseline, effect, len(weights), compared_at, weights=weights)


def _comparisons(
    control: ArmResult,
    arm: ArmResult,
    alpha: float,
    planned: int | None,
    money: dict[str, dict[str, _Revenue]],
    currency: str | None,
) -> dict[str, Comparison]:
    """The arm against control on every metric, every interval narrowest at the plan's
    count of control + arm leads (at the current count while there is no plan)."""
    comparisons = {
        metric: compare((control.leads, control.converted[metric]),
                        (arm.leads, arm.converted[metric]), alpha, planned)
        for metric in RATE_METRICS
    }  # fmt: skip
    comparisons["revenue"] = compare_moments(
        _moments(control, money[control.name], currency),
        _moments(arm, money[arm.name], currency), alpha, planned,
    )  # fmt: skip
    return comparisons


def _moments(arm: ArmResult, money: dict[str, _Revenue], currency: str | None):
    won = money.get(currency) if currency else None
    return (arm.leads, won.total, won.squares) if won else (arm.leads, 0.0, 0.0)


def _srm(specs: dict[str, _Spec], leads: dict[str, int]) -> Srm:
    """Leads per arm against the weights recorded at the start. An arm the record does
    not know means the split changed while running: flagged, as no weight explains it."""
    added = sorted(arm for arm, spec in specs.items() if spec.weight <= 0 and leads[arm])
    if added:
        expected = {arm: 0.0 for arm in specs}
        message = (f"Sample ratio mismatch: {', '.join(repr(a) for a in added)} has leads but "
                   "was not an arm when the experiment started (added while running); the "
                   "split no longer follows its recorded weights.")  # fmt: skip
        return Srm(dict(leads), expected, 0.0, 0.001, True, message)
    weights = {arm: spec.weight for arm, spec in specs.items() if spec.weight > 0}
    return sample_ratio_mismatch({arm: leads[arm] for arm in weights}, weights)


# --- the verdict, in words -----------------------------------------------------------------------


def _verdict(
    record: ExperimentRecord,
    treatments: list[str],
    arms: dict[str, ArmResult],
    srm: Srm,
    alpha: float,
    currency: str | None,
) -> str:
    """One sentence on the primary metric (a sample-ratio warning first if flagged)."""
    warning = ""
    if srm.flagged:
        warning = (f"Sample ratio mismatch (p = {srm.p_value:.2g}): assignment does not "
                   "follow the weights; find the cause before trusting this. ")  # fmt: skip
    metric, control = record.metric, record.control
    compared = {name: arms[name].comparisons[metric] for name in treatments}
    compared = {name: c for name, c in compared.items()  # arms with something to compare
                if c.sequence is not None or c.difference is not None}  # fmt: skip
    if not compared:
        empty = [name for name in (control, *treatments) if not arms[name].leads]
        reason = f"no leads in {', '.join(empty)}" if empty else "not enough leads"
        return f"{warning}No comparison yet on {metric}: {reason}."
    treatments = list(compared)
    found = [name for name in treatments if compared[name].significant]
    if found:
        said = "; ".join(
            f"{name} {'beats' if compared[name].difference > 0 else 'is behind'} {control} "
            f"on {metric}: {_said(compared[name], alpha, currency)}"
            for name in found
        )
        return f"{warning}{said}."  # an arm's name keeps its case, even first
    closest = min(treatments, key=lambda name: compared[name].p_value)
    return (f"{warning}No difference yet on {metric}: {closest} against {control} "
            f"{_said(compared[closest], alpha, currency)}.")  # fmt: skip


def _said(comparison: Comparison, alpha: float, currency: str | None) -> str:
    """'+2.1 points (95% always-valid interval +0.4 to +3.8)'."""
    level = f"{(1 - alpha) * 100:.1f}".rstrip("0").rstrip(".") + "%"
    shown = shown_difference(comparison)
    unit = "points" if comparison.kind == "rate" else f"{currency or ''} per lead".strip()
    if comparison.sequence is None:
        note = comparison.note.rstrip(".")
        return f"{shown[0]} {unit} ({note[:1].lower()}{note[1:]})"
    return f"{shown[0]} {unit} ({level} always-valid interval {shown[1]} to {shown[2]})"


def shown_difference(comparison: Comparison) -> list[str]:
    """The difference and its interval's ends as written (rates in points, with one
    precision for the three: two decimals when all are under a point; amounts with
    cents); just the difference when there is no interval. Nothing without a difference."""
    if comparison.difference is None:
        return []
    interval = comparison.sequence
    values = [comparison.difference, *((interval.low, interval.high) if interval else ())]
    if comparison.kind != "rate":
        return [_money(value) for value in values]
    points = [value * 100 for value in values]
    digits = 1 if max(abs(p) for p in points) >= 1 else 2
    return [_signed(p, digits) for p in points]


def _signed(value: float, digits: int) -> str:
    """With its sign, and never "-0.0": what rounds to zero is +0."""
    rounded = round(value, digits) or 0.0
    return f"{rounded:+.{digits}f}"


def _money(amount: float) -> str:
    return f"{round(amount, 2) or 0.0:+,.2f}"
