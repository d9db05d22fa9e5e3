"""`nurture models check`: is the predictive model still the one for today's leads?

A model learned one population of leads; when the leads change (another campaign, a new
market, a page renamed) its probabilities stop meaning what they did. Two signs, each
measured against what the model stored when it was trained (`summary["reference"]`):

- **Drift of the inputs.** The recent population: each lead with a response in the last
  `recent_days`, at up to three of its response moments in that window (the moments the
  scoring activity scored it, sampled as training samples them), with its features as
  of each moment. Each feature's distribution is compared with training's by the
  population stability index (PSI, over training's ten quantile bins); so is the
  distribution of the probabilities the model gives the recent moments.
- **Calibration now against then.** The moments whose answer is known by now (a moment
  in the `recent_days` before now less the horizon): what the model predicted for them
  and how many were won within the horizon, by decile, and the calibration error,
  against the error on the model's test period.

The verdict: `retrain` when a feature's or the predictions' PSI reaches 0.25 or the
calibration error grew by 0.05; `watch` when a PSI reaches 0.1; else `stable`.
Everything is read as of `now`: nothing after it counts.

The lead's age (`age_days`) is shown but makes no verdict: training takes each lead at
three moments spread over its whole life, so its reference ages bunch where lives end
(~120 days for most); today's leads are mid-life, so its PSI is ~0.3 with nothing
changed (a synthetic history of the same leads gives that, month after month).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import sessionmaker

from models.db import PredictiveModelRecord
from models.definition_set import Definitions
from scoring.engine import ResponseFact
from scoring.features import CATEGORIES, features, model_inputs
from scoring.history import HistoryLead, Outcome, profile_dict
from scoring.model_store import active_fingerprint, load
from scoring.predictive import (
    PredictiveModel,
    calibration_error,
    deciles,
    examples,
    population_stability,
    shares_in,
)
from scoring.stored_history import stored_history

PSI_WATCH = 0.1  # a shift worth watching
PSI_RETRAIN = 0.25  # a shift the model was not trained for
CALIBRATION_GROWTH = 0.05  # calibration error grown by this much: retrain
MIN_MOMENTS = 100  # fewer recent moments than this: PSI is mostly noise
MIN_CALIBRATION = 100  # known-answer moments needed to measure calibration
PER_LEAD = 3  # moments per lead, as training takes them
UNSEEN_SHARE = 0.1  # a feature the model does not know, in this share of recent moments
NAMED = 3  # shifted features named in a reason
RARE = 0.1  # a feature whose training deciles are all 0 was in at most this share
SAMPLED = frozenset({"age_days"})  # shown, no verdict: see the module's docstring


class DriftError(ValueError):
    """No model to check (none active, or the one named does not exist): says what to do."""


def drift_report(
    sessions: sessionmaker,
    definitions: Definitions,
    now: datetime,
    recent_days: int = 30,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The active model's (or `fingerprint`'s) drift as of `now`; see the module's docstring."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    record_info, model = _model(sessions, fingerprint)
    reference = model.summary["reference"]
    history = _as_of(stored_history(sessions), now)
    since = now - timedelta(days=recent_days)
    raws, leads = _recent_moments(history, since, now)
    report = {
        **record_info,
        "now": now.isoformat(),
        "recent_days": recent_days,
        "recent": {
            "from": since.isoformat(),
            "to": now.isoformat(),
            "leads": leads,
            "moments": len(raws),
        },  # fmt: skip
        "features": _feature_psi(model, reference["features"], raws),
        "predicted": _predicted_psi(model, reference, raws),
        "unseen": _unseen(model, raws),
        "calibration": _calibration(model, reference, history, now, recent_days),
        "retrain": definitions.scoring.predictive.retrain,
    }
    report["verdict"], report["reasons"] = verdict(report)
    return report


# --- what is compared ------------------------------------------------------------------------


def _model(sessions: sessionmaker, fingerprint: str | None) -> tuple[dict, PredictiveModel]:
    with sessions() as session:
        fingerprint = fingerprint or active_fingerprint(session)
        if fingerprint is None:
            raise DriftError("no predictive model is active: activate one with `nurture models "
                             "activate FINGERPRINT`, or name the one to check")  # fmt: skip
        record = session.get(PredictiveModelRecord, fingerprint)
        if record is None:
            raise DriftError(f"no predictive model {fingerprint} (see `nurture models list`)")
        if "reference" not in (record.summary or {}):
            raise DriftError(f"predictive model {fingerprint} stored no training reference "
                             "to compare with: train a new one")  # fmt: skip
        info = {"fingerprint": record.fingerprint, "status": record.status,
                "kind": record.kind, "horizon_days": record.horizon_days}  # fmt: skip
        return info, load(record)


def _as_of(history: Sequence[HistoryLead], now: datetime) -> list[HistoryLead]:
    """The history as it stood at `now`: later leads, responses and wins unknown."""
    found = []
    for lead in history:
        if lead.created_at > now:
            continue
        won = lead.outcome.customer and lead.outcome.at is not None and lead.outcome.at <= now
        found.append(lead.model_copy(update={
            "responses": [r for r in lead.responses if r.at <= now],
            "outcome": Outcome(customer=won, at=lead.outcome.at if won else None),
        }))  # fmt: skip
    return found


def _recent_moments(
    history: Sequence[HistoryLead], since: datetime, now: datetime
) -> tuple[list[dict[str, float]], int]:
    """Features at the recent response moments (up to PER_LEAD a lead, spread as
    training spreads them; none after the lead was won): the population scored lately."""
    raws: list[dict[str, float]] = []
    leads = 0
    for lead in history:
        won_at = lead.outcome.at if lead.outcome.customer else None
        times = sorted({r.at for r in lead.responses
                        if since < r.at <= now and (won_at is None or r.at < won_at)})  # fmt: skip
        if not times:
            continue
        leads += 1
        facts = [ResponseFact(r.type, r.at, r.data) for r in lead.responses]
        profile = profile_dict(lead)
        raws.extend(features(profile, facts, at, lead.created_at) for at in _spread(times))
    return raws, leads


def _spread(times: list[datetime]) -> list[datetime]:
    """Up to PER_LEAD of the moments over the window, the last one kept (as training)."""
    if len(times) <= PER_LEAD:
        return times
    step = len(times) / PER_LEAD
    return sorted({times[min(len(times) - 1, int(len(times) - 1 - i * step))]
                   for i in range(PER_LEAD)})  # fmt: skip


def _feature_psi(
    model: PredictiveModel,
    bins: Mapping[str, Mapping[str, list[float]]],
    raws: Sequence[Mapping[str, float]],
) -> list[dict[str, Any]]:
    """Each model feature's PSI against training, worst first (a feature absent from a
    moment is 0, as the model reads it). A yes/no feature (an industry, a title) is
    compared by its share, training's being the model's mean of it: its deciles are
    all 0 when under 10% of training's moments had it, and would show no shift. A rare
    count (deciles all 0) gets the least PSI its share now can have: training's share
    taken as the most it can have been, 10%."""
    if not raws:
        return []
    inputs = [model_inputs(raw) for raw in raws]
    means = dict(zip(model.columns, model.means, strict=True))
    rows = []
    for name, reference in bins.items():
        values = np.array([row.get(name, 0.0) for row in inputs])
        share = float((values > 0).mean())
        if _yes_no(name) and name in means:
            psi = population_stability([1 - means[name], means[name]], [1 - share, share])
        elif reference["edges"] == [0.0]:  # deciles all 0: at most 10% had it
            psi = (
                population_stability([1 - RARE, RARE], [1 - share, share]) if share > RARE else 0.0
            )
        else:
            psi = population_stability(reference["shares"], shares_in(reference, values))
        rows.append(_row(name, psi))
    rows.extend(_category_psi(means, inputs))
    # Worst first; `age_days`, which makes no verdict, after the others.
    return sorted(rows, key=lambda row: (not row["in_verdict"], -row["psi"], row["feature"]))


def _row(name: str, psi: float) -> dict[str, Any]:
    return {"feature": name, "psi": round(psi, 4), "level": level(psi),
            "in_verdict": name not in SAMPLED}  # fmt: skip


def _category_psi(means: Mapping[str, float], inputs: Sequence[Mapping[str, float]]) -> list:
    """A profile field's values as one distribution (`industry=*`): each known value's
    share and the rest (other values, none). One industry of twelve moving is a small
    PSI on its own; all of them giving way to new ones is a large one here."""
    rows = []
    for field in CATEGORIES:
        names = [name for name in means if name.startswith(f"{field}=")]
        if not names:
            continue
        then = [means[name] for name in names]
        now = [sum(1 for row in inputs if row.get(name)) / len(inputs) for name in names]
        psi = population_stability([*then, max(0.0, 1 - sum(then))], [*now, max(0.0, 1 - sum(now))])
        rows.append(_row(f"{field}=*", psi))
    return rows


def _yes_no(name: str) -> bool:
    """A profile indicator: 1 when the lead has it (features.profile_features)."""
    return "=" in name or name.startswith("title:") or name == "free_mail"


def _predicted_psi(model: PredictiveModel, reference: Mapping, raws) -> dict[str, Any]:
    """The recent moments' probabilities against the test period's."""
    then = _mean_predicted(reference["calibration"])
    if not raws:
        return {"psi": None, "level": None, "mean_then": then, "mean_now": None}
    predicted = model.predict_many(raws)
    psi = population_stability(reference["predicted"]["shares"],
                               shares_in(reference["predicted"], predicted))  # fmt: skip
    return {"psi": round(psi, 4), "level": level(psi), "mean_then": then,
            "mean_now": round(float(predicted.mean()), 4)}  # fmt: skip


def _mean_predicted(rows: Sequence[Mapping[str, Any]]) -> float | None:
    total = sum(row["moments"] for row in rows)
    return (
        round(sum(row["predicted"] * row["moments"] for row in rows) / total, 4) if total else None
    )


def _unseen(model: PredictiveModel, raws: Sequence[Mapping[str, float]]) -> list[dict]:
    """Features common lately that the model never learned (a new industry, a new page):
    no PSI can show them, but the model reads them as absent."""
    if not raws:
        return []
    known, counts = set(model.columns), {}
    for raw in raws:
        for name, value in raw.items():
            if name not in known and value:
                counts[name] = counts.get(name, 0) + 1
    shares = {name: count / len(raws) for name, count in counts.items()}
    return [{"feature": name, "share": round(share, 4)}
            for name, share in sorted(shares.items(), key=lambda item: (-item[1], item[0]))
            if share >= UNSEEN_SHARE][:10]  # fmt: skip


def _calibration(
    model: PredictiveModel, reference: Mapping, history, now: datetime, recent_days: int
) -> dict[str, Any]:
    """Predicted against actual for the moments whose horizon has passed, by decile."""
    end = now - timedelta(days=model.horizon_days)
    start = end - timedelta(days=recent_days)
    found, _ = examples(history, model.horizon_days, PER_LEAD)
    known = [e for e in found if start < e.at <= end]
    then = calibration_error(reference["calibration"])
    figures = {"from": start.isoformat(), "to": end.isoformat(), "moments": len(known),
               "won": sum(e.won for e in known), "error_then": round(then, 4),
               "error_now": None, "growth": None, "deciles": []}  # fmt: skip
    if len(known) < MIN_CALIBRATION or not figures["won"]:
        return figures
    won = np.array([e.won for e in known])
    predicted = model.predict_many([e.raw for e in known])
    rows = deciles(won, predicted, predicted)
    now_error = calibration_error(rows)
    return figures | {"error_now": round(now_error, 4), "growth": round(now_error - then, 4),
                      "deciles": rows, "mean_predicted": round(float(predicted.mean()), 4),
                      "actual_rate": round(float(won.mean()), 4)}  # fmt: skip


# --- the verdict -----------------------------------------------------------------------------


def level(psi: float) -> str:
    return "retrain" if psi >= PSI_RETRAIN else "watch" if psi >= PSI_WATCH else "stable"


def verdict(report: Mapping[str, Any]) -> tuple[str, list[str]]:
    """`retrain`, `watch` or `stable`, and why, in words."""
    reasons: list[str] = []
    moments = report["recent"]["moments"]
    if not moments:
        reasons.append(f"no lead responded in the last {report['recent_days']} days: "
                       "there is no recent population to compare")  # fmt: skip
    worst = "stable"
    for name in ("retrain", "watch"):
        shifted = [row for row in report["features"]
                   if row["level"] == name and row["in_verdict"]]  # fmt: skip
        if shifted:
            worst = _worse(worst, name)
            reasons.append(_features_reason(shifted, name))
    predicted = report["predicted"]
    if predicted["level"] in ("retrain", "watch"):
        worst = _worse(worst, predicted["level"])
        reasons.append(f"the predicted probabilities have shifted (PSI {predicted['psi']:.2f}"
                       f"; mean {_pct(predicted['mean_then'])} then, "
                       f"{_pct(predicted['mean_now'])} now)")  # fmt: skip
    calibration = report["calibration"]
    worst = _worse(worst, _calibration_reason(calibration, reasons))
    if 0 < moments < MIN_MOMENTS:
        reasons.append(f"only {moments} recent moments: PSI is noisy under {MIN_MOMENTS}")
    if not moments:
        worst = _worse(worst, "watch")
    if worst == "stable":
        reasons.insert(0, f"no feature's PSI reaches {PSI_WATCH}; the predictions are "
                          "distributed as in training")  # fmt: skip
    return worst, reasons


def _features_reason(shifted: list[dict], name: str) -> str:
    named = ", ".join(f"{row['feature']} ({row['psi']:.2f})" for row in shifted[:NAMED])
    more = f" and {len(shifted) - NAMED} more" if len(shifted) > NAMED else ""
    limit = PSI_RETRAIN if name == "retrain" else PSI_WATCH
    return (
        f"{len(shifted)} feature{'s' * (len(shifted) != 1)} shifted (PSI ≥ {limit}): {named}{more}"
    )


def _calibration_reason(calibration: Mapping[str, Any], reasons: list[str]) -> str:
    if calibration["error_now"] is None:
        reasons.append(f"calibration not measured: {calibration['moments']} moments with a "
                       f"known answer ({calibration['won']} won), {MIN_CALIBRATION} and a win "
                       "needed")  # fmt: skip
        return "stable"
    then, now, growth = calibration["error_then"], calibration["error_now"], calibration["growth"]
    if growth >= CALIBRATION_GROWTH:
        reasons.append(f"calibration error grew from {then:.3f} to {now:.3f} "
                       f"(+{growth:.3f} ≥ {CALIBRATION_GROWTH})")  # fmt: skip
        return "retrain"
    reasons.append(f"calibration error {now:.3f} now, {then:.3f} in training")
    return "stable"


def _worse(a: str, b: str) -> str:
    order = ("stable", "watch", "retrain")
    return max(a, b, key=order.index)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


# --- printed ---------------------------------------------------------------------------------

COLOURS = {"stable": "green", "watch": "yellow", "retrain": "red"}


def print_drift(console: Console, report: Mapping[str, Any], limit: int = 10) -> None:
    """The report as a person reads it: verdict, most shifted features, calibration."""
    recent = report["recent"]
    colour = COLOURS[report["verdict"]]
    console.print(f"model [bold]{report['fingerprint']}[/] ({report['status']}, "
                  f"{report['kind']}, {report['horizon_days']}-day horizon)")  # fmt: skip
    console.print(f"recent: {recent['leads']:,} leads, {recent['moments']:,} moments in the "
                  f"{report['recent_days']} days to {report['now'][:10]}")  # fmt: skip
    console.print(f"verdict: [bold {colour}]{report['verdict']}[/]")
    for reason in report["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    if report["features"]:
        console.print(_feature_table(report, limit))
    if report["calibration"]["deciles"]:
        console.print(_calibration_table(report["calibration"]))
    if report["verdict"] == "retrain":
        console.print(_next_step(report))


def _feature_table(report: Mapping[str, Any], limit: int) -> Table:
    table = Table(title="Population stability, most shifted first", title_justify="left")
    table.add_column("feature")
    table.add_column("PSI", justify="right")
    table.add_column("")
    predicted = report["predicted"]
    table.add_row("[italic]predicted probability[/]", f"{predicted['psi']:.3f}",
                  _level_text(predicted["level"]))  # fmt: skip
    for row in report["features"][:limit]:
        note = "" if row["in_verdict"] else " [dim](sampling: not in the verdict)[/]"
        table.add_row(row["feature"], f"{row['psi']:.3f}", _level_text(row["level"]) + note)
    for row in report["unseen"]:
        table.add_row(
            row["feature"], "new", f"in {row['share']:.0%} of moments, unknown to the model"
        )
    return table


def _calibration_table(calibration: Mapping[str, Any]) -> Table:
    title = (f"Calibration, moments {calibration['from'][:10]} to {calibration['to'][:10]} "
             f"(error {calibration['error_now']:.3f}, {calibration['error_then']:.3f} in "
             "training)")  # fmt: skip
    table = Table(title=title, title_justify="left")
    for name in ("decile", "moments", "predicted", "actual"):
        table.add_column(name, justify="right")
    for row in calibration["deciles"]:
        table.add_row(str(row["decile"]), f"{row['moments']:,}", _pct(row["predicted"]),
                      _pct(row["actual"]))  # fmt: skip
    return table


def _level_text(name: str | None) -> str:
    return f"[{COLOURS[name]}]{name}[/]" if name else ""


def _next_step(report: Mapping[str, Any]) -> str:
    if report["retrain"] == "weekly":
        return (
            "the weekly retraining trains a candidate: compare it with `nurture models "
            "list` and activate it"
        )
    return "train a candidate with `nurture train`, then activate it once it is measured"
