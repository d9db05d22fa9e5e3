"""`nurture backtest --predictive`: the rules, the predictive model and both combined,
on the same moments of the same history.

The moments are `scoring.predictive`'s: each lead at up to `per_lead` of its response
moments before its win, features and rule score as of that moment, labelled "won within
the model's horizon". The newest `test_fraction` of the leads (by creation) are the
test period, as in training; everything below is measured there:

- **rules**: the rule total (0-100) at the moment, by the lead's segment's model; and
  its MQL and SQL stages (the highest the card earns from `lead` at that moment);
- **model**: the predictive model's probability;
- **combination**: logistic stacking fitted on the older cohorts' moments: a logistic
  regression on (the model's log-odds, the rule total / 100), so the rules add what the
  model misses and no more. (Fitted on the moments the model may have learned from, its
  weight on the model leans a little high; it is still measured on the test period.)

Each gets ROC AUC, PR AUC (average precision) and the threshold it would need to reach
the chosen precision: the lowest one whose flagged moments are at least that precise,
so the most recall at that precision, with the recall it gets there. With no model
given, one is trained on the older cohorts (`train`): the comparison is then honest by
construction. Pure: no I/O and no clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from models.definition_set import Definitions
from models.scoring_model import PredictiveSettings
from scoring.history import HistoryLead
from scoring.predictive import (
    MAX_MOMENTS,
    STAGE_RANK,
    TEST_SAMPLE,
    Example,
    PredictiveModel,
    examples,
    require_wins,
    rule_scores,
    split_by_cohort,
    train,
)

EDGE = 1e-6  # probabilities are clipped this far from 0 and 1 before their log-odds
STACK_SAMPLE = 10_000  # older moments the combination is fitted on (a score card each)


@dataclass(frozen=True)
class Pick:
    """The lowest threshold at which the flagged moments reach the chosen precision."""

    threshold: float
    flagged: int
    precision: float
    recall: float


@dataclass(frozen=True)
class Contender:
    name: str  # rules | model | combination
    scale: str  # what its threshold is on
    roc_auc: float
    pr_auc: float
    pick: Pick | None  # None: no threshold reaches the precision


@dataclass(frozen=True)
class StageFigures:
    stage: str
    flagged: int
    precision: float | None
    recall: float | None


@dataclass
class Comparison:
    precision: float  # the chosen precision
    fingerprint: str
    kind: str
    trained: bool  # True: trained here, on the history's older cohorts
    horizon_days: int
    moments: int  # test moments measured
    won: int
    fitted_on: int  # older moments the combination was fitted on
    tested_from: datetime
    tested_to: datetime
    contenders: list[Contender]
    stages: list[StageFigures]
    weights: dict[str, float]  # the combination's
    refused: list[str] = field(default_factory=list)  # a model trained here: its refusals
    notes: list[str] = field(default_factory=list)

    @property
    def base_rate(self) -> float:
        return self.won / self.moments if self.moments else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "model": {
                "fingerprint": self.fingerprint,
                "kind": self.kind,
                "trained_here": self.trained,
                "refused": self.refused,
            },  # fmt: skip
            "horizon_days": self.horizon_days,
            "moments": self.moments,
            "won": self.won,
            "base_rate": round(self.base_rate, 4),
            "tested_from": self.tested_from.isoformat(),
            "tested_to": self.tested_to.isoformat(),
            "combination": {
                "method": "logistic stacking",
                "fitted_on": self.fitted_on,
                "weights": self.weights,
            },  # fmt: skip
            "contenders": {
                c.name: {
                    "scale": c.scale,
                    "roc_auc": c.roc_auc,
                    "pr_auc": c.pr_auc,
                    "at_precision": _pick_dict(c.pick),
                }  # fmt: skip
                for c in self.contenders
            },
            "stages": {
                s.stage: {"flagged": s.flagged, "precision": s.precision, "recall": s.recall}
                for s in self.stages
            },  # fmt: skip
            "notes": self.notes,
        }


def compare(
    history: Sequence[HistoryLead],
    definitions: Definitions,
    model: PredictiveModel | None = None,
    *,
    precision: float = 0.5,
    settings: PredictiveSettings | None = None,
    test_fraction: float = 0.2,
    per_lead: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """The rules, `model` (None: one trained here) and their combination on the test
    period of `history`; see the module's docstring."""
    if not 0 < precision <= 1:
        raise ValueError(f"the precision must be above 0 and at most 1, not {precision}")
    say = progress or (lambda _message: None)
    refused: list[str] = []
    trained = model is None
    if model is None:
        training = train(history, definitions, settings, test_fraction=test_fraction,
                         per_lead=per_lead, seed=seed, progress=progress)  # fmt: skip
        model, refused = training.model, training.refused

    say("the rules, the model and the combination on the same moments")
    found, _ = examples(history, model.horizon_days, per_lead, MAX_MOMENTS, seed)
    older, test = split_by_cohort(found, test_fraction)
    require_wins(older, "older", "compare on", "")
    require_wins(test, "test", "compare on", "")
    period = (min(e.at for e in test), max(e.at for e in test))
    notes = _notes(model, trained, test, period, settings or definitions.scoring.predictive)
    older, test = _sample(older, STACK_SAMPLE, seed), _sample(test, TEST_SAMPLE, seed)
    by_id = {lead.id: lead for lead in history}
    for example in (*older, *test):
        example.lead = by_id[example.lead_id]

    contenders, stages, weights = _measured(model, definitions, older, test, precision)
    won = sum(e.won for e in test)
    return Comparison(
        precision, model.fingerprint, model.kind, trained, model.horizon_days, len(test),
        won, len(older), *period, contenders, stages, weights, refused, notes,
    )  # fmt: skip


def _measured(model, definitions, older: list[Example], test: list[Example], precision: float):
    """The three contenders and the rules' stages on the test moments, and the
    combination's weights (fitted on the older moments)."""
    stack = _stacking(model, definitions, older)
    won = np.array([e.won for e in test])
    rules = rule_scores(definitions, test)
    totals = np.array([r.total for r in rules])
    predicted = model.predict_many([e.raw for e in test])
    combined = stack.predict_proba(_stack_inputs(predicted, totals))[:, 1]
    contenders = [
        _contender("rules", "rule total (0-100)", won, totals, precision),
        _contender("model", "probability", won, predicted, precision),
        _contender("combination", "probability", won, combined, precision),
    ]
    ranks = np.array([STAGE_RANK.get(r.stage, 2) for r in rules])
    stages = [_stage(name, won, ranks >= rank) for name, rank in (("mql", 1), ("sql", 2))]
    weights = {"intercept": round(float(stack.intercept_[0]), 4),
               "model_log_odds": round(float(stack.coef_[0][0]), 4),
               "rule_total": round(float(stack.coef_[0][1]) / 100, 5)}  # fmt: skip
    return contenders, stages, weights


def _sample(found: list[Example], most: int, seed: int) -> list[Example]:
    """At most `most` moments, a seeded sample (the rules cost a score card each)."""
    if len(found) <= most:
        return found
    return sorted(random.Random(seed).sample(found, most), key=lambda e: e.at)


def _stack_inputs(probability: np.ndarray, totals: np.ndarray) -> np.ndarray:
    clipped = np.clip(probability, EDGE, 1 - EDGE)
    return np.column_stack([np.log(clipped / (1 - clipped)), totals / 100])


def _stacking(model: PredictiveModel, definitions: Definitions, older: list[Example]):
    """The combination: a logistic regression on the model's log-odds and the rule total,
    fitted on the older moments."""
    totals = np.array([r.total for r in rule_scores(definitions, older)])
    predicted = model.predict_many([e.raw for e in older])
    return LogisticRegression().fit(_stack_inputs(predicted, totals), [e.won for e in older])


def _contender(name: str, scale: str, won: np.ndarray, score: np.ndarray, precision: float):
    return Contender(name, scale, round(float(roc_auc_score(won, score)), 4),
                     round(float(average_precision_score(won, score)), 4),
                     pick(won, score, precision))  # fmt: skip


def pick(won: np.ndarray, score: np.ndarray, precision: float) -> Pick | None:
    """The lowest threshold t such that the moments scoring at least t are at least
    `precision` precise (so the most recall there), or None if none is."""
    if not len(score) or not won.any():
        return None
    order = np.argsort(-score, kind="stable")
    ranked, hits = score[order], np.cumsum(won[order])
    flagged = np.arange(1, len(ranked) + 1)
    # A threshold flags every moment tied with it: only the end of a run of ties is a cut.
    cuts = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    good = cuts[hits[cuts] / flagged[cuts] >= precision - 1e-12]
    if not len(good):
        return None
    last = good[-1]
    return Pick(round(float(ranked[last]), 6), int(flagged[last]),
                round(float(hits[last] / flagged[last]), 4),
                round(float(hits[last] / won.sum()), 4))  # fmt: skip


def _stage(name: str, won: np.ndarray, flagged: np.ndarray) -> StageFigures:
    hits, count = int((won & flagged).sum()), int(flagged.sum())
    return StageFigures(name, count, round(hits / count, 4) if count else None,
                        round(hits / int(won.sum()), 4) if won.sum() else None)  # fmt: skip


def _notes(model, trained, test, period, settings) -> list[str]:
    """What the reader should know to trust the figures (or not)."""
    notes = []
    if model.horizon_days != settings.horizon_days:
        notes.append(f"moments are labelled with the model's horizon ({model.horizon_days} "
                     f"days), not scoring.yaml's ({settings.horizon_days})")  # fmt: skip
    summary = model.summary
    if trained or not summary.get("trained_to"):
        return notes
    if (summary.get("tested_from"), summary.get("tested_to")) == tuple(
        moment.isoformat() for moment in period
    ):
        notes.append("the test period is the model's own (the same history and split): "
                     "it learned from none of these moments")  # fmt: skip
        return notes
    # A lead created after the model's last training moment cannot have been learned from.
    learned = _utc(datetime.fromisoformat(summary["trained_to"]))
    maybe = sum(e.created_at <= learned for e in test)
    if maybe:
        notes.append(f"the model learned from moments up to {learned:%Y-%m-%d}: {maybe:,} of "
                     f"the {len(test):,} test moments are of leads created by then, which it "
                     "may have learned from (that would flatter it)")  # fmt: skip
    return notes


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _pick_dict(found: Pick | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {"threshold": found.threshold, "flagged": found.flagged,
            "precision": found.precision, "recall": found.recall}  # fmt: skip
