"""`nurture backtest` on a terminal: a backtest `Report` as rich tables, per scoring model.

For each model: its leads, customers and base rate; how precise each stage was as the
model walked it (gates and hysteresis included); for MQL and SQL the current threshold
against the one that would have maximised the objective; and the lift by decile of
peak total. `--json` gives the same figures (and the whole threshold curve) as JSON.
With `--predictive`, `print_comparison` adds the rules, the predictive model and their
combination on the same test moments (scoring/predictive_backtest.py).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scoring.backtest import Confusion, ModelReport, Report, ThresholdPick
from scoring.predictive_backtest import Comparison, Contender

DASH = "–"


def print_report(console: Console, report: Report, source: str) -> None:
    """The whole report; `source` says where the history came from (a file, synthetic)."""
    base = report.customers / report.leads if report.leads else None
    console.print(
        f"[bold]Backtest[/bold] of {report.leads} leads from {escape(source)}: "
        f"{report.customers} customers (base rate {_pct(base)})",
        highlight=False,
    )
    console.print(
        "Each lead scored by its segment's model as of each response; responses after "
        "the outcome ignored. Best threshold: " + report.objective.describe() + ".",
        highlight=False,
        style="dim",
    )
    for model in report.models:
        console.print()
        print_model(console, model, report.objective.label)


def print_model(console: Console, model: ModelReport, objective: str) -> None:
    base = model.base_rate
    console.print(
        f"[bold]Model {escape(model.model)}[/bold]: {model.leads} leads, "
        f"{model.customers} customers, base rate [bold]{_pct(base)}[/bold]",
        highlight=False,
    )

    stages = Table(
        title="Stages as the model walked them",
        title_justify="left",
        caption="reached: entered at some moment; a jump to PQL or SQL passes MQL, "
        "and a later recycle does not undo it",
        caption_justify="left",
    )
    for column in ("stage", "rule", "reached", "customers"):
        stages.add_column(column, justify="left" if column in ("stage", "rule") else "right")
    for column in ("precision", "recall", "lift"):
        stages.add_column(column, justify="right")
    for stage in model.stages:
        counts = stage.counts
        stages.add_row(stage.stage.upper(), escape(stage.rule), str(counts.flagged),
                       str(counts.tp), *_figures(counts, base))  # fmt: skip
    console.print(stages)

    picks = Table(
        title=f"Thresholds on the total (stage conditions still apply); best = highest {objective}",
        title_justify="left",
    )
    picks.add_column("stage")
    for column in ("now at", "leads", "precision", "recall", "lift",
                   "best at", "leads", "precision", "recall", "lift",
                   objective if objective.startswith("F") else "objective"):  # fmt: skip
        picks.add_column(column, justify="right")
    for pick in model.picks:
        picks.add_row(pick.stage.upper(), _threshold(pick.current), *_pick_now(pick, base),
                      *_pick_best(pick, base))  # fmt: skip
    console.print(picks)

    deciles = Table(title="Lift by decile of peak total (1 = highest)", title_justify="left")
    for column in ("decile", "peak total", "leads", "customers", "rate", "lift",
                   "customers captured"):  # fmt: skip
        deciles.add_column(column, justify="right")
    for decile in model.deciles:
        deciles.add_row(str(decile.decile), f"{decile.low:.1f}–{decile.high:.1f}",
                        str(decile.leads), str(decile.customers), _pct(decile.rate),
                        _lift(decile.lift), _pct(decile.captured))  # fmt: skip
    console.print(deciles)
    for pick in model.picks:
        advice = _advice(pick)
        if advice:
            console.print(advice, highlight=False)


def _figures(counts: Confusion | None, base: float) -> tuple[str, str, str]:
    if counts is None:
        return DASH, DASH, DASH
    return _pct(counts.precision), _pct(counts.recall), _lift(counts.lift(base))


def _pick_now(pick: ThresholdPick, base: float) -> tuple[str, ...]:
    if pick.now is None:
        return (DASH,) * 4
    return (str(pick.now.flagged), *_figures(pick.now, base))


def _pick_best(pick: ThresholdPick, base: float) -> tuple[str, ...]:
    if pick.best is None or pick.best_counts is None:
        return ("none",) + (DASH,) * 5  # no threshold meets the objective's floors
    value = DASH if pick.value is None else f"{pick.value:.3f}"
    return (str(pick.best), str(pick.best_counts.flagged), *_figures(pick.best_counts, base),
            value)  # fmt: skip


def _advice(pick: ThresholdPick) -> str | None:
    """One line when the best threshold is not the current one."""
    name = pick.stage.upper()
    if pick.best is None:
        return f"{name}: no threshold meets the objective's floors."
    if pick.current is not None and abs(pick.best - pick.current) < 0.5:
        return f"{name}: the current threshold ({pick.current:g}) is already the best."
    now = pick.now
    change = f"from {pick.current:g} to {pick.best}" if pick.current is not None else (
        f"to {pick.best} (it has none now)"
    )  # fmt: skip
    best = pick.best_counts
    text = f"{name}: setting `at` {change}"
    if now is not None and best is not None:
        text += (
            f" would have given precision {_pct(now.precision)} → {_pct(best.precision)}, "
            f"recall {_pct(now.recall)} → {_pct(best.recall)}"
        )
    return text + "."


def _threshold(value: float | None) -> str:
    return DASH if value is None else f"{value:g}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.1%}"


def _lift(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}×"


# --- --predictive -------------------------------------------------------------------------------


def print_comparison(console: Console, comparison: Comparison, model_source: str) -> None:
    """The rules, the model and the combination on the same test moments, each with the
    threshold it needs for the chosen precision."""
    c = comparison
    console.print()
    console.print(
        f"[bold]Rules, predictive model and both[/bold] on {c.moments:,} test moments "
        f"({c.tested_from:%Y-%m-%d} to {c.tested_to:%Y-%m-%d}, the newest leads): {c.won:,} "
        f"won within {c.horizon_days} days (base rate {_pct(c.base_rate)})",
        highlight=False,
    )
    console.print(f"Model: {escape(model_source)}", highlight=False)
    if c.refused:
        console.print("[yellow]training would refuse it:[/yellow] " + escape("; ".join(c.refused)),
                      highlight=False)  # fmt: skip
    table = Table(
        title=f"Ranking, and the threshold each needs for precision ≥ {c.precision:.0%}",
        title_justify="left",
        caption="threshold: the lowest at which the moments flagged reach the precision "
        "(so the most recall there); none: no threshold reaches it",
        caption_justify="left",
    )
    table.add_column("scored by")
    for column in ("ROC AUC", "PR AUC", "threshold", "flagged", "precision", "recall"):
        table.add_column(column, justify="right")
    for contender in c.contenders:
        table.add_row(_contender_name(contender), f"{contender.roc_auc:.3f}",
                      f"{contender.pr_auc:.3f}", *_at_precision(contender))  # fmt: skip
    for stage in c.stages:
        table.add_row(f"rules: reached {stage.stage.upper()}", DASH, DASH, "the stage",
                      f"{stage.flagged:,}", _pct(stage.precision), _pct(stage.recall))  # fmt: skip
    console.print(table)
    weights = c.weights
    console.print(
        f"combination: logistic stacking fitted on {c.fitted_on:,} older moments, log-odds = "
        f"{weights['intercept']:+.3f} {weights['model_log_odds']:+.3f} × model log-odds "
        f"{weights['rule_total']:+.4f} × rule total",
        highlight=False,
        style="dim",
    )
    for note in c.notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False)


def _contender_name(contender: Contender) -> str:
    return {"rules": "rules (total 0-100)", "model": "predictive model",
            "combination": "combination"}.get(contender.name, contender.name)  # fmt: skip


def _at_precision(contender: Contender) -> tuple[str, ...]:
    found = contender.pick
    if found is None:
        return ("none",) + (DASH,) * 3
    threshold = (f"{found.threshold:.1f}" if contender.name == "rules"
                 else f"{found.threshold:.3f}")  # fmt: skip
    return (threshold, f"{found.flagged:,}", _pct(found.precision), _pct(found.recall))
