"""`nurture migrate-leads`: move leads in flight to the current version of a sequence.

A lead keeps the sequence version it was enrolled on (its workflow holds the whole
sequence). This command is the explicit exception: each running enrollment of SEQUENCE on
an older version is moved by the workflow's `migrate` update, which refuses (and changes
nothing) where the lead's current step has no counterpart of the same type in the new
version, unless `--map OLD=NEW` names one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.progress import Progress

errors = Console(stderr=True, soft_wrap=True)


def migrate_leads(
    sequence: str = typer.Argument(..., help="the sequence to move leads on"),
    step_map: list[str] = typer.Option(
        None, "--map", help="OLD=NEW: leads waiting in step OLD go on from NEW (repeat)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="list who would move; change nothing"),
    as_json: bool = typer.Option(False, "--json", help="the outcome per lead as JSON"),
) -> None:
    """Move the leads running an older version of SEQUENCE to the version in the
    definitions now. Each lead goes on from the step it waits in (same step id), with its
    timer, visits and sent messages kept; a step the new version lacks, or one of another
    type, is refused for that lead unless --map names its counterpart. Leads on the
    current version, and finished enrollments, are left alone.

    Examples:
      nurture migrate-leads saas_trial --dry-run
      nurture migrate-leads saas_trial --map day3_tips=day3_case_study
      nurture migrate-leads enterprise_content --json > migration.json

    Exit codes: 0 every lead moved (or none to move); 1 some were refused or failed
    (listed; run again after fixing the map); 2 bad usage (unknown sequence, bad --map).
    """
    from infra.settings import get_settings
    from services.definitions import load_definitions
    from services.migrate_leads import migrate_in_flight

    settings = get_settings()
    definitions = load_definitions(settings.definitions_dir)
    target = definitions.sequences.get(sequence)
    if target is None:
        errors.print(f"no sequence {sequence!r} (known: {', '.join(definitions.sequences)})")
        raise typer.Exit(2)
    mapping = {}
    for item in step_map or ():
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            errors.print(f"--map {item!r}: write OLD_STEP=NEW_STEP")
            raise typer.Exit(2)
        if new.strip() not in {step.id for step in target.steps}:
            errors.print(f"--map {item!r}: {sequence} v{target.version} has no step {new!r}")
            raise typer.Exit(2)
        mapping[old.strip()] = new.strip()

    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"migrating {target.id}", total=None)
        moved = migrate_in_flight(
            settings,
            target,
            mapping,
            dry_run,
            lambda done, total: bar.update(task, completed=done, total=total),
        )
        outcomes = asyncio.run(moved)
    if not dry_run:
        _audit(settings, target, outcomes)
    if as_json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2))
    else:
        _print(outcomes, target, dry_run)
    if any(o.status in ("refused", "failed") for o in outcomes):
        raise typer.Exit(1)


def _audit(settings, target, outcomes: list) -> None:
    from services.audit import cli_actor, record_now
    from services.runtime import open_database

    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    database = open_database(settings)
    try:
        moved = f"{target.id} v{target.version}"
        record_now(database.sessions, cli_actor(), "migrate-leads", moved, {"outcomes": counts})
    finally:
        database.engine.dispose()


def _print(outcomes: list, target, dry_run: bool) -> None:
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not outcomes:
        console.print(f"no running enrollment of {target.id} is older than v{target.version}")
        return
    table = Table("lead", "enrollment", "from", "outcome", "detail")
    for o in outcomes:
        table.add_row(o.email, o.enrollment_id, f"v{o.from_version}", o.status, o.detail)
    console.print(table)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    prefix = "dry run: " if dry_run else ""
    console.print(f"{prefix}{target.id} -> v{target.version}: {summary}", highlight=False)
