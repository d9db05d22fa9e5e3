"""PostgreSQL connections give up and statements are cancelled in bounded time
(NURTURE_DB_CONNECT_TIMEOUT, NURTURE_DB_STATEMENT_TIMEOUT), against the machine's real
PostgreSQL and real sockets that never answer."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from infra.settings import Settings
from services.runtime import open_database
from tests.conftest import FIXTURE_DEFINITIONS, fresh_postgres_database

pytestmark = pytest.mark.postgres


def pg_settings(tmp_path, url: str, **extra) -> Settings:
    return Settings(NURTURE_STATE_DIR=tmp_path / "state", NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
                    DATABASE_URL=url, NURTURE_API_TOKEN="test-token", **extra)  # fmt: skip


def test_a_statement_longer_than_the_timeout_is_cancelled(tmp_path):
    with fresh_postgres_database() as url:
        database = open_database(pg_settings(tmp_path, url, NURTURE_DB_STATEMENT_TIMEOUT=0.5))
        try:
            with database.engine.connect() as connection:
                assert connection.scalar(text("SHOW statement_timeout")) == "500ms"
                started = time.monotonic()
                with pytest.raises(OperationalError, match="statement timeout"):
                    connection.execute(text("SELECT pg_sleep(5)"))
                assert time.monotonic() - started < 3
        finally:
            database.engine.dispose()


def test_the_statement_timeout_can_be_turned_off_and_the_url_wins(tmp_path):
    with fresh_postgres_database() as url:
        off = open_database(pg_settings(tmp_path, url, NURTURE_DB_STATEMENT_TIMEOUT=0))
        given = open_database(pg_settings(
            tmp_path, f"{url}?options=-c%20statement_timeout%3D7s&connect_timeout=9"))  # fmt: skip
        try:
            with off.engine.connect() as connection:
                assert connection.scalar(text("SHOW statement_timeout")) == "0"
            with given.engine.connect() as connection:
                assert connection.scalar(text("SHOW statement_timeout")) == "7s"
                assert connection.connection.dbapi_connection.info.get_parameters().get(
                    "connect_timeout") == "9"  # fmt: skip
        finally:
            off.engine.dispose()
            given.engine.dispose()


@pytest.fixture(params=["no-answer-to-syn", "connected-but-silent"])
def dead_postgres(request) -> Iterator[int]:
    """A port where nothing PostgreSQL answers: either the connection itself never
    completes (a full accept queue: the kernel drops the SYN, as with a blackholed
    address) or it completes and no byte ever comes back (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # takes the one queue slot
    if request.param == "connected-but-silent":
        filler.close()
        listener.close()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = listener.getsockname()[1]
    try:
        yield port
    finally:  # closing the listener resets whatever still waits on it
        filler.close()
        listener.close()


def test_a_connection_to_a_dead_address_gives_up_within_the_connect_timeout(
    tmp_path, dead_postgres
):
    settings = pg_settings(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{dead_postgres}/x",
                           NURTURE_DB_CONNECT_TIMEOUT=2)  # fmt: skip
    started = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    opening = pool.submit(open_database, settings)
    pool.shutdown(wait=False)  # should it hang (libpq's default: 130 s), the test fails now
    try:
        opening.result(timeout=15)
    except OperationalError as exc:
        assert "timeout" in str(exc)
    else:
        pytest.fail("connected to a port where nothing answers")
    assert time.monotonic() - started < 6
