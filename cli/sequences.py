"""`nurture sequence pause|resume|paused`: hold a sequence's sends, and let them go again
(docs/sending.md#pause-and-resume). Exit codes: 0 done; 1 no such sequence, definitions
with errors or Temporal unreachable on resume; 2 bad usage."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from cli.common import fail_on_definition_errors, load
from services.json_output import dumps, iso

sequence_app = typer.Typer(
    help="A sequence's sends: pause them (held, never dropped) and resume them.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def _context():
    from infra.settings import get_settings
    from services.runtime import open_database

    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    return settings, definitions, open_database(settings).sessions


def _unknown(exc: LookupError) -> typer.Exit:
    errors.print(str(exc.args[0]), highlight=False, markup=False)
    return typer.Exit(1)


@sequence_app.command("pause")
def pause(
    sequence: str = typer.Argument(..., help="the sequence's id"),
    reason: str | None = typer.Option(None, help="why, for the audit log and the console"),
) -> None:
    """Hold every send of SEQUENCE from now on: a lead reaching a send waits there (the
    message deferred, not dropped); waits and timers go on. Pausing again changes nothing.

    Examples:
      nurture sequence pause trial_onboarding --reason "pricing page is wrong"
    """
    from services.audit import cli_actor
    from services.sequence_pause import UnknownSequence
    from services.sequence_pause import pause as pause_sequence

    _settings, definitions, sessions = _context()
    try:
        held, created = pause_sequence(sessions, definitions, sequence, cli_actor(), reason)
    except UnknownSequence as exc:
        raise _unknown(exc) from None
    if created:
        console.print(f"paused {sequence}: its sends are held until `nurture sequence resume "
                      f"{sequence}`")  # fmt: skip
    else:
        console.print(f"{sequence} was already paused since {held.paused_at:%Y-%m-%d %H:%M} "
                      f"UTC by {held.paused_by}; nothing changed")  # fmt: skip


@sequence_app.command("resume")
def resume(sequence: str = typer.Argument(..., help="the sequence's id")) -> None:
    """Let SEQUENCE's sends go again: every lead holding one is woken and sends it now, or
    at the next time quiet hours and caps allow. Nothing is sent twice. Safe to run again.

    Examples:
      nurture sequence resume trial_onboarding
    """
    from services.audit import cli_actor
    from services.runtime import connect_temporal
    from services.sequence_pause import UnknownSequence
    from services.sequence_pause import resume as resume_sequence

    settings, definitions, sessions = _context()

    async def run():
        client = await connect_temporal(settings)
        return await resume_sequence(client, sessions, definitions, sequence, cli_actor())

    try:
        done = asyncio.run(run())
    except UnknownSequence as exc:
        raise _unknown(exc) from None
    except RuntimeError as exc:  # Temporal unreachable: the pause is kept, nothing changed
        errors.print(f"cannot reach Temporal at {settings.temporal_address}: {exc}")
        raise typer.Exit(1) from None
    state = "resumed" if done.was_paused else "was not paused; woke what it held"
    console.print(f"{sequence} {state}: {done.woken} of {done.held_leads} held lead(s) woken")
    if done.not_running:
        console.print(f"  {len(done.not_running)} with no running workflow")
    for lead_id, problem in sorted(done.failed.items()):
        errors.print(f"  {lead_id}: {problem} (woken by its hourly recheck; or run again)")
    if done.failed:
        raise typer.Exit(1)


@sequence_app.command("paused")
def paused(as_json: bool = typer.Option(False, "--json", help="as JSON")) -> None:
    """The paused sequences: since when, by whom, why, and how many leads hold a send.

    Examples:
      nurture sequence paused
      nurture sequence paused --json
    """
    from services.sequence_pause import paused_sequences

    _settings, _definitions, sessions = _context()
    pauses = paused_sequences(sessions)
    if as_json:
        console.print_json(dumps([{"sequence": p.sequence_id, "paused_at": iso(p.paused_at),
                                   "paused_by": p.paused_by, "reason": p.reason,
                                   "held_leads": p.held_leads} for p in pauses]))  # fmt: skip
        return
    if not pauses:
        console.print("no sequence is paused")
        return
    table = Table("sequence", "paused at (UTC)", "by", "held leads", "reason")
    for p in pauses:
        table.add_row(p.sequence_id, f"{p.paused_at:%Y-%m-%d %H:%M}", p.paused_by,
                      str(p.held_leads), p.reason or "")  # fmt: skip
    console.print(table)
