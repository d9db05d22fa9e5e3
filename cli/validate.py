"""`nurture validate`: check a definitions directory."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console
from infra.settings import get_settings


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

    from services.json_output import dumps
    from services.validate import validate as run_validation

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
