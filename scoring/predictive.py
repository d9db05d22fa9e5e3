"""Predictive scoring: P(won within the horizon of a moment), learned from who bought.

`train` turns a lead history (scoring/history.py's leads: `nurture train` reads them
from the database or a JSONL file) into examples: each lead at a few of its response
moments, with its features as of that moment (scoring/features.py) and whether it was
won within `horizon` days after it. A moment whose horizon runs past the end of the
history is left out (its answer is not known yet). The newest cohort of leads (by
creation) is the test period; the model is fitted on the older ones with scikit-learn:
a regularised logistic regression (default) or gradient boosting, its probabilities
calibrated (Platt scaling / isotonic, on cross-validated predictions). On the test
period the model and the current rule-based score are measured side by side (ROC AUC,
PR AUC, Brier, calibration and lift by decile, precision and recall at the rules' MQL
and SQL), and a model worse than the rules or under `min_auc` is refused, saying why.

A trained model is a `PredictiveModel`: its artifact (bytes; JSON for the logistic
model, so loading it runs no code) is named by its SHA-256 fingerprint. `predict` gives
`predicted` (0-1) and its reasons: each feature family's contribution, the probability
with the lead's value less the probability with the average lead's, in words
("visited /pricing 3 times in 7 days +0.12").
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import pickle
import platform
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import scipy
import sklearn
from scipy.sparse import csr_matrix
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler

from models.definition_set import Definitions
from models.jinja import ConditionError
from models.scoring_model import PredictiveSettings, ScoringModel
from scoring.engine import ResponseFact, decide_stage, score
from scoring.features import describe, family_of, features, model_inputs, profile_features
from scoring.history import HistoryLead, profile_dict

FORMAT = 1  # the artifact's layout; a loader refuses one it does not know
MIN_WINS = 10  # wins needed in each of the training and test periods
MIN_SUPPORT = 10  # a feature seen in fewer training examples is dropped
MAX_FEATURES = 400
RULE_SAMPLE = 3_000  # training moments the rule total is calibrated on (for its Brier)
TEST_SAMPLE = 10_000  # test moments measured, the same for the model and the rules
MAX_MOMENTS = 100_000  # moments learned from and tested on: a seeded sample beyond it


class TrainingError(ValueError):
    """The history cannot train a model (too short, too few wins): the message says why."""


@dataclass
class Example:
    lead_id: str
    at: datetime
    created_at: datetime
    won: bool
    raw: dict[str, float]
    lead: HistoryLead | None = None  # to score it with the rules (test period only)


# --- examples ----------------------------------------------------------------------------------


def examples(
    history: Sequence[HistoryLead],
    horizon_days: int,
    per_lead: int = 3,
    max_moments: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], datetime]:
    """Each lead at up to `per_lead` of its response moments (before its win), as of the
    end of the history less the horizon; and that end. Beyond `max_moments` a seeded
    sample of the moments is kept (drawn before any feature is computed)."""
    if not history:
        return [], datetime.min.replace(tzinfo=UTC)
    end = max(_last_known(lead) for lead in history)
    latest = end - timedelta(days=horizon_days)
    chosen = [(lead, _moments(lead, per_lead, latest)) for lead in history]
    total = sum(len(times) for _, times in chosen)
    if max_moments is not None and total > max_moments:
        rng, keep = random.Random(seed), max_moments / total
        chosen = [(lead, [t for t in times if rng.random() < keep]) for lead, times in chosen]
    found: list[Example] = []
    for lead, times in chosen:
        if times:
            found.extend(_lead_examples(lead, times, horizon_days))
    return found, end


def _last_known(lead: HistoryLead) -> datetime:
    times = [lead.created_at, *(response.at for response in lead.responses)]
    return max([*times, lead.outcome.at] if lead.outcome.at else times)


def _moments(lead: HistoryLead, per_lead: int, latest: datetime) -> list[datetime]:
    """Up to `per_lead` of the lead's response times, spread over its life, the last
    one kept: at or before `latest` and before its win."""
    won_at = lead.outcome.at if lead.outcome.customer else None
    before = won_at or latest + timedelta(seconds=1)
    times = sorted({r.at for r in lead.responses if r.at <= latest and r.at < before})
    if len(times) > per_lead:
        step = len(times) / per_lead
        times = sorted({times[int(len(times) - 1 - i * step)] for i in range(per_lead)})
    return times


def _lead_examples(lead: HistoryLead, times: list[datetime], horizon_days: int) -> list[Example]:
    won_at = lead.outcome.at if lead.outcome.customer else None
    facts = [ResponseFact(r.type, r.at, r.data) for r in lead.responses]
    profile = profile_features(profile_dict(lead))
    horizon = timedelta(days=horizon_days)
    return [
        Example(lead.id, at, lead.created_at, won_at is not None and won_at <= at + horizon,
                features({}, facts, at, lead.created_at, of_profile=profile))
        for at in times
    ]  # fmt: skip


def split_by_cohort(
    found: Sequence[Example], test_fraction: float
) -> tuple[list[Example], list[Example]]:
    """Older cohorts train, the newest `test_fraction` of the leads (by creation) test."""
    created = sorted({(e.created_at, e.lead_id) for e in found})
    if not created:
        return [], []
    cut = created[min(len(created) - 1, int(len(created) * (1 - test_fraction)))]
    train = [e for e in found if (e.created_at, e.lead_id) < cut]
    test = [e for e in found if (e.created_at, e.lead_id) >= cut]
    return train, test


# --- training ----------------------------------------------------------------------------------


@dataclass
class Training:
    model: PredictiveModel
    examples: int  # training examples
    test_examples: int
    refused: list[str]  # why it may not be activated; empty: it may


def train(
    history: Sequence[HistoryLead],
    definitions: Definitions,
    settings: PredictiveSettings | None = None,
    *,
    kind: str | None = None,
    test_fraction: float = 0.2,
    per_lead: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Training:
    """Fit, calibrate and measure a model on `history`; see the module's docstring."""
    settings = settings or definitions.scoring.predictive
    kind = kind or settings.kind
    say = progress or (lambda _message: None)
    say(f"features as of each moment for {len(history):,} leads")
    by_id = {lead.id: lead for lead in history}
    found, end = examples(history, settings.horizon_days, per_lead, MAX_MOMENTS, seed)
    train_set, test_set = split_by_cohort(found, test_fraction)
    require_wins(train_set, "training")
    require_wins(test_set, "test")

    say(f"fitting a {kind} model on {len(train_set):,} moments")
    inputs = [model_inputs(e.raw) for e in train_set]
    columns = _vocabulary(inputs)
    x_train = sparse_matrix(inputs, {name: i for i, name in enumerate(columns)})
    del inputs
    y_train = np.array([e.won for e in train_set])
    estimator = _fit(kind, x_train, y_train, seed)
    model = PredictiveModel.build(kind, settings.horizon_days, columns, estimator, x_train,
                                  window=(train_set, test_set, end))  # fmt: skip

    if len(test_set) > TEST_SAMPLE:  # the rules' side costs a score card each
        test_set = sorted(random.Random(seed).sample(test_set, TEST_SAMPLE), key=lambda e: e.at)
    say(f"measuring the model and the rules on {len(test_set):,} recent moments")
    for example in test_set:
        example.lead = by_id[example.lead_id]
    predicted = model.predict_many([e.raw for e in test_set])
    rules = rule_scores(definitions, test_set)
    rule_probability = _rule_calibration(definitions, train_set, by_id, seed)
    metrics = measure(np.array([e.won for e in test_set]), predicted, rules, rule_probability)
    model.summary["metrics"] = metrics
    model.summary["reference"] = reference(model, x_train, predicted, test_set)
    refused = refusals(metrics, settings.min_auc)
    model.summary["refused"] = refused
    return Training(model, len(train_set), len(test_set), refused)


def require_wins(
    part: Sequence[Example],
    name: str,
    purpose: str = "learn from",
    advice: str = "; load more history or shorten predictive.horizon",
) -> None:
    """A TrainingError unless the `name` period has MIN_WINS moments won and not."""
    wins = sum(e.won for e in part)
    if wins < MIN_WINS or len(part) - wins < MIN_WINS:
        raise TrainingError(
            f"too little history to {purpose}: the {name} period has {len(part):,} moments "
            f"with {wins:,} won within the horizon (at least {MIN_WINS} won and {MIN_WINS} "
            f"not are needed){advice}"
        )


def _vocabulary(rows: Sequence[Mapping[str, float]]) -> list[str]:
    """The features seen in at least MIN_SUPPORT examples, the MAX_FEATURES most seen."""
    support: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            if value:
                support[name] = support.get(name, 0) + 1
    kept = sorted((n for n, c in support.items() if c >= MIN_SUPPORT),
                  key=lambda n: (-support[n], n))[:MAX_FEATURES]  # fmt: skip
    return sorted(kept)


def sparse_matrix(rows: Sequence[Mapping[str, float]], index: Mapping[str, int]):
    """Rows of named inputs as a CSR matrix over `index`'s columns (others dropped)."""
    pointers, columns, values = [0], [], []
    for row in rows:
        for name, value in row.items():
            column = index.get(name)
            if column is not None and value:
                columns.append(column)
                values.append(value)
        pointers.append(len(columns))
    arrays = (np.array(values, dtype=np.float64), np.array(columns, dtype=np.int32),
              np.array(pointers, dtype=np.int64))  # fmt: skip
    return csr_matrix(arrays, shape=(len(rows), len(index)))


def _fit(kind: str, x, y, seed: int):
    if kind == "logistic":
        base = make_pipeline(MaxAbsScaler(), LogisticRegression(C=1.0, max_iter=2000))
        method = "sigmoid"
    else:
        x = x.toarray().astype(np.float32)
        base = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, random_state=seed)
        method = "isotonic"
    calibrated = CalibratedClassifierCV(base, method=method, cv=3, ensemble=False)
    return calibrated.fit(x, y)


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    family: str
    text: str  # "visited /pricing 3 times in 7 days"
    contribution: float  # to the probability

    def describe(self) -> str:
        return f"{self.text} {self.contribution:+.2f}"


@dataclass(frozen=True)
class Prediction:
    probability: float
    reasons: list[Reason]
    fingerprint: str

    def reason_lines(self, limit: int = 3) -> list[str]:
        return [reason.describe() for reason in self.reasons[:limit]]


@dataclass
class PredictiveModel:
    kind: str  # logistic | boosted
    horizon_days: int
    columns: list[str]
    means: list[float]  # the average training lead's inputs: reasons are against it
    params: dict[str, Any]  # logistic: weights, intercept; boosted: the pickled estimator
    summary: dict[str, Any] = field(default_factory=dict)  # window, metrics, versions...
    fingerprint: str = ""

    # Built from a fit -------------------------------------------------------------------------

    @classmethod
    def build(cls, kind, horizon_days, columns, estimator, x_train, window) -> PredictiveModel:
        train_set, test_set, end = window
        means = np.asarray(x_train.mean(axis=0)).ravel().tolist()
        if kind == "logistic":
            params = _collapsed(estimator)
        else:
            params = {"estimator": base64.b64encode(pickle.dumps(estimator)).decode()}
        model = cls(kind, horizon_days, columns, means, params)
        model.summary = {
            "kind": kind,
            "horizon_days": horizon_days,
            "trained_from": min(e.at for e in train_set).isoformat(),
            "trained_to": max(e.at for e in train_set).isoformat(),
            "tested_from": min(e.at for e in test_set).isoformat(),
            "tested_to": max(e.at for e in test_set).isoformat(),
            "history_ends": end.isoformat(),
            "examples": {
                "training": len(train_set),
                "test": len(test_set),
                "training_won": int(sum(e.won for e in train_set)),
                "test_won": int(sum(e.won for e in test_set)),
            },  # fmt: skip
            "features": columns,
            "versions": {
                "python": platform.python_version(),
                "scikit-learn": sklearn.__version__,
                "numpy": np.__version__,
                "scipy": scipy.__version__,
            },  # fmt: skip
        }
        model.fingerprint = fingerprint_of(model.artifact())
        if kind == "logistic":  # the collapsed weights must be the fitted model's
            _check_collapsed(model, estimator, x_train)
        return model

    # Stored and loaded ------------------------------------------------------------------------

    def artifact(self) -> bytes:
        """What is fingerprinted and stored: the model's maths (not its measurements)."""
        body = {"format": FORMAT, "kind": self.kind, "horizon_days": self.horizon_days,
                "columns": self.columns, "means": self.means, "params": self.params}  # fmt: skip
        return gzip.compress(json.dumps(body, sort_keys=True).encode(), mtime=0)

    @classmethod
    def load(cls, artifact: bytes, summary: dict[str, Any], fingerprint: str) -> PredictiveModel:
        """The stored model, checked against its fingerprint before anything is read."""
        if fingerprint_of(artifact) != fingerprint:
            raise ValueError(f"predictive model {fingerprint}: its artifact does not match its "
                             "fingerprint (changed in the database?)")  # fmt: skip
        body = json.loads(gzip.decompress(artifact))
        if body.get("format") != FORMAT:
            raise ValueError(f"predictive model {fingerprint}: artifact format "
                             f"{body.get('format')!r}, this version reads {FORMAT}")  # fmt: skip
        return cls(body["kind"], body["horizon_days"], body["columns"], body["means"],
                   body["params"], summary, fingerprint)  # fmt: skip

    # Predicting -------------------------------------------------------------------------------

    def predict(
        self,
        profile: Mapping[str, Any],
        responses: Sequence[ResponseFact],
        at: datetime,
        created_at: datetime | None = None,
    ) -> Prediction:
        raw = features(profile, responses, at, created_at)
        return self.explain(raw)

    def explain(self, raw: Mapping[str, float]) -> Prediction:
        inputs = model_inputs(raw)
        index = self._index
        if self.kind == "logistic":
            return self._explain_linear(raw, inputs, index)
        return self._explain_any(raw, inputs, index)

    def probability(self, raw: Mapping[str, float]) -> float:
        """`predicted` alone, without its reasons: for a backtest's every moment."""
        if self.kind != "logistic":
            return float(self.predict_many([raw])[0])
        weights, index = self.params["weights"], self._index
        logit = self.params["intercept"]
        for name, value in model_inputs(raw).items():
            column = index.get(name)
            if column is not None:
                logit += weights[column] * value
        return float(_calibrated(np.array([logit]), self.params)[0])

    def predict_many(self, raws: Sequence[Mapping[str, float]]) -> np.ndarray:
        x = sparse_matrix([model_inputs(raw) for raw in raws], self._index)
        if self.kind == "logistic":
            weights = np.array(self.params["weights"])
            return _calibrated(x @ weights + self.params["intercept"], self.params)
        return self._estimator.predict_proba(x.toarray().astype(np.float32))[:, 1]

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = self.__dict__["_index_cache"] = {n: i for i, n in enumerate(self.columns)}
        return cached

    @property
    def _estimator(self):
        cached = self.__dict__.get("_estimator_cache")
        if cached is None:  # only our own database's bytes, checked against the fingerprint
            cached = pickle.loads(base64.b64decode(self.params["estimator"]))  # noqa: S301
            self.__dict__["_estimator_cache"] = cached
        return cached

    def _matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        index = self._index
        x = np.zeros((len(rows), len(self.columns)))
        for r, row in enumerate(rows):
            for name, value in row.items():
                column = index.get(name)
                if column is not None:
                    x[r, column] = value
        return x

    def _explain_linear(self, raw, inputs, index) -> Prediction:
        weights, means = self.params["weights"], self.means
        shifts: dict[str, float] = {}
        logit = self.params["intercept"]
        for column, name in enumerate(self.columns):
            value = inputs.get(name, 0.0)
            logit += weights[column] * value
            family = self._families[column]
            shifts[family] = shifts.get(family, 0.0) + weights[column] * (value - means[column])
        probability = float(_calibrated(np.array([logit]), self.params)[0])
        contributions = {
            family: probability - float(_calibrated(np.array([logit - shift]), self.params)[0])
            for family, shift in shifts.items()
        }
        return self._prediction(probability, contributions, raw)

    def _explain_any(self, raw, inputs, index) -> Prediction:
        """Any model: the probability with each family at the average lead's inputs."""
        x = self._matrix([inputs])[0]
        families = sorted(set(self._families))
        rows = [x]
        for family in families:
            row = x.copy()
            for column, name in enumerate(self._families):
                if name == family:
                    row[column] = self.means[column]
            rows.append(row)
        probabilities = self._estimator.predict_proba(np.array(rows, dtype=np.float32))[:, 1]
        contributions = {family: float(probabilities[0] - probabilities[i + 1])
                         for i, family in enumerate(families)}  # fmt: skip
        return self._prediction(float(probabilities[0]), contributions, raw)

    @property
    def _families(self) -> list[str]:
        cached = self.__dict__.get("_families_cache")
        if cached is None:
            cached = self.__dict__["_families_cache"] = [family_of(n) for n in self.columns]
        return cached

    def _prediction(self, probability: float, contributions: dict[str, float], raw) -> Prediction:
        ranked = sorted(contributions.items(), key=lambda item: (-abs(item[1]), item[0]))
        reasons = [Reason(family, describe(family, raw), round(value, 4))
                   for family, value in ranked[:10] if abs(value) >= 0.005]  # fmt: skip
        return Prediction(round(probability, 6), reasons, self.fingerprint)


def fingerprint_of(artifact: bytes) -> str:
    return "pm-" + hashlib.sha256(artifact).hexdigest()[:16]


def _collapsed(calibrated: CalibratedClassifierCV) -> dict[str, Any]:
    """Scaler, regression and Platt scaling as one logistic function: the weights of the
    raw inputs, the intercept, and the calibration's slope and offset."""
    (fitted,) = calibrated.calibrated_classifiers_
    scaler, regression = fitted.estimator.steps[0][1], fitted.estimator.steps[1][1]
    (sigmoid,) = fitted.calibrators
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    weights = regression.coef_[0] / scale
    return {"weights": weights.tolist(), "intercept": float(regression.intercept_[0]),
            "a": float(sigmoid.a_), "b": float(sigmoid.b_)}  # fmt: skip


def _calibrated(decision: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    # scikit-learn's _SigmoidCalibration: p = 1 / (1 + exp(a * f + b))
    return 1.0 / (1.0 + np.exp(np.clip(params["a"] * decision + params["b"], -700, 700)))


def _check_collapsed(model: PredictiveModel, estimator, x_train) -> None:
    rows = x_train[: min(200, x_train.shape[0])]
    ours = _calibrated(rows @ np.array(model.params["weights"]) + model.params["intercept"],
                       model.params)  # fmt: skip
    theirs = estimator.predict_proba(rows)[:, 1]
    if not np.allclose(ours, theirs, atol=1e-6):
        raise RuntimeError(
            "the collapsed logistic model disagrees with scikit-learn's: this scikit-learn "
            f"({sklearn.__version__}) calibrates differently"
        )


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleScore:
    total: float  # 0-100
    stage: str  # the highest stage the card earns from `lead` at the moment


def rule_scores(definitions: Definitions, found: Sequence[Example]) -> list[RuleScore]:
    """The current rule-based score of each example, at its moment, by its segment's model."""
    models: dict[str, ScoringModel] = {}
    leads: dict[str, tuple[ScoringModel, dict, list[ResponseFact]]] = {}
    scores = []
    for example in found:
        known = leads.get(example.lead_id)
        if known is None:
            known = leads[example.lead_id] = _rules_for(definitions, example.lead, models)
        model, profile, facts = known
        seen = [fact for fact in facts if fact.occurred_at <= example.at]
        card = score(model, profile, seen, example.at)
        stage = decide_stage(model, "lead", card, profile).new
        scores.append(RuleScore(card.total, stage))
    return scores


def _rules_for(definitions, lead: HistoryLead, models: dict[str, ScoringModel]):
    profile = profile_dict(lead)
    try:
        segment, _ = definitions.choose_segment(profile)
    except ConditionError as exc:
        raise ConditionError(f"lead {lead.id}: {exc}") from None
    profile["segment"] = segment
    model = models.get(segment) or models.setdefault(segment, definitions.scoring_model(segment))
    return model, profile, [ResponseFact(r.type, r.at, r.data) for r in lead.responses]


def _rule_calibration(definitions, train_set, by_id, seed) -> Callable[[np.ndarray], np.ndarray]:
    """The rule total as a probability (Platt scaling fitted on training moments), so
    the rules get a Brier score and a calibration table too."""
    sample = list(train_set)
    if len(sample) > RULE_SAMPLE:
        sample = random.Random(seed).sample(sample, RULE_SAMPLE)
    for example in sample:
        example.lead = by_id[example.lead_id]
    totals = np.array([[s.total] for s in rule_scores(definitions, sample)])
    fitted = LogisticRegression().fit(totals, [e.won for e in sample])
    return lambda values: fitted.predict_proba(values.reshape(-1, 1))[:, 1]


STAGE_RANK = {"lead": 0, "mql": 1, "pql": 1, "sql": 2}


def measure(
    won: np.ndarray, predicted: np.ndarray, rules: Sequence[RuleScore], rule_probability
) -> dict[str, Any]:
    """The model's and the rules' figures on the same test moments."""
    totals = np.array([r.total for r in rules])
    ranks = np.array([STAGE_RANK.get(r.stage, 2) for r in rules])
    model = _figures(won, predicted)
    rule = _figures(won, rule_probability(totals), ranking=totals)
    for stage, rank in (("mql", 1), ("sql", 2)):
        flagged = ranks >= rank
        rule[f"at_{stage}"] = _precision_recall(won, flagged)
        # The model flagging as many moments as the rules' stage does.
        count = int(flagged.sum())
        threshold = float(np.sort(predicted)[::-1][count - 1]) if count else 1.0
        model[f"at_{stage}"] = _precision_recall(won, predicted >= threshold) | {
            "threshold": round(threshold, 4)
        }
    return {"moments": int(len(won)), "won": int(won.sum()), "model": model, "rules": rule}


def _figures(won: np.ndarray, probability: np.ndarray, ranking: np.ndarray | None = None) -> dict:
    ranking = probability if ranking is None else ranking
    return {
        "roc_auc": round(float(roc_auc_score(won, ranking)), 4),
        "pr_auc": round(float(average_precision_score(won, ranking)), 4),
        "brier": round(float(brier_score_loss(won, probability)), 5),
        "deciles": deciles(won, probability, ranking),
    }


def deciles(won: np.ndarray, probability: np.ndarray, ranking: np.ndarray) -> list[dict]:
    """Moments by ranking, highest first, in ten groups: predicted and actual rate, lift."""
    order = np.argsort(-ranking, kind="stable")
    base = float(won.mean()) or 1.0
    rows = []
    for number, part in enumerate(np.array_split(order, 10), start=1):
        if not len(part):
            continue
        rate = float(won[part].mean())
        rows.append({"decile": number, "moments": int(len(part)),
                     "predicted": round(float(probability[part].mean()), 4),
                     "actual": round(rate, 4), "lift": round(rate / base, 2)})  # fmt: skip
    return rows


def _precision_recall(won: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    hits = int((won & flagged).sum())
    return {"flagged": int(flagged.sum()),
            "precision": round(hits / flagged.sum(), 4) if flagged.sum() else None,
            "recall": round(hits / won.sum(), 4) if won.sum() else None}  # fmt: skip


def calibration_error(deciles_: Sequence[Mapping[str, Any]]) -> float:
    """Expected calibration error over the deciles: |predicted - actual|, weighted."""
    total = sum(row["moments"] for row in deciles_) or 1
    return sum(abs(row["predicted"] - row["actual"]) * row["moments"] for row in deciles_) / total


def refusals(metrics: Mapping[str, Any], min_auc: float) -> list[str]:
    """Why a model may not be activated: worse than the rules, or under the minimum AUC."""
    ours, theirs = metrics["model"]["roc_auc"], metrics["rules"]["roc_auc"]
    found = []
    if ours < min_auc:
        found.append(f"its ROC AUC on the test period, {ours:.3f}, is under scoring.yaml's "
                     f"predictive.min_auc ({min_auc:.2f})")  # fmt: skip
    if ours < theirs:
        found.append(f"it is worse than the rules on the test period: ROC AUC {ours:.3f} "
                     f"against the rules' {theirs:.3f}")  # fmt: skip
    return found


# --- what drift is measured against ------------------------------------------------------------


def reference(model: PredictiveModel, x_train, predicted_test, test_set) -> dict[str, Any]:
    """Each feature's distribution in training (ten quantile bins and their shares), the
    predicted probabilities' on the test period, and the test period's calibration."""
    dense_columns = {}
    x = x_train.tocsc()
    for column, name in enumerate(model.columns):
        values = x[:, column].toarray().ravel()
        dense_columns[name] = _bins(values)
    won = np.array([e.won for e in test_set])
    return {"features": dense_columns, "predicted": _bins(np.asarray(predicted_test)),
            "calibration": deciles(won, np.asarray(predicted_test),
                                   np.asarray(predicted_test))}  # fmt: skip


def _bins(values: np.ndarray) -> dict[str, list[float]]:
    edges = sorted(set(np.quantile(values, np.linspace(0.1, 0.9, 9)).round(6).tolist()))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"edges": edges, "shares": (counts / max(1, len(values))).round(6).tolist()}


def population_stability(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI: sum over bins of (actual - expected) * ln(actual / expected), shares floored
    at 0.0001 so an empty bin counts without dividing by zero."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, 1e-4), max(a, 1e-4)
        total += (a - e) * math.log(a / e)
    return total


def shares_in(bins: Mapping[str, list[float]], values: np.ndarray) -> list[float]:
    counts = np.bincount(np.searchsorted(bins["edges"], values, side="right"),
                         minlength=len(bins["edges"]) + 1)  # fmt: skip
    return (counts / max(1, len(values))).tolist()
