"""Schema migrations (migrations/, models/schema.py, `nurture db ...`) on SQLite and
PostgreSQL: the migrated schema is exactly the models'; a database behind head, made
before migrations, or migrated by a newer version is handled as the README says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from cli.app import app
from models import schema as migrate
from models.db import Base, Lead, make_engine, utcnow
from models.schema import SchemaBehind, SchemaMismatch, SchemaUnknown, SchemaUnversioned
from services.runtime import open_database
from tests.conftest import _reset_postgres, fresh_postgres_database

REPO = Path(__file__).resolve().parent.parent
HEAD = migrate.head_revision()
NEXT = f"{int(HEAD) + 1:04d}"  # the revision a later version of the code would add
# Our revisions, oldest first, as `nurture db history` lists them.
HISTORY = [
    "0001  initial schema",
    "0002  responses.scored_in: the score change that counted each response",
    "0003  template_sets: the message templates each enrollment was made with",
    "0004  early_statuses: provider status callbacks that arrived before their message's ID",
    "0005  unscored responses: a partial index on the responses not scored yet",
    "0006  outcomes: opportunity events from the CRM, and the opportunities they fold into",
    "0007  utm and crm sync: campaign fields on leads and responses; each CRM connector's cursor",
    "0008  messages by lead: on PostgreSQL the index carries sent_at, enrollment_id and step_id",
    "0009  console accounts: users, their sessions and API tokens, and the audit log",
    "0010  lead search: leads by last activity and by score, for the console",
    "0011  console overview and operations: live feed and funnel indexes; webhook refusals",
    "0012  console queues: indexes for the reps' inbox, leads' enrollments and email prefixes",
    "0013  predictive models: trained models and the model each score change used",
    "0014  experiments: each experiment as first run, and the arm each lead is in",
    "0015  lead locale: the language a lead is written to",
    "0016  web tracking: website visitors joined to leads, and the views of those not joined yet",
    "0017  consent at intake: each consent change's status, source, time and legal basis; "
    "double opt-in",
    "0018  paused sequences: sequences whose sends are held back until resumed",
    "0019  reply notices: a lead's reply forwarded to its owner, once per reply and channel",
]
ALL_APPLIED = "".join(f"applied {line}\n" for line in HISTORY)

# That next revision; batch mode so SQLite can drop it.
NEXT_REVISION = f'''"""leads.linkedin_url

Revision ID: {NEXT}
Revises: {HEAD}
"""

import sqlalchemy as sa
from alembic import op

revision = "{NEXT}"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("linkedin_url", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("linkedin_url")
'''


def nurture_db(url: str, tmp_path: Path, *args: str, input: str | None = None):
    """`nurture db ARGS` in this process, on `url`."""
    env = {"DATABASE_URL": url, "NURTURE_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    return CliRunner().invoke(app, ["db", *args], env=env, input=input)


def settings_for(url: str, tmp_path: Path):
    from infra.settings import Settings

    return Settings(NURTURE_STATE_DIR=tmp_path / "state", DATABASE_URL=url)


@pytest.fixture
def reference_url(database_url, tmp_path):
    """A second, empty database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'reference.db'}"
        return
    with fresh_postgres_database("nurture_ref") as url:
        yield url


@pytest.fixture
def next_revision(tmp_path, monkeypatch) -> Path:
    """The code as the next version will be: a copy of migrations/ with one more revision."""
    copy = tmp_path / "migrations"
    shutil.copytree(
        migrate.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (copy / "versions" / f"{NEXT}_leads_linkedin_url.py").write_text(NEXT_REVISION)
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", copy)
    migrate.script_directory.cache_clear()
    yield copy
    migrate.script_directory.cache_clear()


def schema(url: str) -> dict:
    """Everything about the tables an inspector sees, names included, for equality."""
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        tables = sorted(set(inspector.get_table_names()) - {migrate.VERSION_TABLE})
        return {
            table: {
                "columns": [
                    (c["name"], repr(c["type"]), c["nullable"], c.get("default"))
                    for c in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (
                        i["name"],
                        tuple(i["column_names"]),
                        bool(i["unique"]),
                        tuple(i.get("dialect_options", {}).get("postgresql_include", ())),
                    )
                    for i in inspector.get_indexes(table)
                ),
                "unique constraints": sorted(
                    (u["name"] or "", tuple(u["column_names"]))
                    for u in inspector.get_unique_constraints(table)
                ),
                "foreign keys": sorted(
                    (
                        f["name"] or "",
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        tuple(f["referred_columns"]),
                    )
                    for f in inspector.get_foreign_keys(table)
                ),  # fmt: skip
            }
            for table in tables
        }
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return migrate.current_revision(connection)
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def made_before_migrations(url: str) -> None:
    """The tables as create_all made them before migrations existed: revision 0001's
    (the test below proved them equal when 0001 was head), without alembic_version."""
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, migrate.INITIAL_REVISION)
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {migrate.VERSION_TABLE}"))
    finally:
        engine.dispose()


def test_upgrade_command_gives_exactly_the_models_schema(database_url, reference_url, tmp_path):
    env = os.environ | {"DATABASE_URL": database_url, "NURTURE_STATE_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "cli.app", "db", "upgrade"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(ALL_APPLIED), run.stdout
    assert f"upgraded from an empty database to {HEAD}" in run.stdout
    assert revision_of(database_url) == HEAD

    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()

    reference = make_engine(reference_url)
    Base.metadata.create_all(reference)
    reference.dispose()
    migrated, created = schema(database_url), schema(reference_url)
    assert sorted(migrated) == sorted(Base.metadata.tables)
    assert migrated == created

    again = nurture_db(database_url, tmp_path, "upgrade")
    assert again.exit_code == 0 and f"already at {HEAD}" in again.stdout
    current = nurture_db(database_url, tmp_path, "current")
    assert current.exit_code == 0 and current.stdout.strip() == f"{HEAD} (head)"


def test_open_database_migrates_an_empty_database_and_uses_one_at_head(database_url, tmp_path):
    settings = settings_for(database_url, tmp_path)
    assert nurture_db(database_url, tmp_path, "current").exit_code == 1  # empty
    database = open_database(settings)
    with database.sessions.begin() as session:
        session.add(Lead(email="ada@example.com"))
    database.engine.dispose()
    assert revision_of(database_url) == HEAD
    again = open_database(settings)  # at head: used as is
    with again.sessions() as session:
        assert Lead.find(session, "ada@example.com") is not None
    again.engine.dispose()


def test_processes_starting_together_migrate_once(database_url, tmp_path):
    settings = settings_for(database_url, tmp_path)
    failures: list[BaseException] = []

    def start() -> None:
        try:
            open_database(settings).engine.dispose()
        except BaseException as exc:  # pragma: no cover - what the test looks for
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (HEAD,)
        ]
    engine.dispose()


@pytest.mark.postgres
def test_postgres_behind_head_refuses_to_start_until_upgraded(
    postgres_url, tmp_path, next_revision
):
    _reset_postgres(postgres_url)
    database_url = postgres_url
    assert nurture_db(database_url, tmp_path, "upgrade", HEAD).exit_code == 0
    with pytest.raises(SchemaBehind) as refused:
        open_database(settings_for(database_url, tmp_path))
    message = str(refused.value)
    assert message == (
        f"database is at revision {HEAD}, the code needs {NEXT}: run `nurture db upgrade`"
    )
    current = nurture_db(database_url, tmp_path, "current")
    assert current.exit_code == 1 and message in current.stdout

    upgraded = nurture_db(database_url, tmp_path, "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert f"applied {NEXT}  leads.linkedin_url" in upgraded.stdout
    assert f"upgraded from {HEAD} to {NEXT}" in upgraded.stdout
    database = open_database(settings_for(database_url, tmp_path))
    columns = {c["name"] for c in inspect(database.engine).get_columns("leads")}
    assert "linkedin_url" in columns
    database.engine.dispose()


def test_sqlite_behind_head_is_upgraded_at_start(tmp_path, next_revision):
    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    assert nurture_db(url, tmp_path, "upgrade", HEAD).exit_code == 0
    database = open_database(settings_for(url, tmp_path))
    assert "linkedin_url" in {c["name"] for c in inspect(database.engine).get_columns("leads")}
    database.engine.dispose()
    assert revision_of(url) == NEXT
    # ... and down again (batch mode: SQLite rebuilds the table), keeping the rows.
    execute(url, "INSERT INTO leads (id, email, timezone, attributes, stage, score, fit_score,"
                 " engagement_score, email_consent, sms_consent, created_at, updated_at) VALUES"
                 " ('l1', 'ada@example.com', 'UTC', '{}', 'lead', 0, 0, 0, 1, 1,"
                 " '2026-01-01', '2026-01-01')")  # fmt: skip
    down = nurture_db(url, tmp_path, "downgrade", HEAD, "--yes")
    assert down.exit_code == 0 and f"downgraded from {NEXT} to {HEAD}" in down.stdout
    engine = make_engine(url)
    assert "linkedin_url" not in {c["name"] for c in inspect(engine).get_columns("leads")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT email FROM leads")).scalar() == "ada@example.com"
    engine.dispose()


def test_database_made_before_migrations(database_url, tmp_path):
    """Tables, no alembic_version: PostgreSQL refuses to start; `nurture db upgrade`
    (and, on SQLite, the start itself) checks the tables, stamps and upgrades."""
    made_before_migrations(database_url)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(Lead.__table__.insert().values(
            id="l1", email="ada@example.com", timezone="UTC", attributes={}, stage="lead",
            score=0, fit_score=0, engagement_score=0, email_consent=True, sms_consent=True,
            created_at=utcnow(), updated_at=utcnow(),
        ))  # fmt: skip
    engine.dispose()
    settings = settings_for(database_url, tmp_path)
    if database_url.startswith("postgresql"):
        with pytest.raises(SchemaUnversioned) as refused:
            open_database(settings)
        assert "no migration history" in str(refused.value)
        assert "run `nurture db upgrade`" in str(refused.value)
        upgraded = nurture_db(database_url, tmp_path, "upgrade")
        assert upgraded.exit_code == 0, upgraded.output
        assert "stamped revision 0001: the existing tables are its schema" in upgraded.stdout
    database = open_database(settings)
    with database.sessions() as session:
        assert Lead.find(session, "ada@example.com") is not None
    database.engine.dispose()
    assert revision_of(database_url) == HEAD


def test_database_made_before_migrations_that_does_not_match_is_left_alone(database_url, tmp_path):
    made_before_migrations(database_url)
    execute(database_url, "DROP INDEX ix_handoffs_status",
            "ALTER TABLE leads DROP COLUMN sql_hold_until")  # fmt: skip
    upgraded = nurture_db(database_url, tmp_path, "upgrade")
    assert upgraded.exit_code == 1
    assert "no migration history, and they are not revision 0001's" in upgraded.stderr
    assert "leads: missing column sql_hold_until null" in upgraded.stderr
    assert "handoffs: missing index (status)" in upgraded.stderr
    assert "nothing was changed" in upgraded.stderr
    with pytest.raises(SchemaMismatch if database_url.startswith("sqlite") else SchemaUnversioned):
        open_database(settings_for(database_url, tmp_path))
    assert revision_of(database_url) is None
    assert "alembic_version" not in inspect_tables(database_url)


def inspect_tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_revision_this_code_does_not_know_is_refused(database_url, tmp_path):
    open_database(settings_for(database_url, tmp_path)).engine.dispose()
    execute(database_url, "UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(SchemaUnknown) as refused:
        open_database(settings_for(database_url, tmp_path))
    assert "revision 0099, which this code does not know" in str(refused.value)
    upgraded = nurture_db(database_url, tmp_path, "upgrade")
    assert upgraded.exit_code == 1 and "does not know" in upgraded.stderr


def test_downgrade_to_base_and_back(database_url, tmp_path):
    assert nurture_db(database_url, tmp_path, "upgrade").exit_code == 0
    refused = nurture_db(database_url, tmp_path, "downgrade", "base", input="n\n")
    assert refused.exit_code == 1 and revision_of(database_url) == HEAD
    down = nurture_db(database_url, tmp_path, "downgrade", "base", "--yes")
    assert down.exit_code == 0 and f"downgraded from {HEAD} to base" in down.stdout
    assert inspect_tables(database_url) <= {"alembic_version"}
    assert nurture_db(database_url, tmp_path, "upgrade").exit_code == 0
    assert revision_of(database_url) == HEAD


def test_history_revision_and_bad_usage(tmp_path, next_revision):
    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    history = nurture_db(url, tmp_path, "history")
    assert history.exit_code == 0
    assert history.stdout.splitlines() == [
        *HISTORY,
        f"{NEXT}  leads.linkedin_url  (head)",
    ]
    assert not (tmp_path / "nurture.db").exists()  # history does not read the database
    unknown = nurture_db(url, tmp_path, "upgrade", "0042")
    assert unknown.exit_code == 2 and "no revision '0042'" in unknown.stderr

    # A new revision, autogenerated against a database at head: the models add nothing.
    assert nurture_db(url, tmp_path, "upgrade").exit_code == 0
    written = nurture_db(url, tmp_path, "revision", "-m", "nothing new", "--autogenerate")
    assert written.exit_code == 0, written.output
    path = next_revision / "versions" / f"{int(NEXT) + 1:04d}_nothing_new.py"
    assert f"wrote {path}" in written.stdout
    source = path.read_text()
    assert f'revision: str = "{int(NEXT) + 1:04d}"' in source
    assert f'down_revision: str | Sequence[str] | None = "{NEXT}"' in source
    # The models lack that revision's column: autogenerate proposes dropping it.
    assert 'batch_op.drop_column("linkedin_url")' in source
    behind = nurture_db(url, tmp_path, "revision", "-m", "again", "--autogenerate")
    assert behind.exit_code == 1 and "not up to date" in behind.stderr
