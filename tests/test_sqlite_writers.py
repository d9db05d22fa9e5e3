"""SQLite's writers in one process take turns on a lock of the engine's (models/db.py
`_gated_connection`) rather than meeting SQLite's busy handler, whose sleeps of up to
100 ms a try left the lock idle while they waited; and the inbox commits a request's
events together. Real SQLite files, real threads."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from models.db import Base, Lead, Response, make_engine, session_factory
from models.sqlite_writers import set_busy_timeout
from services.intake import EventIn, Intake


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'writers.db'}")
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def _insert(engine, key: int, busy_ms: int) -> float:
    """Insert a row with SQLite's own busy timeout set to `busy_ms` (under the engine's
    gate, whose wait stays its own); returns the seconds it took."""
    started = time.monotonic()
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        raw.execute(f"PRAGMA busy_timeout = {busy_ms}")  # SQLite's alone, not the gate's
        connection.execute(text("INSERT INTO t (k) VALUES (:k)"), {"k": key})
        connection.commit()
    return time.monotonic() - started


def test_a_writer_waits_its_turn_instead_of_meeting_the_lock(engine):
    """With SQLite's busy timeout at 0, a second writer would fail at once with
    "database is locked" while the first holds the lock; queued on the gate, it waits
    for the first's commit and then writes."""
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with engine.connect() as connection:
            connection.execute(text("INSERT INTO t (k) VALUES (1)"))
            holding.set()
            release.wait(5)
            connection.commit()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done_first = pool.submit(first)
        assert holding.wait(5)
        second = pool.submit(_insert, engine, 2, 0)
        time.sleep(0.3)
        assert not second.done()  # waiting its turn
        release.set()
        done_first.result(5)
        second.result(5)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM t")) == 2


def test_the_turn_is_given_back_after_a_rollback_an_autocommit_and_a_close(engine):
    with pytest.raises(IntegrityError), engine.connect() as connection:
        connection.execute(text("INSERT INTO t (k) VALUES (1)"))
        connection.execute(text("INSERT INTO t (k) VALUES (1)"))  # rolled back on exit
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("INSERT INTO t (k) VALUES (2)"))
    raw = engine.raw_connection()
    raw.cursor().execute("INSERT INTO t (k) VALUES (3)")
    raw.invalidate()  # closed inside its transaction: the row is gone, the turn given back
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # another thread: not holding
        assert pool.submit(_insert, engine, 4, 0).result(5) < 2
    with engine.connect() as connection:
        assert connection.scalars(text("SELECT k FROM t ORDER BY k")).all() == [2, 4]


def test_the_turn_is_waited_for_no_longer_than_the_busy_timeout(engine):
    """An API call shortens its wait (api/database.py): the gate keeps to it."""
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with engine.connect() as connection:
            connection.execute(text("INSERT INTO t (k) VALUES (1)"))
            holding.set()
            release.wait(10)
            connection.commit()

    def impatient() -> None:
        with engine.connect() as connection:
            set_busy_timeout(connection.connection.dbapi_connection, 300)
            connection.execute(text("INSERT INTO t (k) VALUES (2)"))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(first)
        assert holding.wait(5)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            pool.submit(impatient).result(10)
        waited = time.monotonic() - started
        release.set()
        held.result(5)
    assert 0.25 < waited < 3


def test_a_request_s_events_are_committed_together(engine, fixture_definitions):
    """One commit for a request's events (not one each); a repeated event ID in it is
    counted on its first row and the others are stored."""
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add(Lead(id="lead-1", email="a@example.com", stage="lead"))
    intake = Intake(fixture_definitions, sessions, client=None, task_queue="unused")
    commits = []
    event.listen(engine, "commit", lambda _connection: commits.append(1))
    events = [EventIn(type="page.view", email="a@example.com", event_id=f"e{n}")
              for n in (1, 2, 3, 2, 4)]  # fmt: skip
    result = intake.store_events(events, source="test")
    assert len(commits) == 1
    assert [row.event_id for row in result.stored] == ["e1", "e2", "e3", "e4"]
    assert result.duplicates == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Response)) == 4
        assert session.scalar(select(Response.duplicates).where(Response.event_id == "e2")) == 1


def _hold_the_write_lock(url: str, holding, release) -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        connection.execute(text("INSERT INTO t (k) VALUES (1)"))
        holding.set()
        release.wait(10)
        connection.commit()
    engine.dispose()


def test_writers_of_two_processes_take_turns_too(engine, tmp_path):
    """The API and the worker are two processes on one file: the turn is a file lock."""
    context = multiprocessing.get_context("spawn")
    holding, release = context.Event(), context.Event()
    other = context.Process(target=_hold_the_write_lock,
                            args=(str(engine.url), holding, release))  # fmt: skip
    other.start()
    try:
        assert holding.wait(30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            second = pool.submit(_insert, engine, 2, 0)  # SQLite alone would refuse at once
            time.sleep(0.3)
            assert not second.done()
            release.set()
            second.result(10)
    finally:
        release.set()
        other.join(10)
    assert other.exitcode == 0
    with engine.connect() as connection:
        assert connection.scalars(text("SELECT k FROM t ORDER BY k")).all() == [1, 2]


def test_a_repeat_committed_by_a_concurrent_request_is_counted(engine, fixture_definitions):
    """Another request stores one of this request's event IDs after this one's reads
    found it new: the insert fails, and the events are stored one by one instead."""
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add(Lead(id="lead-1", email="a@example.com", stage="lead"))
    intake = Intake(fixture_definitions, sessions, client=None, task_queue="unused")
    raced = []

    def other_request_first(_connection, _cursor, statement, *_args) -> None:
        if statement.startswith("INSERT INTO responses") and not raced:
            raced.append(1)
            intake.store_events([EventIn(type="page.view", email="a@example.com",
                                         event_id="e2")], source="other")  # fmt: skip

    event.listen(engine, "before_cursor_execute", other_request_first)
    events = [EventIn(type="page.view", email="a@example.com", event_id=f"e{n}")
              for n in (1, 2, 3)]  # fmt: skip
    result = intake.store_events(events, source="test")
    assert [row.event_id for row in result.stored] == ["e1", "e3"]
    assert result.duplicates == 1
    with sessions() as session:
        assert session.scalars(select(Response.source).order_by(Response.event_id)).all() == [
            "test", "other", "test"]  # fmt: skip
        assert session.scalar(select(Response.duplicates).where(Response.event_id == "e2")) == 1
