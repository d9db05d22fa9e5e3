"""What every command shares: the consoles, logging set-up, loading the definitions
and reporting their errors."""

from __future__ import annotations

import typer
from rich.console import Console

from models.definition_set import Definitions
from models.yaml_source import DefinitionError

console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes
errors = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    from services.runtime import configure_logging

    configure_logging(verbose)


def load(settings) -> Definitions:
    from services.definitions import load_definitions

    return load_definitions(settings.definitions_dir)


def fail_on_definition_errors(action):
    """Run `action`; definitions with errors are listed on stderr and exit 1."""
    try:
        return action()
    except DefinitionError as exc:
        for problem in exc.problems:
            errors.print(f"[red]error[/red] {problem}", highlight=False)
        errors.print("fix the definitions above (see `nurture validate`)")
        raise typer.Exit(1) from None
