"""`nurture outcomes import FILE.csv`: opportunities from a CRM export
(the work is services/outcome_import.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
_LISTED = 20  # rejected rows shown; --json has all

outcomes_app = typer.Typer(help="Opportunities and revenue from the CRM (docs/outcomes.md).",
                           no_args_is_help=True)  # fmt: skip


@outcomes_app.command("import")
def import_outcomes(
    file: Path = typer.Argument(
        ...,
        metavar="FILE.csv",
        exists=True,
        dir_okay=False,
        readable=True,
        help="a CRM export: a header line, then one opportunity a line",
    ),  # fmt: skip
    currency: str = typer.Option(
        None, help="the currency of amounts when the file has no currency column (e.g. USD)"
    ),  # fmt: skip
    encoding: str = typer.Option("utf-8-sig", help="the file's encoding (a UTF-8 BOM is fine)"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON on stdout"),
) -> None:
    """Import opportunities from a CRM export (a Salesforce Opportunity report, a HubSpot
    Deals export, or any CSV with the same columns): each row becomes one event, won or
    lost when its stage says it closed, at its last-modified time. Importing the same
    file again stores nothing new.

    Examples:
      nurture outcomes import opportunities.csv
      nurture outcomes import hubspot-deals.csv --currency EUR --json > report.json

    Exit codes: 0 imported (rejected rows are listed); 1 every row rejected, or a
    database error; 2 bad usage (an unreadable file, no opportunity ID, lead or date
    column).
    """
    from infra.settings import get_settings
    from services.importer import UsageError, open_csv
    from services.outcome_import import import_outcomes as run_import
    from services.runtime import open_database

    try:
        source = open_csv(file, encoding)
        database = open_database(get_settings())
        report = run_import(database.sessions, source, currency=currency)
    except UsageError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    database.engine.dispose()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report)
    if report.read and len({r.line for r in report.rejected}) == report.read:
        raise typer.Exit(1)


def _print(report) -> None:
    stored = report.stored
    console.print(f"{report.read} row(s) read: {stored.accepted} stored, {stored.duplicates} "
                  f"already stored, {stored.waiting} waiting for their lead, "
                  f"{len({r.line for r in report.rejected})} rejected")  # fmt: skip
    for rejected in report.rejected[:_LISTED]:
        where = f" {rejected.field}:" if rejected.field else ""
        console.print(f"  line {rejected.line}:{escape(where)} {escape(rejected.reason)}",
                      highlight=False)  # fmt: skip
    if len(report.rejected) > _LISTED:
        console.print(f"  ... and {len(report.rejected) - _LISTED} more (--json lists all)")
