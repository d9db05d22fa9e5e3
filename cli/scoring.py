"""Scoring commands: `score` (one lead's card), `backtest` and `rescore`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from cli.common import console, errors, fail_on_definition_errors, load, setup_logging
from infra.settings import get_settings


def score(
    lead: str = typer.Argument(..., help="the lead's email address or ID"),
    as_json: bool = typer.Option(False, "--json", help="the card as JSON"),
    history: int = typer.Option(10, help="how many stored score changes to show"),
) -> None:
    """Show a lead's score card now: fit, engagement, grade, every rule's points after
    decay and caps, which stage thresholds and gate criteria hold, and its score history.

    Examples:
      nurture score ada@example.com
      nurture score ada@example.com --json
    """
    import json

    from models.db import Lead, utcnow
    from scoring.explain import explain, print_explanation
    from services.runtime import open_database

    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    database = open_database(settings)
    with database.sessions() as session:
        row = Lead.find(session, lead)
        if row is None:
            errors.print(f"no lead {lead!r} (give an email address or a lead ID)")
            raise typer.Exit(1)
        data = explain(session, definitions, row, utcnow(), history)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print_explanation(console, data)


def backtest(
    leads: Path = typer.Option(
        None,
        "--leads",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        help="lead history as JSON Lines: profile, responses, outcome (see README)",
    ),
    synthetic: int = typer.Option(
        None, "--synthetic", metavar="N", min=1, help="score N synthetic leads instead of a file"
    ),
    seed: int = typer.Option(1, help="the synthetic leads' seed: same seed, same leads"),
    stored: bool = typer.Option(
        False, "--stored", help="the leads in the database, customers by their won opportunities"
    ),
    objective: str = typer.Option(
        "f1", help="what the best threshold maximises: f1, f2, fbeta, precision or recall"
    ),
    beta: float = typer.Option(None, help="β of --objective fbeta (below 1 favours precision)"),
    min_recall: float = typer.Option(
        None, help="only thresholds with at least this recall, 0-1 (precision: 0.5 unless given)"
    ),
    min_precision: float = typer.Option(
        None, help="only thresholds with at least this precision, 0-1 (recall: 0.5 unless given)"
    ),
    predictive: bool = typer.Option(
        False, "--predictive", help="also compare the rules, the predictive model and both"
    ),
    model: str = typer.Option(
        None,
        "--model",
        metavar="FP",
        help="the stored predictive model to compare "
        "(implies --predictive; default: the active one, else one trained on the history)",
    ),  # fmt: skip
    precision: float = typer.Option(
        0.5,
        "--precision",
        min=0.01,
        max=1.0,
        help="--predictive: the precision each must reach; the threshold it needs is shown",
    ),  # fmt: skip
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    """Replay lead history through the scoring models: for MQL and SQL, the precision,
    recall and lift against who became a customer, lift by score decile, and the threshold
    that would have maximised the objective.

    With --predictive (or --model FP), the rules, the predictive model and their
    combination are also compared on the same moments of the newest leads: ROC AUC, PR
    AUC, and the threshold each needs for --precision with the recall it gets. The model
    is the one given, else the active one, else one trained on the history's older leads
    (docs/predictive.md, Backtest).

    Each lead is scored by its segment's model as of each of its responses, never with
    what it did after its outcome. A bad history file stops with exit code 2 and names
    the file, line and field. Make a history with `python -m scoring.synthetic`, or export
    yours (README: Backtesting).

    Examples:
      nurture backtest --synthetic 5000
      nurture backtest --leads history.jsonl --objective f2
      nurture backtest --stored
      nurture backtest --leads history.jsonl --objective precision --min-recall 0.4 --json
      nurture backtest --stored --predictive --precision 0.6
      nurture backtest --leads history.jsonl --model pm-0d3cb94dd42c7323
    """
    import json

    from scoring.backtest import report
    from scoring.backtest_view import print_comparison, print_report

    if sum((leads is not None, synthetic is not None, stored)) != 1:
        errors.print("give one of --leads FILE (your history), --stored (the database's) or "
                     "--synthetic N (made-up leads)")  # fmt: skip
        raise typer.Exit(2)
    goal = _backtest_objective(objective, beta, min_recall, min_precision)
    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    history, source = (_stored_history(settings) if stored
                       else _backtest_history(leads, synthetic, seed))  # fmt: skip
    results = _evaluate_history(definitions, history, _rules_model(settings, definitions, model))
    outcome = report(results, definitions.scoring, goal)
    comparison = None
    if predictive or model is not None:
        comparison = _compare_predictive(settings, definitions, history, model, precision)
    if as_json:
        data = outcome.to_dict()
        if comparison is not None:
            found, source_of_model = comparison
            data["predictive"] = found.to_dict() | {"model_source": source_of_model}
        print(json.dumps(data, indent=2))
    else:
        print_report(console, outcome, source)
        if comparison is not None:
            print_comparison(console, *comparison)


def _compare_predictive(settings, definitions, history: list, fingerprint: str | None,
                        precision: float):  # fmt: skip
    """The comparison of `backtest --predictive` and how its model was found; a history
    too small to compare on exits 2."""
    from rich.markup import escape

    from models.jinja import ConditionError
    from scoring.predictive import TrainingError
    from scoring.predictive_backtest import compare

    model, source = _backtest_model(settings, fingerprint)
    if model is None:
        errors.print(f"{source}: training one on the history's older leads", highlight=False)

    def say(message: str) -> None:
        errors.print(f"  {message}", style="dim", highlight=False)

    try:
        found = compare(history, definitions, model, precision=precision, progress=say)
    except TrainingError as exc:
        errors.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    except ConditionError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if model is None:
        source = f"{found.fingerprint} ({found.kind}), trained here on the older leads: {source}"
    return found, source


def _backtest_model(settings, fingerprint: str | None):
    """(the predictive model to compare, where it came from): --model FP from the database
    (exit 2 if there is none), else the active model, else (None, why there is none).
    Without --model, a database that does not exist yet is not created for this."""
    from models.db import PredictiveModelRecord
    from scoring.model_store import active_fingerprint
    from services.runtime import open_database

    default_file = settings.state_dir / "nurture.db"
    if fingerprint is None and settings.database_url is None and not default_file.exists():
        return None, "no database, so no active predictive model"
    try:
        database = open_database(settings)
    except Exception as exc:  # without --model the comparison can still train its own
        if fingerprint is not None:
            errors.print(f"cannot open the database: {exc}", highlight=False, markup=False)
            raise typer.Exit(1) from None
        return None, f"the database cannot be read ({type(exc).__name__})"
    try:
        with database.sessions() as session:
            wanted = fingerprint or active_fingerprint(session)
            record = session.get(PredictiveModelRecord, wanted) if wanted else None
            if record is None and fingerprint is None:
                return None, "no predictive model is active"
            return _loaded(record, fingerprint)
    finally:
        database.engine.dispose()


def _loaded(record, fingerprint: str | None):
    """The stored model and how it is named; one missing or tampered with exits."""
    from scoring.model_store import load

    if record is None:
        errors.print(f"no predictive model {fingerprint} in the database (`nurture models` "
                     "lists them)", highlight=False, markup=False)  # fmt: skip
        raise typer.Exit(2)
    try:
        found = load(record)
    except ValueError as exc:
        errors.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from None
    how = "the stored model" if fingerprint else "the active model"
    return found, f"{how} {found.fingerprint} ({found.kind}, {record.status})"


def _backtest_objective(
    objective: str, beta: float | None, min_recall: float | None, min_precision: float | None
):
    """The --objective and its limits as an Objective; a bad combination exits 2."""
    from scoring.backtest import Objective

    try:
        return Objective.named(objective, beta, min_recall, min_precision)
    except ValueError as exc:
        errors.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None


def _backtest_history(leads: Path | None, synthetic: int | None, seed: int) -> tuple[list, str]:
    """The history to replay (the --leads file or N synthetic leads) and how to name it
    in the report; a history that cannot be read, or holds no lead, exits 2."""
    from rich.markup import escape

    from scoring.history import HistoryError, load_history, parse_leads
    from scoring.synthetic import generate

    try:
        if leads is not None:
            history, source = load_history(leads), str(leads)
        else:
            history = list(parse_leads(generate(synthetic, seed), "<synthetic>"))
            source = f"a synthetic history (seed {seed})"
    except HistoryError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        errors.print("the history was not scored: fix that line (format: README, Backtesting)")
        raise typer.Exit(2) from None
    except OSError as exc:
        errors.print(f"cannot read {leads}: {exc.strerror or exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    if not history:
        errors.print(f"{source} holds no leads", highlight=False, markup=False)
        raise typer.Exit(2)
    return history, source


def _stored_history(settings) -> tuple[list, str]:
    from scoring.stored_history import stored_history
    from services.runtime import open_database

    database = open_database(settings)
    try:
        history = stored_history(database.sessions)
    finally:
        database.engine.dispose()
    if not history:
        errors.print("the database holds no leads", highlight=False, markup=False)
        raise typer.Exit(2)
    return history, "the database's leads (customers: won opportunities)"


def _rules_model(settings, definitions, fingerprint: str | None):
    """The predictive model stage rules naming `predicted` read in the backtest (--model,
    else the active one); None when no rule names it. Without one they never hold, as
    live: said on stderr."""
    from scoring.backtest import names_predicted

    if not any(names_predicted(model) for model in definitions.scoring.models.values()):
        return None
    model, why = _backtest_model(settings, fingerprint)
    if model is None:
        errors.print(f"stage rules name `predicted` but {why}: they never hold in this "
                     "backtest (as live with no model active)", highlight=False)  # fmt: skip
    return model


def _evaluate_history(definitions, history: list, predictive=None):
    """Score the history, with a progress bar on stderr on a terminal (stdout stays the
    report); a segment rule that fails on a lead of the history exits 1. `predictive`:
    the model stage rules naming `predicted` read."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from models.jinja import ConditionError
    from scoring.backtest import evaluate

    try:
        if errors.is_terminal:
            columns = ("scoring", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=errors, transient=True) as bar:
                task = bar.add_task("scoring", total=len(history))
                return evaluate(definitions, history, lambda n: bar.advance(task, n), predictive)
        return evaluate(definitions, history, predictive=predictive)
    except ConditionError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def rescore(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="score and report only: write nothing, signal no workflow"
    ),
    batch_size: int = typer.Option(2000, min=1, help="leads per batch (one transaction each)"),
    workers: int = typer.Option(
        1, min=1, help="processes scoring disjoint ranges of leads (PostgreSQL only)"
    ),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    """Score every lead again with the models now in scoring.yaml (after a model change).

    Leads are scored in batches, with a progress bar on stderr. Those whose score (to
    0.1) or stage moved are written (cause `rescore`); leads past SQL belong to sales
    and are left alone. A lead the new model makes an SQL is not written here: its
    workflow gets a `rescore` signal, scores it and hands it to sales itself. Prints
    how many leads changed and each stage transition.

    Restart the workers on the new scoring.yaml first: a worker refuses a rescore whose
    model fingerprint differs from its own ("restart the workers") and retries it until
    a worker with that model takes it. A dry run needs no Temporal.

    Examples:
      nurture rescore --dry-run
      nurture rescore --batch-size 5000 --json
      nurture rescore --workers 2      # PostgreSQL: two processes, a core each
    """
    import json
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from models.db import utcnow
    from services.audit import cli_actor, record_now
    from services.rescore import rescore_all
    from services.runtime import open_database

    setup_logging(False)
    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    database = open_database(settings)
    bar = Progress(
        TextColumn("rescoring"), BarColumn(), MofNCompleteColumn(), TextColumn("leads"),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=errors,
    )  # fmt: skip
    task = bar.add_task("rescoring", total=None)

    def run(on_sql=None):
        with bar:
            return rescore_all(
                database.sessions, definitions, utcnow(), batch_size=batch_size,
                dry_run=dry_run, on_sql=on_sql, workers=workers,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip

    started = time.perf_counter()
    try:
        if dry_run:
            report, handed = run(), None
        else:
            report, handed = asyncio.run(_rescore_with_handoffs(settings, run))
            done = {"report": report.to_dict(), "handed": handed.to_dict() if handed else None}
            record_now(database.sessions, cli_actor(), "rescore", None, done)
    finally:
        database.engine.dispose()
    seconds = time.perf_counter() - started
    if as_json:
        data = report.to_dict() | {"handed": handed.to_dict() if handed else None,
                                   "total_seconds": round(seconds, 3)}  # fmt: skip
        print(json.dumps(data, indent=2))
    else:
        _print_rescore(report, handed, seconds)


_LISTED = 20  # lead ids named in the summary per kind of problem


async def _rescore_with_handoffs(settings, run):
    """Connect to Temporal, then rescore with each batch's SQL-crossers signalled."""
    from services.rescore import signal_sql_crossers
    from services.runtime import connect_temporal

    try:
        client = await connect_temporal(settings)
    except Exception as exc:  # before anything is written: nothing to undo
        errors.print(f"cannot reach Temporal at {settings.temporal_address}: {exc}")
        errors.print("nothing was rescored (`nurture rescore --dry-run` needs no Temporal)")
        raise typer.Exit(1) from None
    return await signal_sql_crossers(client, run)


def _print_rescore(report, handed, seconds: float) -> None:
    dry = report.dry_run
    if dry:
        console.print(f"dry run at {report.at:%Y-%m-%d %H:%M:%S} UTC: nothing written, "
                      "no workflow signalled")  # fmt: skip
    else:
        console.print(f"rescore {report.event_id} at {report.at:%Y-%m-%d %H:%M:%S} UTC")
    if handed is None:
        sql_detail = "would be handed to their workflows"
    else:
        sql_detail = f"signalled {handed.signalled}"
        if handed.not_running:
            sql_detail += f", {len(handed.not_running)} with no running workflow"
        if handed.failed:
            sql_detail += f", {len(handed.failed)} failed"
    for name, count, detail in [
        ("leads", report.total, ""),
        ("scored", report.scored, ""),
        ("changed", report.changed,
         "score (to 0.1) or stage moved: " + ("would be written" if dry else "written")),
        ("unchanged", report.unchanged, ""),
        ("handed to workflows for SQL", report.to_sql, sql_detail),
        ("sales-owned, skipped", report.sales_owned, "past SQL: left to sales"),
        ("concurrent", report.concurrent, "scored by their workflow meanwhile: left to it"),
        ("problems", sum(report.problems.values()), "rule evaluations that failed"),
    ]:  # fmt: skip
        console.print(f"  {name:<28}{count:>9,}  {detail}".rstrip(), highlight=False)
    if report.transitions:
        console.print("stage transitions")
        for transition, count in report.transitions.most_common():
            console.print(f"  {transition:<28}{count:>9,}", highlight=False)
    else:
        console.print("no stage transitions")
    for problem, count in report.problems.most_common():
        console.print(f"[yellow]problem[/yellow] ×{count}: {problem}", highlight=False)
    if handed is not None:
        for lead_id in handed.not_running[:_LISTED]:
            console.print(f"[yellow]not handed off[/yellow] {lead_id}: no running workflow "
                          "(left as it was)", highlight=False)  # fmt: skip
        for lead_id, error in list(handed.failed.items())[:_LISTED]:
            console.print(f"[red]signal failed[/red] {lead_id}: {error}", highlight=False)
        hidden = max(len(handed.not_running) - _LISTED, 0) + max(len(handed.failed) - _LISTED, 0)
        if hidden:
            console.print(f"... and {hidden} more (--json lists them all)")
        if handed.signalled:
            console.print("the workers must run these models to take the handoffs: "
                          "restart them on the new scoring.yaml if not done yet")  # fmt: skip
    models = ", ".join(f"{name} ({fp})" for name, fp in sorted(report.models.items()))
    console.print(f"models: {models or 'none'}", highlight=False)
    console.print(f"time: {report.seconds:.1f} s scoring ({report.leads_per_second:,.0f} "
                  f"leads/s), {seconds:.1f} s in all")  # fmt: skip
