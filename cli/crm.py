"""`nurture crm sync --now` and `nurture crm status`: the HubSpot connector (the work is
activities/crm.py, run by a worker; services/crm_sync.py starts it)."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

crm_app = typer.Typer(
    help="The CRM connector: HubSpot deals pulled as outcomes (docs/outcomes.md).",
    no_args_is_help=True,
)


@crm_app.command("sync")
def sync(
    now: bool = typer.Option(False, "--now", help="pull at once, not at the next scheduled run"),
    as_json: bool = typer.Option(False, "--json", help="the figures as JSON on stdout"),
    timeout: float = typer.Option(
        300, min=1, help="seconds to wait for the pull to end (it goes on after that)"
    ),
) -> None:
    """Pull the deals changed since the last pull, at once, and wait for it (a worker
    runs it). The worker schedules a pull every NURTURE_CRM_SYNC_MINUTES by itself;
    this is for "now", e.g. after connecting HubSpot.

    Examples:
      nurture crm sync --now
      nurture crm sync --now --json > pull.json

    Exit codes: 0 pulled; 1 the pull failed (HubSpot refused the token, Temporal
    unreachable) or did not end within --timeout (no worker running?); 2 bad usage (no
    --now, no HUBSPOT_ACCESS_TOKEN).
    """
    from temporalio.client import WorkflowFailureError

    from infra.settings import get_settings
    from services.crm_sync import sync_now
    from services.runtime import connect_temporal

    settings = get_settings()
    if not now:
        errors.print("[red]error[/red] say --now (the worker pulls on its schedule otherwise)")
        raise typer.Exit(2)
    if settings.hubspot_access_token is None:
        errors.print("[red]error[/red] HUBSPOT_ACCESS_TOKEN is not set: no CRM to pull from")
        raise typer.Exit(2)

    async def run():
        return await sync_now(await connect_temporal(settings), settings, timeout)

    try:
        progress = asyncio.run(run())
    except TimeoutError:
        errors.print(f"[red]error[/red] the pull did not end within {timeout:g} s: it goes on "
                     "if a worker runs it (is one running on this task queue?); `nurture crm "
                     "status` shows where it stands")  # fmt: skip
        raise typer.Exit(1) from None
    except WorkflowFailureError as exc:
        errors.print(f"[red]error[/red] the pull failed: {escape(str(exc.cause or exc))}")
        raise typer.Exit(1) from None
    except RuntimeError as exc:  # the client's "Failed client connect"
        errors.print(f"[red]error[/red] cannot reach Temporal at {settings.temporal_address}: "
                     f"{escape(str(exc))}")  # fmt: skip
        raise typer.Exit(1) from None
    if as_json:
        print(progress.model_dump_json(indent=2))
        return
    console.print(
        f"pulled {progress.deals} deal record(s) in {progress.pages} page(s): "
        f"{progress.accepted} event(s) stored, {progress.duplicates} already stored, "
        f"{progress.waiting} waiting for their lead, {progress.skipped} skipped (no contact); "
        f"cursor {progress.cursor or '-'}"
        + (" (more to pull: the next run goes on)" if progress.more else "")
    )


@crm_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="as JSON on stdout")) -> None:
    """Where the HubSpot pull stands: its cursor (the last modified time stored), the
    deal records read so far, its last run, its last good run and its last error.

    Examples:
      nurture crm status
      nurture crm status --json

    Exit codes: 0 shown; 1 the database cannot be read.
    """
    from infra.settings import get_settings
    from services.crm_sync import sync_status
    from services.runtime import open_database

    settings = get_settings()
    database = open_database(settings)
    state = sync_status(database.sessions)
    database.engine.dispose()
    state["configured"] = settings.hubspot_access_token is not None
    state["every_minutes"] = settings.crm_sync_minutes
    if as_json:
        print(json.dumps(state, indent=2))
        return
    for name, value in state.items():
        console.print(f"{name:>14}  {escape(str(value if value is not None else '-'))}")
