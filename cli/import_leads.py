"""`nurture import FILE.csv`: load leads from a CSV file (the work is services/importer.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from cli.common import fail_on_definition_errors, load, setup_logging

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
_LISTED = 20  # rejected rows, duplicates and failures shown; --json and the file have all

# The longer help texts of `nurture import`'s options, kept here so that the command's
# signature shows each option's name, default and checks at a glance.
_HELP = {
    "file": "the leads: a header line naming the columns, then one lead per line",
    "map": "fill FIELD from column HEADER (repeatable); FIELD is a lead field (email, "
    "first_name, last_name, phone, title, company, company_size, industry, country, "
    "timezone, source, sequence), a consent column (email_consent, email_consent_source, "
    "email_consent_at, email_consent_basis, the same for sms, or consent as JSON) or "
    "attributes.KEY",
    "enroll": "enroll each lead in its segment's sequence (signal-with-start of its workflow); "
    "a lead whose email consent waits for its confirmation (double opt-in) is sent the "
    "confirmation email when it is enrolled",
    "dry_run": "validate only: no database, no Temporal; only the rejects file is written",
    "strict": "any rejected row refuses the whole file: nothing written, exit 1 (with --dry-run: "
    "exit 1)",
    "rejects": "where rejected rows go (default: FILE.rejects.csv next to FILE; written only "
    "if a row is rejected)",
}


def import_leads(
    file: Path = typer.Argument(
        ..., metavar="FILE.csv", exists=True, dir_okay=False, readable=True, help=_HELP["file"]
    ),
    maps: list[str] = typer.Option([], "--map", metavar="HEADER=FIELD", help=_HELP["map"]),
    ignore: list[str] = typer.Option(
        [], "--ignore", metavar="HEADER", help="leave this column out (repeatable)"
    ),
    enroll: bool = typer.Option(True, "--enroll/--no-enroll", help=_HELP["enroll"]),
    dry_run: bool = typer.Option(False, "--dry-run", help=_HELP["dry_run"]),
    strict: bool = typer.Option(False, "--strict", help=_HELP["strict"]),
    rejects: Path = typer.Option(
        None, "--rejects", metavar="PATH", dir_okay=False, help=_HELP["rejects"]
    ),
    sequence: str = typer.Option(
        None, "--sequence", help="enroll every lead in this sequence, not its segment's"
    ),
    delimiter: str = typer.Option(
        None, "--delimiter", help="',' ';' or 'tab' (default: sniffed from the header line)"
    ),
    encoding: str = typer.Option("utf-8-sig", help="the file's encoding (a UTF-8 BOM is fine)"),
    batch_size: int = typer.Option(500, min=1, help="rows per database transaction"),
    concurrency: int = typer.Option(50, min=1, max=1000, help="enrollments in flight at once"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON on stdout"),
) -> None:
    """Import leads from a CSV file: map its columns, validate every row, upsert the
    leads by email, give new ones their segment and enroll them.

    Columns map by header name, ignoring case, spaces and punctuation, with common
    synonyms ("E-mail", "Given name", "Company name", "Employees", "Job title", "Time
    zone", "Mobile", "Country code"...); other columns are kept in the lead's attributes
    (the report says which). Each row is checked as `POST /leads` checks a lead (email,
    phone by its country, IANA time zone, whole-number company size); rejected rows are
    listed with their line in the file (the header is line 1), field and reason, and
    written to the rejects file with the original columns. A later row with the same
    email updates the earlier one; blank cells leave what a lead already has.

    Consent per channel: `email_consent` (given, withdrawn or pending),
    `email_consent_source`, `email_consent_at` and `email_consent_basis` (consent,
    contract, legitimate_interest...), the same for `sms_consent` (given or withdrawn, on
    the basis consent only), or a `consent` column holding the API's object as JSON. A new
    lead without them starts as delivery.yaml's `consent.defaults` say for its country
    (docs/consent.md).

    A progress bar (rows read, imported, enrolled) goes to stderr on a terminal.

    Examples:
      nurture import leads.csv
      nurture import leads.csv --dry-run
      nurture import export.csv --map "Work Email=email" --ignore Notes --no-enroll
      nurture import leads.csv --strict --json > report.json

    Exit codes: 0 imported, even with rejected rows (listed, and in the rejects file);
    1 failed: a row rejected with --strict (nothing written), every row rejected, a lead
    not enrolled (Temporal unreachable: run the import again, it is idempotent), a
    database error, definitions with errors; 2 bad usage: an unreadable file, no
    header or no email column, a --map or --ignore naming no column.
    """
    source, plan = _open_source(file, encoding, delimiter, maps, ignore)
    rejects_path = rejects or _default_rejects(file)
    settings, definitions = _settings_and_definitions(sequence)
    options = {"sequence": sequence, "batch_size": batch_size, "concurrency": concurrency}

    if strict and not dry_run:  # the whole file checked first: all of it, or nothing
        checked = _run(settings, definitions, source, plan, options, dry_run=True, enroll=False)
        if checked.rejected:
            _finish(checked, source, rejects_path, as_json, refused=True)
    report = _run(settings, definitions, source, plan, options, dry_run=dry_run, enroll=enroll)
    _finish(report, source, rejects_path, as_json, refused=strict and bool(report.rejected))


def _open_source(
    file: Path, encoding: str, delimiter: str | None, maps: list[str], ignore: list[str]
):
    """The CSV file and the plan of its columns (--map, --ignore and the headers); bad
    usage (exit 2) before anything is loaded."""
    from services.importer import UsageError, open_csv, parse_maps, plan_columns

    separators = {None: None, ",": ",", ";": ";", "tab": "\t", "\\t": "\t", "\t": "\t"}
    if delimiter not in separators:
        _usage(f"--delimiter must be ',', ';' or 'tab', not {delimiter!r}")
    try:
        source = open_csv(file, encoding, separators[delimiter])
        plan = plan_columns(source.headers, parse_maps(maps), ignore)
    except UsageError as exc:
        _usage(str(exc))
    return source, plan


def _settings_and_definitions(sequence: str | None):
    """The settings and the definitions (exit 1 if they have errors); a --sequence they
    do not define is bad usage (exit 2)."""
    from infra.settings import get_settings

    setup_logging(False)
    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    if sequence is not None and sequence not in definitions.sequences:
        _usage(f"--sequence: no sequence {sequence!r} (known: {', '.join(definitions.sequences)})")
    return settings, definitions


def _default_rejects(file: Path) -> Path:
    from services.importer import default_rejects_path

    return default_rejects_path(file)


def _usage(message: str):
    errors.print(f"[red]error[/red] {escape(message)}", highlight=False)
    errors.print("see `nurture import --help`", highlight=False)
    raise typer.Exit(2)


def _run(settings, definitions, source, plan, options, *, dry_run: bool, enroll: bool):
    """The import, with a progress bar on a terminal; exits 1 if it cannot start."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from sqlalchemy.exc import SQLAlchemyError

    from services.importer import LeadImporter
    from services.intake import Intake
    from services.runtime import connect_temporal, open_database

    try:
        database = None if dry_run else open_database(settings)
    except SQLAlchemyError as exc:
        errors.print(f"[red]error[/red] cannot open the database: "
                     f"{escape(str(exc).splitlines()[0])}")  # fmt: skip
        raise typer.Exit(1) from None
    total = source.count()
    bar = Progress(
        TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=errors, transient=True, disable=not errors.is_terminal,
    )  # fmt: skip
    tasks = {"read": bar.add_task("read", total=total)}
    tasks["imported"] = bar.add_task("checked" if dry_run else "imported", total=total)
    if enroll and not dry_run:
        tasks["enrolled"] = bar.add_task("enrolled", total=total)

    def progress(kind: str, count: int) -> None:
        bar.advance(tasks[kind], count)

    async def run():
        client = None
        if enroll and not dry_run:
            try:
                client = await connect_temporal(settings)
            except Exception as exc:  # before anything is written
                errors.print(f"[red]error[/red] cannot reach Temporal at "
                             f"{settings.temporal_address}: {escape(str(exc))}")  # fmt: skip
                errors.print("nothing was imported (--no-enroll imports without enrolling)")
                raise typer.Exit(1) from None
        intake = Intake(definitions, database.sessions if database else None, client,
                        settings.task_queue)  # fmt: skip
        importer = LeadImporter(source, plan, intake, enroll=enroll, dry_run=dry_run,
                                progress=progress, **options)  # fmt: skip
        with bar:
            return await importer.run()

    try:
        return asyncio.run(run())
    except SQLAlchemyError as exc:
        errors.print(f"[red]database error[/red] {escape(str(exc).splitlines()[0])}")
        errors.print("the batches before it are imported; run the import again to finish")
        raise typer.Exit(1) from None
    finally:
        if database is not None:
            database.engine.dispose()


def _finish(report, source, rejects_path: Path, as_json: bool, refused: bool = False):
    """Write the rejects file, print the report, exit with the import's code."""
    from services.importer import write_rejects

    if report.rejected:
        try:
            write_rejects(rejects_path, source, report.rejected)
            report.rejects_file = str(rejects_path)
        except OSError as exc:
            errors.print(f"[red]error[/red] cannot write {rejects_path}: {exc.strerror or exc}")
    failed = (
        refused
        or bool(report.enroll_failed)
        or report.stopped is not None
        or (bool(report.rejected) and report.imported == 0)
        or (bool(report.rejected) and report.rejects_file is None)
    )
    if as_json:
        print(json.dumps(report.to_dict() | {"refused": refused, "ok": not failed}, indent=2))
    else:
        _print(report, refused)
    raise typer.Exit(1 if failed else 0)


def _print(report, refused: bool) -> None:
    say = console.print
    dry = report.dry_run
    if refused:
        head = f"[red]refused[/red] {escape(report.file)}: {len(report.rejected)} row(s) rejected"
        say(head + " and --strict: nothing imported", highlight=False)
    elif dry:
        say(f"dry run of {escape(report.file)}: nothing written", highlight=False)
    else:
        say(f"imported {escape(report.file)} in {report.seconds:.1f} s "
            f"({report.rate:,.0f} rows/s)", highlight=False)  # fmt: skip
    rows = [("rows read", report.read, "")]
    if dry or refused:
        rows.append(("valid leads", report.imported, "would be created or updated"))
    else:
        rows += [("created", report.created, ""),
                 ("updated", report.updated, "leads already in the database")]  # fmt: skip
    rows.append(("rejected", len(report.rejected),
                 f"-> {report.rejects_file}" if report.rejects_file else ""))  # fmt: skip
    if report.duplicates:
        rows.append(("repeated emails", len(report.duplicates), "later rows update earlier ones"))
    if report.enroll:
        rows.append(("enrolled", report.enrolled, ""))
        if report.enroll_failed:
            rows.append(("not enrolled", len(report.enroll_failed), "see below; import again"))
    for name, count, detail in rows:
        style = "red" if count and name in ("rejected", "not enrolled") else None
        figure = f"[{style}]{count:>8,}[/{style}]" if style else f"{count:>8,}"
        say(f"  {name:<16}{figure}  {escape(detail)}".rstrip(), highlight=False)
    if report.segments:
        label = "segments of new leads" if dry or refused else "segments"
        parts = ", ".join(f"{escape(str(k))} {v:,}" for k, v in report.segments.most_common())
        say(f"{label}: {parts}", highlight=False)
    if report.sequences:
        parts = ", ".join(f"{escape(k)} {v:,}" for k, v in report.sequences.most_common())
        say(f"enrolled in: {parts}", highlight=False)
    for note in report.notes:
        say(f"[yellow]column[/yellow] {escape(note)}", highlight=False)
    if report.rejected:
        say("rejected rows:", highlight=False)
        for row in report.rejected[:_LISTED]:
            where = f"line {row.line}" + (f" {row.field}" if row.field else "")
            say(f"  [red]{escape(where)}[/red]: {escape(row.reason)}", highlight=False)
        _more(len(report.rejected), "rows: all in the rejects file and --json")
    if report.duplicates:
        say("repeated emails:", highlight=False)
    for duplicate in report.duplicates[:_LISTED]:
        say(f"  line {duplicate.line}: updated earlier row on line {duplicate.earlier_line} "
            f"({escape(duplicate.email)})", highlight=False)  # fmt: skip
    _more(len(report.duplicates), "repeated emails (--json lists them all)")
    if report.enroll_failed:
        say("not enrolled:", highlight=False)
    for failure in report.enroll_failed[:_LISTED]:
        say(f"  [red]line {failure.line}[/red] {escape(failure.email)}: "
            f"{escape(failure.error)}", highlight=False)  # fmt: skip
    _more(len(report.enroll_failed), "not enrolled (--json lists them all)")
    if report.stopped:
        done = "checked" if dry or refused else "imported"
        say(f"[red]stopped[/red] at {escape(report.stopped)}: the rows before it are {done}",
            highlight=False)  # fmt: skip


def _more(count: int, what: str) -> None:
    if count > _LISTED:
        console.print(f"  ... and {count - _LISTED:,} more {what}", highlight=False)
