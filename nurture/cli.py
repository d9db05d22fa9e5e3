"""The `nurture` command.

Exit codes: 0 success; 1 the command ran and failed (e.g. definitions with
errors, a demo without a handoff); 2 bad usage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import typer
from rich.console import Console

from models.yaml_source import DefinitionError
from nurture.settings import get_settings

app = typer.Typer(
    help="Nurture: lead-nurture sequences on durable Temporal workflows.\n\n"
    "Exit codes: 0 success; 1 the command ran and failed (invalid definitions, a refused "
    "answer, ...); 2 bad usage. Colours only on a terminal (NO_COLOR turns them off); "
    "--json on the commands that report, for scripts.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes
errors = Console(stderr=True)


def _logging(verbose: bool = False) -> None:
    from nurture.runtime import configure_logging

    configure_logging(verbose)


@app.command()
def validate(
    directory: Path = typer.Argument(
        None, help="definitions directory [default: NURTURE_DEFINITIONS or .]"
    ),
    as_json: bool = typer.Option(False, "--json", help="the problems as JSON"),
) -> None:
    """Check sequences, segments, scoring, sales reps and templates; list every problem
    (file:line:column field: message), errors and warnings, all at once.

    Examples:
      nurture validate .
      nurture validate my-definitions --json

    Exit codes: 0 valid (warnings allowed); 1 errors.
    """
    import dataclasses

    from nurture.json_output import dumps
    from nurture.validate import validate as run_validation

    root = directory or get_settings().definitions_dir
    problems = run_validation(root)
    error_count = sum(p.severity == "error" for p in problems)
    if as_json:
        console.print_json(dumps({
            "directory": str(root), "errors": error_count,
            "warnings": len(problems) - error_count,
            "problems": [dataclasses.asdict(p) for p in problems],
        }))  # fmt: skip
        raise typer.Exit(1 if error_count else 0)
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}] {problem}", highlight=False)
    if error_count:
        console.print(f"[red]{error_count} error(s)[/red] in {root}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: definitions in {root} are valid"
                  + (f" ({len(problems)} warning(s))" if problems else ""))  # fmt: skip


@app.command()
def worker(verbose: bool = typer.Option(True, help="log activity")) -> None:
    """Run a worker against TEMPORAL_ADDRESS (same as `python worker.py`).

    Example: TEMPORAL_ADDRESS=temporal.internal:7233 nurture worker
    """
    import os

    import worker as worker_module

    if not verbose:
        os.environ["NURTURE_LOG_LEVEL"] = "WARNING"
    worker_module.main()  # the same process as `python worker.py`: stops, exits alike


@app.command()
def api() -> None:
    """Run the HTTP API alone (uvicorn) against TEMPORAL_ADDRESS.

    On SIGTERM (or Ctrl-C) it stops accepting connections, lets requests in flight finish
    (up to NURTURE_SHUTDOWN_TIMEOUT seconds; a second signal stops waiting) and exits 0,
    like the worker.

    Example: NURTURE_API_PORT=8080 nurture api
    """
    _logging(True)
    settings = get_settings()
    started = _fail_on_definition_errors(lambda: asyncio.run(_serve_api(settings)))
    if not started:
        # Stopped while connecting to Temporal: the SDK's core runtime keeps that connect
        # attempt on a thread of its own, which would hold the process until it times out.
        logging.shutdown()
        os._exit(0)


async def _serve_api(settings) -> bool:
    """Start the API, then serve until SIGTERM or SIGINT. A signal while starting (the
    database, Temporal) stops the start; either way this returns, and the process exits 0."""
    from api.app import create_app
    from nurture.intake import Intake
    from nurture.runtime import connect_temporal, load_and_prepare
    from nurture.stack import api_server

    signals = _ApiSignals(settings.shutdown_timeout)
    try:
        definitions, database = load_and_prepare(settings)
        client = await connect_temporal(settings)
    except asyncio.CancelledError:
        signals.log.info("API stopped before it started")
        return False
    intake = Intake(definitions, database.sessions, client, settings.task_queue)
    signals.server = api_server(create_app(intake, settings), settings)
    try:
        await signals.server.serve()
    finally:
        database.engine.dispose()
    signals.log.info("API stopped; exiting")
    return True


class _ApiSignals:
    """SIGTERM and SIGINT in `nurture api`, handled here rather than by uvicorn (which
    raises the signal again once stopped, so the process died of it: exit -15, not 0).
    While starting: cancel the start. Then: stop uvicorn gracefully (no new connections,
    requests in flight finish). A second signal: stop waiting for them."""

    def __init__(self, shutdown_timeout: float) -> None:
        import logging

        self.log = logging.getLogger("nurture.api")
        self.starting, self.server = asyncio.current_task(), None
        self.shutdown_timeout = shutdown_timeout
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, self.received, signum)

    def received(self, signum: signal.Signals) -> None:
        if self.server is None:
            self.log.info("%s received while starting: stopping", signum.name)
            self.starting.cancel()  # lands at the start's next await (Temporal's connect)
        elif not self.server.should_exit:
            self.log.info("%s received: stopping; requests in flight get up to %gs",
                          signum.name, self.shutdown_timeout)  # fmt: skip
            self.server.should_exit = True
        else:
            self.log.info("%s again: no longer waiting for requests in flight", signum.name)
            self.server.force_exit = True


@app.command()
def dev() -> None:
    """Start the Temporal dev server, a worker and the API together; Ctrl-C stops them all.

    The dev server keeps its state in NURTURE_STATE_DIR/temporal.db, so leads in
    flight resume after a restart.

    Example: nurture dev
    """
    from nurture.devserver import TemporalDevServer
    from nurture.stack import running_stack

    _logging(True)
    settings = get_settings()
    settings.ensure_state_dir()  # 0700 before the dev server writes temporal.db in it
    server = TemporalDevServer(
        port=int(settings.temporal_address.rsplit(":", 1)[1]),
        ui_port=settings.temporal_ui_port,
        db_file=settings.state_dir / "temporal.db",
        log_file=settings.state_dir / "temporal.log",
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running_stack(settings) as stack:
            console.print(f"Temporal:  {settings.temporal_address}  (web UI {server.ui_url})")
            console.print(f"API:       {stack.api_url}  (docs {stack.api_url}/docs)")
            console.print(f"API token: in {settings.state_dir / 'api-token'} or NURTURE_API_TOKEN")
            console.print(f"Outbox:    {settings.outbox_dir}/")
            console.print("Press Ctrl-C to stop.")
            await stop.wait()
            console.print("stopping...")

    with server:
        _fail_on_definition_errors(lambda: asyncio.run(run()))


@app.command()
def demo(
    timeout: float = typer.Option(170, help="give up after this many seconds"),
) -> None:
    """Run a self-contained demo: 24 leads nurtured, scored and handed off.

    Starts its own Temporal dev server, worker and API on free ports with a fresh
    database under NURTURE_STATE_DIR/demo; exits 0 only if a handoff happened.

    Example: nurture demo
    """
    from nurture.demo import run_demo

    _logging(False)
    ok = _fail_on_definition_errors(lambda: run_demo(console, timeout))
    raise typer.Exit(0 if ok else 1)


@app.command()
def consent(
    lead: str = typer.Argument(..., help="the lead's email address or ID"),
    channel: str = typer.Option(None, help="email or sms"),
    opt_out: bool = typer.Option(None, "--opt-out/--opt-in", help="change consent"),
    reason: str = typer.Option(None, help="why (kept in the consent history)"),
) -> None:
    """Show a lead's consent per channel and its history, or change it by hand.

    Examples:
      nurture consent ada@example.com
      nurture consent ada@example.com --channel sms --opt-out --reason "asked by phone"
    """
    from sqlalchemy import select

    from models.consent import ConsentEffect, set_consent
    from models.db import ConsentChange, Lead
    from nurture.runtime import open_database

    if (channel is None) != (opt_out is None):
        errors.print("give both --channel and --opt-out/--opt-in to change consent")
        raise typer.Exit(2)
    if channel not in (None, "email", "sms"):
        errors.print(f"--channel must be email or sms, not {channel!r}")
        raise typer.Exit(2)
    database = open_database(get_settings())
    with database.sessions.begin() as session:
        row = Lead.find(session, lead)
        if row is None:
            errors.print(f"no lead {lead!r} (give an email address or a lead ID)")
            raise typer.Exit(1)
        if channel is not None:
            effect = ConsentEffect(channel, not opt_out, "manual", reason)
            changed = set_consent(session, row, effect)
            verb = "opted out of" if opt_out else "opted in to"
            console.print(f"{row.email} {verb} {channel}" + ("" if changed else " (no change)"))
        for name in ("email", "sms"):
            allowed = getattr(row, f"{name}_consent")
            why = getattr(row, f"{name}_opt_out_reason")
            console.print(f"{name:<6} {'allowed' if allowed else 'opted out: ' + (why or '')}")
        history = session.scalars(
            select(ConsentChange).where(ConsentChange.lead_id == row.id)
            .order_by(ConsentChange.id)
        )  # fmt: skip
        for change in history:
            direction = "in " if change.opted_in else "out"
            console.print(
                f"  {change.created_at:%Y-%m-%d %H:%M} {change.channel:<5} {direction} "
                f"{change.reason}" + (f" ({change.detail})" if change.detail else ""),
                highlight=False,
            )


@app.command()
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
    from nurture.runtime import open_database
    from scoring.explain import explain, print_explanation

    settings = get_settings()
    definitions = _fail_on_definition_errors(lambda: _load(settings))
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


@app.command()
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
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    """Replay lead history through the scoring models: for MQL and SQL, the precision,
    recall and lift against who became a customer, lift by score decile, and the threshold
    that would have maximised the objective.

    Each lead is scored by its segment's model as of each of its responses, never with
    what it did after its outcome. A bad history file stops with exit code 2 and names
    the file, line and field. Make a history with `python -m scoring.synthetic`, or export
    yours (README: Backtesting).

    Examples:
      nurture backtest --synthetic 5000
      nurture backtest --leads history.jsonl --objective f2
      nurture backtest --leads history.jsonl --objective precision --min-recall 0.4 --json
    """
    import json

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from models.jinja import ConditionError
    from scoring.backtest import Objective, evaluate, report
    from scoring.backtest_view import print_report
    from scoring.history import HistoryError, load_history, parse_leads
    from scoring.synthetic import generate

    if (leads is None) == (synthetic is None):
        errors.print("give --leads FILE (your history) or --synthetic N (made-up leads)")
        raise typer.Exit(2)
    try:
        goal = Objective.named(objective, beta, min_recall, min_precision)
    except ValueError as exc:
        errors.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    settings = get_settings()
    definitions = _fail_on_definition_errors(lambda: _load(settings))
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

    try:
        if errors.is_terminal:  # a bar on stderr: stdout stays the report
            columns = ("scoring", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=errors, transient=True) as bar:
                task = bar.add_task("scoring", total=len(history))
                results = evaluate(definitions, history, lambda n: bar.advance(task, n))
        else:
            results = evaluate(definitions, history)
    except ConditionError as exc:  # a segment rule that fails on a lead of the history
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    outcome = report(results, definitions.scoring, goal)
    if as_json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print_report(console, outcome, source)


def _load(settings):
    from models.loader import load_definitions

    return load_definitions(settings.definitions_dir)


MESSAGE_STATUSES = (
    "claimed", "sending", "sent", "skipped", "deferred", "retrying", "failed", "unknown"
)  # fmt: skip


@app.command()
def rescore(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="score and report only: write nothing, signal no workflow"
    ),
    batch_size: int = typer.Option(2000, min=1, help="leads per batch (one transaction each)"),
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
    from nurture.runtime import open_database
    from scoring.rescore import rescore_all

    _logging(False)
    settings = get_settings()
    definitions = _fail_on_definition_errors(lambda: _load(settings))
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
                dry_run=dry_run, on_sql=on_sql,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip

    started = time.perf_counter()
    try:
        if dry_run:
            report, handed = run(), None
        else:
            report, handed = asyncio.run(_rescore_with_handoffs(settings, run))
    finally:
        database.engine.dispose()
    seconds = time.perf_counter() - started
    if as_json:
        data = report.to_dict() | {"handed": handed.to_dict() if handed else None,
                                   "total_seconds": round(seconds, 3)}  # fmt: skip
        print(json.dumps(data, indent=2))
    else:
        _print_rescore(report, handed, seconds)


_SIGNALS_IN_FLIGHT = 50  # `rescore` signals sent at once
_LISTED = 20  # lead ids named in the summary per kind of problem


class _Handed:
    """What became of the `rescore` signals to SQL-crossing leads' workflows."""

    def __init__(self) -> None:
        self.signalled = 0
        self.not_running: list[str] = []  # no open workflow: not handed off, not written
        self.failed: dict[str, str] = {}  # lead id -> error

    def to_dict(self) -> dict:
        return {"signalled": self.signalled, "not_running": self.not_running,
                "failed": self.failed}  # fmt: skip


async def _rescore_with_handoffs(settings, run):
    """Run `run(on_sql)` in a thread while this loop signals each batch's SQL-crossers
    (committed by then) to their workflows, at most _SIGNALS_IN_FLIGHT at once."""
    from temporalio.service import RPCError, RPCStatusCode

    from models.workflow_io import RescoreRequest, lead_workflow_id
    from nurture.runtime import connect_temporal
    from workflows.lead import LeadWorkflow

    try:
        client = await connect_temporal(settings)
    except Exception as exc:  # before anything is written: nothing to undo
        errors.print(f"cannot reach Temporal at {settings.temporal_address}: {exc}")
        errors.print("nothing was rescored (`nurture rescore --dry-run` needs no Temporal)")
        raise typer.Exit(1) from None
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Semaphore(_SIGNALS_IN_FLIGHT)
    handed = _Handed()
    sent = []

    async def signal(lead_id: str, request: RescoreRequest) -> None:
        async with in_flight:
            handle = client.get_workflow_handle(lead_workflow_id(lead_id))
            try:
                await handle.signal(LeadWorkflow.rescore, request)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    handed.not_running.append(lead_id)
                else:
                    handed.failed[lead_id] = f"{exc.status.name}: {exc.message}"
            except Exception as exc:
                handed.failed[lead_id] = f"{type(exc).__name__}: {exc}"
            else:
                handed.signalled += 1

    async def signal_all(lead_ids: list[str], event_id: str, fingerprint: str) -> None:
        request = RescoreRequest(event_id=event_id, model_fingerprint=fingerprint)
        await asyncio.gather(*(signal(lead_id, request) for lead_id in lead_ids))

    def on_sql(lead_ids: list[str], event_id: str, fingerprint: str) -> None:
        # Called in the scoring thread after each batch's commit: signal while it goes on.
        sent.append(asyncio.run_coroutine_threadsafe(signal_all(lead_ids, event_id, fingerprint),
                                                     loop))  # fmt: skip

    try:
        report = await asyncio.to_thread(run, on_sql)
    finally:  # batches already committed still get their handoffs
        await asyncio.gather(*(asyncio.wrap_future(future) for future in sent))
    return report, handed


def _print_rescore(report, handed: _Handed | None, seconds: float) -> None:
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


@app.command()
def messages(
    status: str = typer.Option(None, help=f"only this status: {', '.join(MESSAGE_STATUSES)}"),
    lead: str = typer.Option(None, help="only this lead (email or ID)"),
    limit: int = typer.Option(50, help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """List sends. `--status unknown` lists sends interrupted mid-call: they may or may not
    have reached the lead, are never repeated, and need a look at the provider's log.

    Examples:
      nurture messages --status unknown
      nurture messages --lead ada@example.com --json
    """
    from rich.table import Table
    from sqlalchemy import select

    from models.db import Lead, Message
    from nurture.json_output import dumps
    from nurture.runtime import open_database

    if status is not None and status not in MESSAGE_STATUSES:
        errors.print(f"--status must be one of {', '.join(MESSAGE_STATUSES)}, not {status!r}")
        raise typer.Exit(2)
    database = open_database(get_settings())
    with database.sessions() as session:
        query = select(Message).order_by(Message.created_at.desc()).limit(limit)
        if status:
            query = query.where(Message.status == status)
        if lead:
            row = Lead.find(session, lead)
            if row is None:
                errors.print(f"no lead {lead!r}")
                raise typer.Exit(1)
            query = query.where(Message.lead_id == row.id)
        rows = session.scalars(query).all()
    fields = ("created_at", "lead_id", "enrollment_id", "step_id", "channel", "status",
              "status_reason", "provider", "provider_message_id", "not_before")  # fmt: skip
    if as_json:
        for message in rows:
            print(dumps({f: getattr(message, f) for f in fields}, indent=None))
        return
    table = Table("created", "lead", "step", "channel", "status", "reason / provider id")
    for m in rows:
        detail = m.status_reason or m.provider_message_id or ""
        if m.status == "deferred" and m.not_before:
            detail = f"until {m.not_before:%Y-%m-%d %H:%M} UTC: {detail}"
        table.add_row(f"{m.created_at:%Y-%m-%d %H:%M:%S}", m.lead_id[:12], m.step_id or "",
                      m.channel, m.status, detail)  # fmt: skip
    console.print(table)
    console.print(f"{len(rows)} message(s)")


def _fail_on_definition_errors(action):
    try:
        return action()
    except DefinitionError as exc:
        for problem in exc.problems:
            errors.print(f"[red]error[/red] {problem}", highlight=False)
        errors.print("fix the definitions above (see `nurture validate`)")
        raise typer.Exit(1) from None


from nurture.cli_handoff import handoff_app  # noqa: E402  (a command group of its own)

app.add_typer(handoff_app, name="handoff")

from nurture.cli_reports import leads, report, status  # noqa: E402

app.command()(status)
app.command()(leads)
app.command()(report)

from nurture.cli_import import import_leads  # noqa: E402

app.command("import")(import_leads)

from nurture.cli_simulate import preview, simulate  # noqa: E402

app.command()(preview)
app.command()(simulate)

from nurture.cli_config import config  # noqa: E402

app.command()(config)

from nurture.cli_migrate import migrate_leads  # noqa: E402

app.command("migrate-leads")(migrate_leads)

from nurture.cli_db import db_app  # noqa: E402  (a command group of its own)

app.add_typer(db_app, name="db")

from nurture.cli_doctor import doctor  # noqa: E402

app.command()(doctor)


def main() -> None:
    """The `nurture` script: a bad setting, or a database schema behind the code, is a
    message saying what to do, not a traceback."""
    from nurture.migrate import SchemaError
    from nurture.settings import SettingsError

    try:
        app()
    except (SettingsError, SchemaError) as exc:
        errors.print(str(exc), highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
