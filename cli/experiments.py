"""`nurture experiments [NAME]` and `nurture experiments plan`: the experiments' results,
and how many leads an experiment needs (docs/experiments.md).

`nurture experiments NAME` is `nurture experiments show NAME`: whatever follows
`experiments` that is not one of its commands is the name to show, so an experiment
named `plan` or `show` is shown with `nurture experiments show plan`. Exit codes: 0
shown; 1 no such experiment or definitions with errors; 2 bad usage.
"""

from __future__ import annotations

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from typer.core import TyperGroup

from cli.common import fail_on_definition_errors, load
from cli.reports import _console
from services.json_output import dumps

errors = Console(stderr=True, soft_wrap=True)
METRIC_LABELS = {"open": "opens", "click": "clicks", "mql": "MQL", "sql": "SQL",
                 "accepted": "accepted", "opportunity": "opportunities", "won": "won",
                 "revenue": "revenue"}  # fmt: skip


class _NameOrCommand(TyperGroup):
    """`experiments` with no command, or with a name, runs `show`: `nurture experiments`,
    `nurture experiments NAME` and `nurture experiments plan` all work."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["show", *args]
        return super().parse_args(ctx, args)


experiments_app = typer.Typer(
    cls=_NameOrCommand,
    help="Experiments: each one's results (`nurture experiments [NAME]`, short for `show "
    "[NAME]`), and how many leads one needs (`nurture experiments plan`).",
)


def _share(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"must lie strictly between 0 and 1, not {value:g}")
    return value


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be above 0, not {value:g}")
    return value


# --- nurture experiments [NAME] ------------------------------------------------------------------


@experiments_app.command("show")
def show(
    name: str = typer.Argument(None, help="the experiment to show (default: a list of all)"),
    as_json: bool = typer.Option(False, "--json", help="the results as JSON"),
    alpha: float = typer.Option(
        0.05, callback=_share, help="family-wise error rate; each arm is compared at "
        "alpha / (arms - 1)",
    ),
) -> None:  # fmt: skip
    """The experiments (split steps and segment holdouts) and their results.

    With no NAME, one line per experiment: kind, status (running; ended: a winner is set
    in the definitions; removed: no longer in them), when its first lead was assigned,
    its primary metric, its leads and the verdict. With NAME, per arm: the leads, the
    messages sent to them after their assignment, and how many opened, clicked, became
    MQL, SQL, accepted, an opportunity, won, with the won revenue; for each arm the
    difference to control with its always-valid interval (valid however often the
    results are looked at); the sample-ratio check; the verdict on the primary metric.

    Examples:
      nurture experiments
      nurture experiments welcome_subject
      nurture experiments holdout:enterprise --json
      nurture experiments show plan    # an experiment named `plan`

    Exit codes: 0 shown (also when there are none); 1 no such experiment or definitions
    with errors; 2 bad usage.
    """
    from infra.settings import get_settings
    from services.experiment_results import experiment_results
    from services.runtime import open_database

    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    database = open_database(settings)
    try:
        results = experiment_results(database.sessions, definitions, name, alpha)
    except LookupError as exc:
        errors.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from None
    finally:
        database.engine.dispose()
    if as_json:
        data = [result.to_dict() for result in results]
        print(dumps(data[0] if name else data))
    elif name:
        _print_experiment(_console(), results[0])
    else:
        _print_list(_console(), results)


def _print_list(console: Console, results) -> None:
    if not results:
        console.print("No experiments yet. One starts when its first lead reaches a split "
                      "step (`type: split` in a sequence) or a segment with a `holdout:` "
                      "percentage; see docs/experiments.md.", highlight=False)  # fmt: skip
        return
    table = Table(Column("experiment", no_wrap=True), "kind", "status", "started",
                  "metric", Column("leads", justify="right"), "verdict")  # fmt: skip
    for result in results:
        table.add_row(escape(result.name), result.kind, _status(result),
                      result.started_at.isoformat()[:16].replace("T", " "), result.metric,
                      f"{result.leads:,}", _verdict(result))  # fmt: skip
    console.print(table)


def _status(result) -> str:
    if result.status == "ended":
        return f"ended (winner {escape(result.winner or '')})"
    return {"running": "running", "removed": "[dim]removed[/dim]"}.get(result.status,
                                                                        result.status)  # fmt: skip


def _verdict(result) -> str:
    style = "yellow" if result.srm.flagged else ("bold" if result.conclusive else "")
    text = escape(result.verdict)
    return f"[{style}]{text}[/{style}]" if style else text


def _print_experiment(console: Console, result) -> None:
    where = f"split at step {result.step_id} of sequence {result.sequence_id}"
    if result.kind == "holdout":
        where = f"holdout of segment {result.segment} (sequence {result.sequence_id})"
    console.print(f"[bold]{escape(result.name)}[/bold]: {escape(where)}; primary metric "
                  f"{result.metric}; control {escape(result.control)}; first lead "
                  f"{result.started_at.isoformat()[:16].replace('T', ' ')} UTC; "
                  f"{_status(result)}", highlight=False)  # fmt: skip
    console.print(_arm_table(result))
    level = f"{(1 - result.compared_at) * 100:.1f}".rstrip("0").rstrip(".")
    treatments = len(result.arms) - 1
    shared = f", alpha {result.alpha:g} shared over {treatments} arms" if treatments > 1 else ""
    console.print(f"Differences are arm - control, in points for rates; intervals are {level}% "
                  f"always-valid{shared} ([green]green[/green]/[red]red[/red]: excludes 0).",
                  highlight=False)  # fmt: skip
    _print_currencies(console, result)
    srm_style = "yellow" if result.srm.flagged else "dim"
    console.print(f"[{srm_style}]{escape(result.srm.message)}[/{srm_style}]", highlight=False)
    console.print(f"Verdict: {_verdict(result)}", highlight=False)
    console.print(_needed(result), highlight=False)


def _arm_table(result) -> Table:
    """Rows are the figures, columns the arms (control first), each other arm followed by
    its difference to control."""
    from services.experiment_results import RATE_METRICS

    arms = sorted(result.arms, key=lambda arm: not arm.control)
    columns = [Column("", no_wrap=True)]
    for arm in arms:
        label = f"{arm.name} (control)" if arm.control else arm.name
        columns.append(Column(escape(label + (", holdout" if arm.holdout else "")),
                              justify="right"))  # fmt: skip
        if not arm.control:
            columns.append(Column(f"{escape(arm.name)} - control", justify="right"))
    table = Table(*columns, title_justify="left")

    def row(label: str, cells) -> None:
        table.add_row(label, *(cell for arm in arms for cell in cells(arm)))

    row("leads", lambda arm: [f"{arm.leads:,}"] + ([] if arm.control else [""]))
    row("sends", lambda arm: [f"{arm.sends:,}"] + ([] if arm.control else [""]))
    for metric in (*RATE_METRICS, "revenue"):
        label = METRIC_LABELS[metric] + (" (primary)" if metric == result.metric else "")
        row(f"[bold]{label}[/bold]" if metric == result.metric else label,
            lambda arm, metric=metric: _cells(arm, metric))  # fmt: skip
    return table


def _cells(arm, metric: str) -> list[str]:
    rate = arm.rate(metric)
    if metric == "revenue":
        shown = f"{arm.revenue:,.2f}" + (f" ({rate:,.2f}/lead)" if rate is not None else "")
    else:
        count = arm.converted[metric]
        shown = f"{count:,}" + (f" ({rate:.1%})" if rate is not None else "")
    if arm.control:
        return [shown]
    return [shown, _difference(arm.comparisons[metric])]


def _difference(comparison) -> str:
    from services.experiment_results import shown_difference

    shown = shown_difference(comparison)
    if not shown:
        return "-"
    said = shown[0] + (f" ({shown[1]} to {shown[2]})" if len(shown) == 3 else "")
    if not comparison.significant:
        return said
    return f"[green]{said}[/green]" if comparison.difference > 0 else f"[red]{said}[/red]"


def _print_currencies(console: Console, result) -> None:
    if result.currency is None:
        return
    others: dict[str, float] = {}
    for arm in result.arms:
        for currency, amount in arm.revenue_by_currency.items():
            if currency != result.currency:
                others[currency] = others.get(currency, 0.0) + amount
    also = "; also won, not compared: " + ", ".join(
        f"{currency} {amount:,.2f}" for currency, amount in sorted(others.items())
    ) if others else ""  # fmt: skip
    console.print(f"Revenue in {escape(result.currency)}{escape(also)}.", highlight=False)


def _needed(result) -> str:
    figure = "revenue per lead (from the won rate)" if result.metric == "revenue" else result.metric
    if result.leads_needed is None:
        return (f"Leads needed: not computable yet (control's {figure} rate is 0 or too "
                "close to 100%).")  # fmt: skip
    from services.experiment_results import MINIMUM_LIFT

    return (f"Leads needed to find a {MINIMUM_LIFT:.0%} lift on {figure} "
            f"({result.minimum_effect * 100:+.2f} points over control) with 80% power: about "
            f"{result.leads_needed:,} in all ({result.leads:,} so far).")  # fmt: skip


# --- nurture experiments plan --------------------------------------------------------------------


@experiments_app.command("plan")
def plan_command(
    baseline: float = typer.Option(..., help="control's rate of the metric, 0.10 for 10%"),
    effect: float = typer.Option(
        ..., help="the smallest change worth finding, in the same units: 0.02 for +2 points"
    ),
    arms: int = typer.Option(2, min=2, help="arms, control included"),
    alpha: float = typer.Option(
        0.05, callback=_share, help="family-wise error rate, shared over the arms as the "
        "results do: alpha / (arms - 1) each",
    ),
    power: float = typer.Option(0.8, callback=_share, help="the chance to find the effect"),
    leads_per_day: float = typer.Option(
        None, "--leads-per-day", callback=_positive, help="leads reaching the split a day"
    ),
    as_json: bool = typer.Option(False, "--json", help="the plan as JSON"),
) -> None:  # fmt: skip
    """How many leads (and days) an experiment needs to find a given effect.

    For the sequential test the results use, which may be read at any time: per arm
    (equal weights), in all, and the days at --leads-per-day; beside the fixed-horizon
    figure, valid only if read once at that count. --effect is absolute: from a 10%
    baseline, --effect 0.02 plans for 12%.

    Examples:
      nurture experiments plan --baseline 0.10 --effect 0.02
      nurture experiments plan --baseline 0.03 --effect 0.01 --arms 3 --leads-per-day 400
      nurture experiments plan --baseline 0.10 --effect -0.02 --json

    Exit codes: 0 planned; 2 bad usage (a baseline or an effect that is not a rate).
    """
    from experiments.statistics import plan

    _check_rates(baseline, effect)
    per_comparison = alpha / (arms - 1)
    found = plan(baseline, effect, arms, per_comparison, power, leads_per_day=leads_per_day)
    if as_json:
        print(dumps(found.to_dict() | {"family_alpha": alpha}))
        return
    _print_plan(_console(), found, alpha)


def _check_rates(baseline: float, effect: float) -> None:
    """Bad usage (exit 2): the plan is of rates, so both ends must be rates."""
    problem = None
    if not 0 < baseline < 1:
        problem = (f"--baseline is a rate strictly between 0 and 1 (0.10 for 10%), "
                   f"not {baseline:g}")  # fmt: skip
    elif effect == 0:
        problem = "--effect must not be 0: the smallest change worth finding, e.g. 0.02"
    elif not 0 < baseline + effect < 1:
        problem = (f"--baseline {baseline:g} + --effect {effect:g} = {baseline + effect:g} is "
                   "not a rate strictly between 0 and 1: --effect is absolute (0.02 for +2 "
                   "points), not relative")  # fmt: skip
    if problem:
        errors.print(problem, highlight=False, markup=False)
        raise typer.Exit(2)


def _print_plan(console: Console, found, alpha: float) -> None:
    target = found.baseline_rate + found.minimum_effect
    arms = len(found.leads_per_arm)
    shared = f" (alpha {alpha:g} shared over {arms - 1} arms)" if arms > 2 else ""
    console.print(
        f"To find {found.baseline_rate:.1%} -> {target:.1%} "
        f"({found.minimum_effect * 100:+.1f} points) with {found.power:.0%} power, "
        f"each arm against control at {found.alpha:.3g}{shared}:",
        highlight=False,
    )
    console.print(f"  leads per arm: {found.leads_per_arm[0]:,}; in all {found.leads_total:,}"
                  + (f"; {found.days:,} days at {found.leads_per_day:,g} leads a day"
                     if found.days is not None else ""), highlight=False)  # fmt: skip
    console.print(f"  read once at a fixed count instead: {found.fixed_leads_per_arm[0]:,} per "
                  f"arm; the sequential test needs {found.inflation:.2f} x that to be read at "
                  "any time without more false positives", highlight=False)  # fmt: skip
