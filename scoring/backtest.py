"""Backtest the scoring models on lead history: would their stages have found the customers?

Each lead is scored by its segment's model as the live system would have scored it:
just after each of its responses, at that response's time, and at the outcome's time
(as a decay rescore would), counting only responses up to that moment and before the
outcome (what a lead did after buying must not make the model look clever). A lead
with no response before its outcome was never scored: its peak is 0. Stages are
walked forward from `lead` with `decide_stage`, so gates and hysteresis apply. Per
lead we keep the peak total and the stages it reached: a lead that reached MQL and
then decayed was still handed over as an MQL.

Per model, the report gives precision and recall of "reached the stage" against
"became a customer", the lift by decile of peak total, and for MQL and SQL the
threshold on the total (0-100, the stage's `when`/gate still applying) that would
have maximised the chosen objective. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.definition_set import Definitions
from models.jinja import ConditionError, condition_names
from models.scoring_model import ScoringBook, ScoringModel, Stage
from scoring.engine import ResponseFact, condition_holds, decide_stage, score, stage_context
from scoring.features import features, profile_features
from scoring.history import HistoryLead, profile_dict

if TYPE_CHECKING:  # scikit-learn only where a model is given
    from scoring.predictive import PredictiveModel

SWEPT = ("mql", "sql")  # the stages whose threshold is swept
THRESHOLDS = range(0, 101)
OBJECTIVES = ("f1", "f2", "fbeta", "precision", "recall")


# --- scoring the history -------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadResult:
    id: str
    model: str
    customer: bool
    peak: float  # highest total at any moment; 0 when it never had a response
    reached: frozenset[str]  # stages entered at some moment (a jump passes those between)
    stage: str  # where the walk ended, after any recycling
    # Per swept stage: the highest total at a moment when the stage's when/gate held.
    qualified: dict[str, float | None]


def evaluate(
    definitions: Definitions,
    leads: Iterable[HistoryLead],
    progress: Callable[[int], None] | None = None,
    predictive: PredictiveModel | None = None,
) -> list[LeadResult]:
    """Score every lead as of each moment; `progress(n)` is told every 100 leads and at the end.
    `predictive`: the model whose `predicted` stage rules naming it read (else they never
    hold, as live with no model active)."""
    results: list[LeadResult] = []
    segment_models: dict[str, ScoringModel] = {}
    for lead in leads:
        results.append(evaluate_lead(definitions, lead, segment_models, predictive))
        if progress and len(results) % 100 == 0:
            progress(100)
    if progress and len(results) % 100:
        progress(len(results) % 100)
    return results


def evaluate_lead(
    definitions: Definitions,
    lead: HistoryLead,
    models: dict[str, ScoringModel] | None = None,
    predictive: PredictiveModel | None = None,
) -> LeadResult:
    profile = profile_dict(lead)
    try:
        segment, _ = definitions.choose_segment(profile)
    except ConditionError as exc:  # name the lead: the history is what to look at
        raise ConditionError(f"lead {lead.id}: {exc}") from None
    profile["segment"] = segment
    models = {} if models is None else models
    model = models.get(segment) or models.setdefault(segment, definitions.scoring_model(segment))

    cutoff = lead.outcome.at
    facts = [
        ResponseFact(response.type, response.at, response.data)
        for response in lead.responses  # sorted by time
        if cutoff is None or response.at < cutoff
    ]
    # No response, no score: the live system scores on responses (and rescores as they
    # decay), never a lead alone, so the outcome's moment counts only after a response.
    moments = sorted(
        {fact.occurred_at for fact in facts} | ({cutoff} if cutoff and facts else set())
    )

    ladder = model.stages.ladder()
    conditions = {name: _conditions(stage) for name, stage in ladder if name in SWEPT}
    predict = _predictor(predictive, model, profile, lead)
    # Below every stage's `at`, a lead at `lead` stays there: no need to ask decide_stage.
    floor_known = all(stage.at is not None for _, stage in ladder)
    entry_floor = min(stage.at or 0.0 for _, stage in ladder) if floor_known else 0.0

    stage, reached, peak = "lead", set(), 0.0
    qualified: dict[str, float | None] = dict.fromkeys(SWEPT)
    seen = 0
    for now in moments:
        while seen < len(facts) and facts[seen].occurred_at <= now:
            seen += 1
        card = score(model, profile, facts[:seen], now)
        if predict:  # as the scoring activity: before the stage is decided
            predict(card, facts[:seen], now)
        peak = max(peak, card.total)
        quiet = stage == "lead" and floor_known and card.total < entry_floor
        if stage != "sql" and not quiet:  # scoring never moves an SQL
            decision = decide_stage(model, stage, card, profile)
            reached.update(decision.entered)
            stage = decision.new
        context = None  # built once a moment, only if a condition needs it
        for name, tests in conditions.items():
            best = qualified[name]
            if best is not None and card.total <= best:
                continue
            if tests and context is None:
                context = stage_context(card, profile)
            if _all_hold(tests, context):
                qualified[name] = card.total
    return LeadResult(lead.id, model.name, lead.outcome.customer, peak, frozenset(reached),
                      stage, qualified)  # fmt: skip


def names_predicted(model: ScoringModel) -> bool:
    """Whether a stage rule or gate criterion of `model` reads `predicted`."""
    expressions = [e for _, stage in model.stages.ladder() for e in _conditions(stage)]
    expressions += [e for _, stage in model.stages.ladder() for e in (stage.recycle_when,) if e]
    return any("predicted" in condition_names(expression) for expression in expressions)


def _predictor(predictive, model: ScoringModel, profile: dict, lead: HistoryLead):
    """Adds `predicted` to a card at a moment, if the model's stages read it."""
    if predictive is None or not names_predicted(model):
        return None
    known = profile_features(profile)

    def predict(card, seen: list[ResponseFact], now) -> None:
        raw = features({}, seen, now, lead.created_at, of_profile=known)
        card.add_prediction(predictive.probability(raw), [], predictive.fingerprint,
                            predictive.horizon_days)  # fmt: skip

    return predict


def _conditions(stage: Stage) -> list[str]:
    return ([stage.when] if stage.when else []) + list(stage.gate.values())


def _all_hold(conditions: list[str], context: dict[str, Any] | None) -> bool:
    if not conditions:
        return True
    try:
        return all(condition_holds(condition, context) for condition in conditions)
    except ConditionError:  # as in the engine: a condition that fails does not hold
        return False


# --- the objective -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """What the best threshold maximises, with optional floors on precision and recall."""

    name: str = "f1"
    beta: float = 1.0
    min_recall: float | None = None
    min_precision: float | None = None

    @classmethod
    def named(
        cls,
        name: str,
        beta: float | None = None,
        min_recall: float | None = None,
        min_precision: float | None = None,
    ) -> Objective:
        """`precision` needs a recall floor (0.5 unless given) and `recall` a precision floor
        (0.5 unless given): either alone is maximised by flagging (almost) nobody or everyone."""
        if name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {name!r}")
        for label, floor in (("min-recall", min_recall), ("min-precision", min_precision)):
            if floor is not None and not 0 <= floor <= 1:
                raise ValueError(f"--{label} must be between 0 and 1, not {floor}")
        if beta is not None and beta <= 0:
            raise ValueError(f"--beta must be above 0, not {beta}")
        if name == "precision" and min_recall is None:
            min_recall = 0.5
        if name == "recall" and min_precision is None:
            min_precision = 0.5
        fixed = {"f1": 1.0, "f2": 2.0}.get(name)
        return cls(name, fixed or beta or 0.5, min_recall, min_precision)

    def value(self, precision: float | None, recall: float | None) -> float | None:
        """The figure to maximise, or None when the threshold misses a floor or flags nobody."""
        if precision is None or recall is None:
            return None
        if (self.min_recall is not None and recall < self.min_recall) or (
            self.min_precision is not None and precision < self.min_precision
        ):
            return None
        if self.name == "precision":
            return precision
        if self.name == "recall":
            return recall
        b2 = self.beta**2
        denominator = b2 * precision + recall
        return (1 + b2) * precision * recall / denominator if denominator else 0.0

    @property
    def label(self) -> str:
        return self.name if self.name in ("precision", "recall") else f"F{self.beta:g}"

    def describe(self) -> str:
        if self.name in ("precision", "recall"):
            text = f"highest {self.name}"
        elif self.beta == 1:
            text = "highest F1 (precision and recall weighed equally)"
        else:
            leaning = "recall" if self.beta > 1 else "precision"
            text = f"highest F{self.beta:g} (favours {leaning})"
        floors = []
        if self.min_recall is not None:
            floors.append(f"recall ≥ {self.min_recall:g}")
        if self.min_precision is not None:
            floors.append(f"precision ≥ {self.min_precision:g}")
        return text + (f", with {' and '.join(floors)}" if floors else "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta, "min_recall": self.min_recall,
                "min_precision": self.min_precision, "description": self.describe()}  # fmt: skip


# --- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """Flagged (reached the stage / above the threshold) against became a customer."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def flagged(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float | None:
        return self.tp / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def lift(self, base_rate: float) -> float | None:
        precision = self.precision
        return precision / base_rate if precision is not None and base_rate else None

    def to_dict(self, base_rate: float) -> dict[str, Any]:
        return {"flagged": self.flagged, "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "tn": self.tn, "precision": _round(self.precision),
                "recall": _round(self.recall), "lift": _round(self.lift(base_rate))}  # fmt: skip


@dataclass(frozen=True)
class StageResult:
    stage: str
    rule: str  # how the model enters it, for the reader
    counts: Confusion


@dataclass(frozen=True)
class Decile:
    decile: int  # 1 is the highest peak totals
    low: float
    high: float
    leads: int
    customers: int
    rate: float
    lift: float | None  # rate / base rate
    captured: float | None  # share of all customers in this decile and those above


@dataclass(frozen=True)
class ThresholdPick:
    stage: str
    current: float | None  # the stage's `at` in the model today
    now: Confusion | None  # the sweep at `current`
    best: int | None  # None: no threshold meets the objective's floors
    best_counts: Confusion | None
    value: float | None
    curve: list[tuple[int, Confusion]]


@dataclass(frozen=True)
class ModelReport:
    model: str
    leads: int
    customers: int
    stages: list[StageResult]
    deciles: list[Decile]
    picks: list[ThresholdPick]

    @property
    def base_rate(self) -> float:
        return self.customers / self.leads if self.leads else 0.0


@dataclass(frozen=True)
class Report:
    objective: Objective
    leads: int
    customers: int
    models: list[ModelReport]

    def to_dict(self) -> dict[str, Any]:
        return {
            "leads": self.leads,
            "customers": self.customers,
            "base_rate": _round(self.customers / self.leads if self.leads else None),
            "objective": self.objective.to_dict(),
            "models": {m.model: _model_dict(m, self.objective) for m in self.models},
        }


def report(results: Sequence[LeadResult], book: ScoringBook, objective: Objective) -> Report:
    """Figures per scoring model (their thresholds are not comparable across models)."""
    by_model: dict[str, list[LeadResult]] = {}
    for result in results:
        by_model.setdefault(result.model, []).append(result)
    models = [_model_report(book.models[name], by_model[name], objective)
              for name in sorted(by_model)]  # fmt: skip
    return Report(objective, len(results), sum(r.customer for r in results), models)


def _model_report(
    model: ScoringModel, results: list[LeadResult], objective: Objective
) -> ModelReport:
    customers = sum(r.customer for r in results)
    stages = [
        StageResult(name, _rule(stage), _confusion(results, lambda r, n=name: n in r.reached))
        for name, stage in model.stages.ladder()
    ]
    picks = [_sweep(model, name, results, objective) for name in SWEPT]
    return ModelReport(model.name, len(results), customers, stages, deciles(results), picks)


def _confusion(results: Iterable[LeadResult], flagged: Callable[[LeadResult], bool]) -> Confusion:
    tp = fp = fn = tn = 0
    for result in results:
        hit = flagged(result)
        if result.customer:
            tp, fn = tp + hit, fn + (not hit)
        else:
            fp, tn = fp + hit, tn + (not hit)
    return Confusion(tp, fp, fn, tn)


def deciles(results: Sequence[LeadResult]) -> list[Decile]:
    """Leads by peak total, highest first, in ten equal groups (ties split by lead id)."""
    ranked = sorted(results, key=lambda r: (-r.peak, r.id))
    total, customers = len(ranked), sum(r.customer for r in ranked)
    base = customers / total if total else 0.0
    out, captured = [], 0
    for index in range(10):
        # Bounds rounded up: the top decile is never empty (fewer than ten leads: some are).
        group = ranked[-(-index * total // 10) : -(-(index + 1) * total // 10)]
        if not group:
            continue
        hits = sum(r.customer for r in group)
        captured += hits
        rate = hits / len(group)
        out.append(Decile(index + 1, group[-1].peak, group[0].peak, len(group), hits, rate,
                          rate / base if base else None,
                          captured / customers if customers else None))  # fmt: skip
    return out


def _sweep(
    model: ScoringModel, stage: str, results: list[LeadResult], objective: Objective
) -> ThresholdPick:
    # A lead counts at threshold t if its total reached t while the stage's when/gate held.
    everyone = sorted(r.qualified[stage] for r in results if r.qualified[stage] is not None)
    buyers = sorted(r.qualified[stage] for r in results
                    if r.customer and r.qualified[stage] is not None)  # fmt: skip
    customers = sum(r.customer for r in results)
    curve, best, best_key = [], None, None
    for threshold in THRESHOLDS:
        flagged = len(everyone) - bisect_left(everyone, threshold)
        tp = len(buyers) - bisect_left(buyers, threshold)
        counts = Confusion(tp, flagged - tp, customers - tp,
                           len(results) - customers - (flagged - tp))  # fmt: skip
        curve.append((threshold, counts))
        value = objective.value(counts.precision, counts.recall)
        if value is None:
            continue
        # Ties: the better other figure; then the lowest threshold.
        other = counts.recall if objective.name == "precision" else counts.precision
        key = (round(value, 12), round(other or 0.0, 12))
        if best_key is None or key > best_key:
            best, best_key = (threshold, counts, value), key
    current = getattr(model.stages, stage).at
    now = None
    if current is not None:
        now = _confusion(
            results, lambda r: r.qualified[stage] is not None and r.qualified[stage] >= current
        )
    threshold, counts, value = best or (None, None, None)
    return ThresholdPick(stage, current, now, threshold, counts, value, curve)


def _rule(stage: Stage) -> str:
    parts = [f"total ≥ {stage.at:g}"] if stage.at is not None else []
    parts += [stage.when] if stage.when else []
    if stage.gate:
        parts.append(f"{stage.gate_name} ({', '.join(stage.gate)})")
    return "; ".join(parts)


def _model_dict(m: ModelReport, objective: Objective) -> dict[str, Any]:
    base = m.base_rate
    return {
        "leads": m.leads,
        "customers": m.customers,
        "base_rate": _round(base),
        "stages": {s.stage: {"rule": s.rule, **s.counts.to_dict(base)} for s in m.stages},
        "deciles": [
            {
                "decile": d.decile,
                "low": _round(d.low),
                "high": _round(d.high),
                "leads": d.leads,
                "customers": d.customers,
                "rate": _round(d.rate),
                "lift": _round(d.lift),
                "captured": _round(d.captured),
            }
            for d in m.deciles
        ],  # fmt: skip
        "thresholds": {
            p.stage: {
                "objective": objective.label,
                "current": p.current,
                "at_current": p.now.to_dict(base) if p.now else None,
                "best": p.best,
                "best_value": _round(p.value),
                "at_best": p.best_counts.to_dict(base) if p.best_counts else None,
                "curve": [{"threshold": t, **c.to_dict(base)} for t, c in p.curve],
            }
            for p in m.picks
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
