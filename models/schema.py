"""Schema migrations: Alembic (`migrations/`), configured here from code (no alembic.ini:
the database is the one our settings name).

`open_database` calls `ensure_schema`:

- an empty database is migrated to head, so it is stamped from its first day;
- a database at head is used as is;
- a database behind head is upgraded on SQLite (the embedded development default) and
  refused on PostgreSQL (`SchemaBehind`): the operator runs `nurture db upgrade` once,
  before starting the new workers, instead of whichever process starts first migrating
  a production database under the others;
- a database with our tables but no migration history (made by `create_all` before
  migrations existed) is refused on PostgreSQL (`SchemaUnversioned`); `nurture db
  upgrade` (and, on SQLite, the start itself) stamps it with the initial revision if
  its tables, columns, indexes and unique constraints are that revision's, and upgrades
  it; if they are not, nothing is changed (`SchemaMismatch` lists the differences);
- a revision this code does not know (a newer version migrated the database) is refused.

Migrations run in one transaction under a lock (PostgreSQL: an advisory lock; SQLite:
BEGIN IMMEDIATE), and the state is read again once the lock is held, so processes
starting together migrate once.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from models.db import Base

# Beside the `nurture` package both in a clone (editable install) and in site-packages.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
INITIAL_REVISION = "0001"
VERSION_TABLE = "alembic_version"
ADVISORY_LOCK = 0x6E757274  # "nurt": serialises migrations on PostgreSQL


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to do."""


class SchemaBehind(SchemaError):
    """A PostgreSQL database behind head: `nurture db upgrade` brings it up."""


class SchemaUnversioned(SchemaError):
    """Our tables without migration history (made by create_all before migrations)."""


class SchemaMismatch(SchemaError):
    """Unversioned tables that are not the initial revision's: upgrading them is unsafe."""


class SchemaUnknown(SchemaError):
    """A revision this code does not know: a newer version migrated the database."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration; `connection` is what migrations/env.py runs on."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision (None: not stamped)."""
    return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the database's revision
    head: str  # what this code needs
    tables: frozenset[str]  # our models' tables that exist
    known: bool  # `current` is one of our revisions

    @property
    def kind(self) -> str:
        """empty | head | behind | unversioned | unknown"""
        if self.current is None:
            return "unversioned" if self.tables else "empty"
        if self.current == self.head:
            return "head"
        return "behind" if self.known else "unknown"

    def problem(self) -> SchemaError:
        """Why this code cannot use the database as it is, and what to run."""
        if self.kind == "unknown":
            return SchemaUnknown(
                f"database is at revision {self.current}, which this code does not know "
                f"(a newer version of Nurture migrated it); the code needs {self.head}: "
                "run the newer version, or downgrade with it"
            )
        if self.kind == "unversioned":
            return SchemaUnversioned(
                "database has Nurture's tables but no migration history (it was made "
                f"before migrations, by create_all); the code needs {self.head}: run "
                f"`nurture db upgrade` (it checks the tables are revision {INITIAL_REVISION}'s, "
                "stamps it and upgrades)"
            )
        return SchemaBehind(
            f"database is at revision {self.current}, the code needs {self.head}: "
            "run `nurture db upgrade`"
        )


def schema_state(connection: Connection) -> SchemaState:
    ours = set(Base.metadata.tables)
    tables = frozenset(ours & set(inspect(connection).get_table_names()))
    current = current_revision(connection)
    known = current is not None and _is_known(current)
    return SchemaState(current, head_revision(), tables, known)


def _is_known(revision: str) -> bool:
    try:
        return script_directory().get_revision(revision) is not None
    except Exception:  # alembic raises ResolutionError (or CommandError) for unknown ones
        return False


def ensure_schema(engine: Engine) -> None:
    """What `open_database` does before anything uses the database (see the module doc)."""
    with engine.connect() as connection:
        state = schema_state(connection)
    if state.kind == "head":
        return
    if state.kind == "empty" or (
        engine.dialect.name == "sqlite" and state.kind in ("behind", "unversioned")
    ):
        upgrade(engine)  # reads the state again under the lock
        return
    raise state.problem()


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock; committed at the end."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
        elif connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, held to the end
        yield connection
        connection.commit()


@dataclass(frozen=True)
class Upgrade:
    before: str | None
    after: str | None
    stamped: bool  # an unversioned database was stamped with the initial revision
    applied: list[Script]  # oldest first


def upgrade(engine: Engine, revision: str = "head") -> Upgrade:
    """Migrate to `revision` (stamping an unversioned database that matches the initial
    revision first), in one transaction under the lock."""
    with _locked(engine) as connection:
        state = schema_state(connection)
        if state.kind == "unknown":
            raise state.problem()
        stamped = False
        before = state.current
        if state.kind == "unversioned":
            differences = compare_with_initial(connection)
            if differences:
                raise SchemaMismatch(
                    "database has Nurture's tables but no migration history, and they are "
                    f"not revision {INITIAL_REVISION}'s (made by an older version?); nothing "
                    "was changed:\n  " + "\n  ".join(differences) + "\nbring them to that "
                    "schema by hand (or recreate the database), then run `nurture db upgrade`"
                )
            command.stamp(alembic_config(connection), INITIAL_REVISION)
            stamped, before = True, INITIAL_REVISION
        command.upgrade(alembic_config(connection), revision)
        after = current_revision(connection)
    return Upgrade(state.current, after, stamped, _between(before, after))


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Migrate down to `revision` ("base": nothing left); (before, after)."""
    with _locked(engine) as connection:
        state = schema_state(connection)
        if state.kind in ("unknown", "unversioned"):
            raise state.problem()
        command.downgrade(alembic_config(connection), revision)
        return state.current, current_revision(connection)


def _between(lower: str | None, upper: str | None) -> list[Script]:
    """The revisions after `lower` up to `upper`, oldest first."""
    if upper is None or upper == lower:
        return []
    scripts = script_directory().iterate_revisions(upper, lower or "base")
    return list(reversed([s for s in scripts if s is not None]))


def history() -> list[Script]:
    """Every revision, oldest first."""
    return list(reversed(list(script_directory().walk_revisions())))


def new_revision(engine: Engine, message: str, autogenerate: bool) -> list[Path]:
    """Write the next migration (`0002_<message>.py`, ...), compared with the database
    (which must be at head) when `autogenerate`; formatted with ruff when it is installed.
    The files written."""
    numbers = [int(s.revision) for s in history() if s.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with engine.connect() as connection:
        config = alembic_config(connection)
        config.stdout = io.StringIO()  # not Alembic's "Generating ...": the caller reports
        written = command.revision(config, message, autogenerate=autogenerate, rev_id=rev_id)
    script_directory.cache_clear()
    scripts = written if isinstance(written, list) else [written]
    paths = [Path(s.path) for s in scripts if s is not None]
    if importlib.util.find_spec("ruff") is not None:
        for args in (["check", "--fix", "--quiet"], ["format", "--quiet"]):
            subprocess.run([sys.executable, "-m", "ruff", *args, *map(str, paths)], check=False)
    return paths


def _shape(connection: Connection, tables: set[str]) -> dict[str, dict[str, set]]:
    """Tables' columns (with nullability), indexes and unique constraints, by column names:
    comparable across dialects."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names())
    shape: dict[str, dict[str, set]] = {}
    for table in sorted(tables & present):
        shape[table] = {
            "column": {
                (c["name"], "null" if c["nullable"] else "not null")
                for c in inspector.get_columns(table)
            },
            "index": {
                (tuple(i["column_names"]), "unique" if i["unique"] else "")
                for i in inspector.get_indexes(table)
                if not i.get("duplicates_constraint")  # PostgreSQL: a unique constraint's
            },
            "unique constraint": {
                (tuple(u["column_names"]), "") for u in inspector.get_unique_constraints(table)
            },
        }
    return shape


@functools.cache
def _initial_shape() -> dict[str, dict[str, set]]:
    """The initial revision's schema, made by its migration in an in-memory SQLite."""
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            command.upgrade(alembic_config(connection), INITIAL_REVISION)
            tables = set(inspect(connection).get_table_names()) - {VERSION_TABLE}
            return _shape(connection, tables)
    finally:
        engine.dispose()


def compare_with_initial(connection: Connection) -> list[str]:
    """How the database's tables differ from the initial revision's (empty: they match)."""
    expected = _initial_shape()
    actual = _shape(connection, set(expected))
    differences = [f"missing table {table}" for table in sorted(set(expected) - set(actual))]
    for table in sorted(actual):
        for kind in ("column", "index", "unique constraint"):
            want, have = expected[table][kind], actual[table][kind]
            for item in sorted(want - have):
                differences.append(f"{table}: missing {kind} {_describe(item)}")
            for item in sorted(have - want):
                differences.append(f"{table}: unexpected {kind} {_describe(item)}")
    return differences


def _describe(item: tuple) -> str:
    name, detail = item
    name = name if isinstance(name, str) else "(" + ", ".join(name) + ")"
    return f"{name} {detail}".strip()
