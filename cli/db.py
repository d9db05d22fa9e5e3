"""`nurture db ...`: the database schema's migrations (Alembic, `migrations/`).

Registered on the `nurture` app at the end of cli/app.py. The database is the one
the settings name (DATABASE_URL, or the SQLite file in NURTURE_STATE_DIR). Exit codes:
0 ok; 1 the command ran and failed (see each command); 2 bad usage (an unknown
revision). Colours only on a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

db_app = typer.Typer(
    help="The database schema: upgrade it, see its revision and the migrations' history.\n\n"
    "Example: nurture db upgrade",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)  # colours only on a terminal (and never with NO_COLOR)
errors = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def _engine():
    from infra.settings import get_settings
    from models.db import make_engine
    from services.runtime import create_private_sqlite_file

    settings = get_settings()
    if settings.database_url is None:
        settings.ensure_state_dir()  # 0700: it holds the SQLite file and the secrets
    create_private_sqlite_file(settings.effective_database_url)
    return make_engine(settings.effective_database_url)


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(message, highlight=False, markup=False)
    return typer.Exit(code)


def _run(action: Callable[[], T]) -> T:
    """Run `action`; a schema problem, a failed migration or an unreachable database is
    a message and exit 1, not a traceback (the URL, a secret, is never printed)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from models.schema import SchemaError

    try:
        return action()
    except SchemaError as exc:
        raise _fail(str(exc)) from None
    except CommandError as exc:
        raise _fail(f"migration failed: {exc}") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _fail(f"database error: {reason}") from None


def _check_revision(revision: str) -> None:
    """Exit 2 unless `revision` is head, base, a step (-1, +2) or one of ours."""
    from models.schema import script_directory

    if revision in ("head", "base") or (revision[:1] in "+-" and revision[1:].isdigit()):
        return
    try:
        found = script_directory().get_revision(revision)
    except Exception:  # alembic's ResolutionError: unknown or ambiguous
        found = None
    if found is None:
        raise _fail(f"no revision {revision!r} (see `nurture db history`)", 2)


def _line(script) -> str:
    return f"{script.revision}  {script.doc}"


@db_app.command()
def upgrade(
    revision: str = typer.Argument("head", help="the revision to reach"),
) -> None:
    """Migrate the database up to REVISION (the code's head by default).

    One transaction. Run it once, before starting workers of a new version: on
    PostgreSQL a worker or the API refuses to start on a database behind the code.

    An empty database gets the whole schema. A database made before migrations existed
    (tables, no migration history) is first checked against the initial revision's
    tables, columns, indexes and unique constraints, stamped with it if they match, and
    then upgraded; if they do not match, nothing changes and the differences are listed.

    Examples:
      nurture db upgrade
      DATABASE_URL=postgresql+psycopg://nurture@db.internal/nurture nurture db upgrade
      nurture db upgrade 0001

    Exit codes: 0 upgraded (or already there); 1 the database could not be upgraded
    (unreachable, a revision this code does not know, tables that do not match);
    2 no such revision.
    """
    from models.schema import INITIAL_REVISION
    from models.schema import upgrade as run_upgrade

    _check_revision(revision)
    engine = _engine()
    try:
        done = _run(lambda: run_upgrade(engine, revision))
    finally:
        engine.dispose()
    if done.stamped:
        console.print(
            f"stamped revision {INITIAL_REVISION}: the existing tables are its schema",
            highlight=False,
        )
    for script in done.applied:
        console.print(f"applied {_line(script)}", highlight=False)
    if done.applied or done.stamped:
        console.print(
            f"[green]upgraded[/green] from {done.before or 'an empty database'} to {done.after}",
            highlight=False,
        )
    else:
        console.print(f"[green]ok[/green]: already at {done.after}", highlight=False)


@db_app.command()
def current() -> None:
    """Show the database's revision and whether it is the code's head.

    Examples:
      nurture db current
      nurture db current || nurture db upgrade

    Exit codes: 0 at head; 1 not at head (empty, behind, unknown to this code, made
    before migrations) or unreachable.
    """
    from models.schema import schema_state

    engine = _engine()
    try:

        def read():
            with engine.connect() as connection:
                return schema_state(connection)

        state = _run(read)
    finally:
        engine.dispose()
    if state.kind == "head":
        console.print(f"{state.current} [green](head)[/green]", highlight=False)
        return
    if state.kind == "empty":
        console.print(
            f"[yellow]empty database[/yellow]: `nurture db upgrade` creates the schema "
            f"({state.head})",
            highlight=False,
        )
    else:
        console.print(str(state.problem()), style="yellow", highlight=False, markup=False)
    raise typer.Exit(1)


@db_app.command()
def history() -> None:
    """List the migrations this code has, oldest first, and mark the head.

    Examples:
      nurture db history

    Exit codes: 0 always (the database is not read; see `nurture db current`).
    """
    from models.schema import head_revision
    from models.schema import history as all_revisions

    head = head_revision()
    for script in all_revisions():
        mark = "  [green](head)[/green]" if script.revision == head else ""
        console.print(f"{_line(script)}{mark}", highlight=False)


@db_app.command()
def downgrade(
    revision: str = typer.Argument(..., help="the revision to go back to; base: no tables"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Migrate the database down to REVISION, undoing the later migrations.

    One transaction. Undoing a migration drops what it added, with its data: back up
    first. Workers of the newer version must be stopped.

    Examples:
      nurture db downgrade 0001 --yes
      nurture db downgrade -1

    Exit codes: 0 downgraded (or already there); 1 failed or not confirmed; 2 no such
    revision.
    """
    from models.schema import downgrade as run_downgrade

    _check_revision(revision)
    if not yes and not typer.confirm(
        f"downgrade the database to {revision}, dropping what later migrations added?"
    ):
        raise _fail("not confirmed: nothing changed")
    engine = _engine()
    try:
        before, after = _run(lambda: run_downgrade(engine, revision))
    finally:
        engine.dispose()
    console.print(f"[green]downgraded[/green] from {before} to {after or 'base'}")


@db_app.command()
def revision(
    message: str = typer.Option(..., "-m", "--message", help="what the migration does"),
    autogenerate: bool = typer.Option(
        False, "--autogenerate", help="compare the models with the database (at head)"
    ),
) -> None:
    """Write the next migration into migrations/versions/ (numbered 0002, 0003, ...).

    With --autogenerate its operations are what the models (models/db.py) have that the
    database (which must be at head: `nurture db upgrade` first) lacks; review them by
    hand (renames show as drop + add; a NOT NULL column on a table with rows needs a
    server_default), and try it on SQLite and PostgreSQL.

    Examples:
      nurture db revision -m "add leads.linkedin_url" --autogenerate
      nurture db revision -m "backfill grades"

    Exit codes: 0 written; 1 failed (the database not at head, unreachable).
    """
    from models.schema import new_revision

    engine = _engine()
    try:
        paths = _run(lambda: new_revision(engine, message, autogenerate))
    finally:
        engine.dispose()
    for path in paths:
        console.print(f"[green]wrote[/green] {path}", highlight=False)
