"""The `nurture` command.

Exit codes: 0 success; 1 the command ran and failed (e.g. definitions with
errors, a demo without a handoff); 2 bad usage.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer
from rich.console import Console

from models.yaml_source import DefinitionError
from nurture.settings import get_settings

app = typer.Typer(
    help="Nurture: lead-nurture sequences on durable Temporal workflows.",
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
) -> None:
    """Check sequences, segments, scoring, sales reps and templates; list every problem.

    Example: nurture validate .
    """
    from nurture.validate import validate as run_validation

    root = directory or get_settings().definitions_dir
    problems = run_validation(root)
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}] {problem}", highlight=False)
    error_count = sum(p.severity == "error" for p in problems)
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
    import worker as worker_module

    _logging(verbose)
    _fail_on_definition_errors(lambda: asyncio.run(worker_module.run_worker()))


@app.command()
def api() -> None:
    """Run the HTTP API alone (uvicorn) against TEMPORAL_ADDRESS.

    Example: NURTURE_API_PORT=8080 nurture api
    """
    import uvicorn

    from api.app import create_app
    from nurture.intake import Intake
    from nurture.runtime import connect_temporal, load_and_prepare

    _logging(True)
    settings = get_settings()

    async def serve() -> None:
        definitions, database = load_and_prepare(settings)
        client = await connect_temporal(settings)
        intake = Intake(definitions, database.sessions, client, settings.task_queue)
        app_ = create_app(intake, settings)
        config = uvicorn.Config(app_, host=settings.api_host, port=settings.api_port)
        await uvicorn.Server(config).serve()

    _fail_on_definition_errors(lambda: asyncio.run(serve()))


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


def _load(settings):
    from models.loader import load_definitions

    return load_definitions(settings.definitions_dir)


MESSAGE_STATUSES = (
    "claimed", "sending", "sent", "skipped", "deferred", "retrying", "failed", "unknown"
)  # fmt: skip


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
    import json

    from rich.table import Table
    from sqlalchemy import select

    from models.db import Lead, Message
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
            print(json.dumps({f: getattr(message, f) for f in fields}, default=str))
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


if __name__ == "__main__":
    app()
