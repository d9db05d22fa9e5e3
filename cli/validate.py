"""`nurture validate`: check a definitions directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cli.common import console
from infra.settings import Settings, SettingsError, get_settings


def validate(
    directory: Path = typer.Argument(
        None, help="definitions directory [default: NURTURE_DEFINITIONS or .]"
    ),
    as_json: bool = typer.Option(False, "--json", help="the problems as JSON"),
) -> None:
    """Check sequences, segments, scoring, sales reps and templates; list every problem
    (file:line:column field: message), errors and warnings, all at once. With a database
    (DATABASE_URL, or the default SQLite file once it exists), warn about experiments
    whose arms changed while running and running experiments that are conclusive.

    Examples:
      nurture validate .
      nurture validate my-definitions --json

    Exit codes: 0 valid (warnings allowed); 1 errors.
    """
    import dataclasses

    from services.json_output import dumps
    from services.validate import validation

    settings, unread = _settings(directory)
    root = directory or settings.definitions_dir
    result = validation(root, settings)
    problems, notes = result.problems, unread + result.notes
    error_count = sum(p.severity == "error" for p in problems)
    if as_json:
        console.print_json(dumps({
            "directory": str(root), "errors": error_count,
            "warnings": len(problems) - error_count,
            "problems": [dataclasses.asdict(p) for p in problems], "notes": notes,
        }))  # fmt: skip
        raise typer.Exit(1 if error_count else 0)
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}] {problem}", highlight=False)
    for note in notes:
        console.print(f"[dim]note[/dim] {escape(note)}", highlight=False)
    if error_count:
        console.print(f"[red]{error_count} error(s)[/red] in {root}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: definitions in {root} are valid"
                  + (f" ({len(problems)} warning(s))" if problems else ""))  # fmt: skip


def _settings(directory: Path | None) -> tuple[Settings | None, list[str]]:
    """The settings, for the database to check experiments in. With a directory given,
    settings that do not load are a note: the files are still checked."""
    try:
        return get_settings(), []
    except SettingsError as exc:
        if directory is None:  # nor is the definitions directory known
            raise
        return None, [f"experiments not checked against a database: the settings do not "
                      f"load ({' '.join(str(exc).split())})"]  # fmt: skip
