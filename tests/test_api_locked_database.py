"""No request handler holds the event loop (issue 14, point 5): with the database locked,
/health answers at once, and the request that needs the lock is answered 503 with
Retry-After in bounded time, nothing stored.

The app runs in the test's own event loop (httpx's ASGI transport), so a handler that
queried the database on the loop would hold /health up until its query gave up (the
30 s of SQLite's busy timeout). Locked for real: on SQLite another connection holds
the write lock (readers go on: WAL), on PostgreSQL the tables are locked ACCESS
EXCLUSIVE (readers wait too) and the statement timeout ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from api import handoffs
from api.app import create_app
from api.database import HandlerDatabase
from models.db import Lead, Response
from services.intake import Intake
from services.runtime import build_links, open_database, sync_sales_reps
from tests.harness import lead_with_handoff

AUTH = {"Authorization": "Bearer test-token"}
WAIT = 3.0  # seconds a request waits for the lock (SQLite busy timeout, PG statement timeout)
HEALTHY = 1.0  # the figure for /health while the database is locked
ANSWERED = 10.0  # the locked request's 503 comes within this (the engine's own wait: 30 s)


@dataclass
class Api:
    client: httpx.AsyncClient
    url: str
    sessions: object
    paths: dict[str, str]
    intake: Intake
    lead: Lead


@pytest.fixture
async def api(settings, fixture_definitions, dev_server_env) -> AsyncIterator[Api]:
    url = settings.effective_database_url
    if url.startswith("postgresql"):  # a statement waiting on a lock gives up after WAIT
        url += f"?options=-c%20statement_timeout%3D{int(WAIT * 1000)}"
    database = open_database(settings.model_copy(update={"database_url": url}))
    sync_sales_reps(database, fixture_definitions)
    intake = Intake(fixture_definitions, database.sessions, dev_server_env.client,
                    settings.task_queue)  # fmt: skip
    lead, handoff = lead_with_handoff(intake, database)
    links = build_links(settings)
    paths = {
        "unsubscribe": links.unsubscribe_url(lead.id).split("/", 3)[3],
        "handoff page": links.handoff_url(handoff.id, "alice").split("/", 3)[3],
        "answer": f"handoffs/{handoff.id}/answer",
    }
    app = create_app(intake, settings, relay=False, database_wait=WAIT)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture") as client:
        yield Api(client, url, database.sessions, paths, intake, lead)
    database.engine.dispose()


@contextlib.contextmanager
def locked(url: str) -> Iterator[None]:
    """SQLite: another connection holds the write lock. PostgreSQL: the tables are
    locked against readers and writers."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        holder = sqlite3.connect(parsed.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(parsed.set(drivername="postgresql", query={})
                                 .render_as_string(hide_password=False))  # fmt: skip
        holder.execute("LOCK TABLE leads, responses, handoffs IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


REQUESTS = {
    "POST /leads": lambda p: ("POST", "/leads", {"json": {"email": "new@example.com"}}),
    "POST /events": lambda p: ("POST", "/events", {"json": {"type": "page.view",
                                                            "email": "ada@example.com"}}),
    "POST /unsubscribe": lambda p: ("POST", f"/{p['unsubscribe']}", {}),
    "GET /unsubscribe": lambda p: ("GET", f"/{p['unsubscribe']}", {}),
    "GET /handoffs/{id}": lambda p: ("GET", f"/{p['handoff page']}", {}),
    "POST /handoffs/{id}/answer": lambda p: ("POST", f"/{p['answer']}",
                                             {"json": {"answer": "accept"}}),
}  # fmt: skip
# These only read the database (an answer is the workflow's to store): a writer's lock
# on SQLite (WAL) leaves them be.
READS_ONLY = {"GET /unsubscribe", "GET /handoffs/{id}", "POST /handoffs/{id}/answer"}


@pytest.mark.parametrize("request_name", REQUESTS)
async def test_a_locked_database_holds_up_only_the_requests_that_need_it(api, request_name):
    method, path, extra = REQUESTS[request_name](api.paths)
    stored_before = stored(api)
    with locked(api.url), no_collection_pause():
        started = time.monotonic()
        waiting = asyncio.create_task(api.client.request(method, path, headers=AUTH, **extra))
        # /health, asked once the request waits for the lock: a loop held by a handler
        # would not even wake this up before the handler's query gave up.
        await asyncio.sleep(0.3)
        health = await api.client.get("/health")
        health_took = time.monotonic() - started - 0.3
        answer = await waiting
        took = time.monotonic() - started
    assert health.status_code == 200 and health_took < HEALTHY, health_took
    sqlite = api.url.startswith("sqlite")
    if sqlite and request_name in READS_ONLY:  # answered as ever (the answer: 409, no
        assert answer.status_code in (200, 409), answer.text  # workflow for the lead)
        return
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "10" and "send it again" in answer.json()["detail"]
    assert took < ANSWERED, took
    assert stored(api) == stored_before  # nothing stored


@contextlib.contextmanager
def no_collection_pause() -> Iterator[None]:
    """Late in a full run the test process holds millions of objects, and a full
    garbage collection landing in the timed window once stalled /health for 1.3 s (CI):
    collected before, paused during."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def stored(api: Api) -> int:
    with api.sessions() as session:
        return session.scalar(select(func.count()).select_from(Response))


async def test_an_answer_no_worker_takes_is_503_in_bounded_time(api, monkeypatch):
    """The lead's workflow is started, but no worker runs it: the update that carries the
    answer would wait for one indefinitely, and the rep with it."""
    monkeypatch.setattr(handoffs, "ANSWER_TIMEOUT", 1.0)
    await api.intake.enroll(api.lead, new_lead=True)  # started; nothing polls its queue
    started = time.monotonic()
    answer = await api.client.post(f"/{api.paths['answer']}", json={"answer": "accept"},
                                   headers=AUTH)  # fmt: skip
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "10", answer.text
    assert "did not take the answer within 1 s" in answer.json()["detail"]
    assert time.monotonic() - started < 5


def test_only_the_apis_calls_wait_less_for_a_sqlite_lock(sqlite_settings):
    """The shorter wait is set on a connection while an API call has it, and taken off
    when it is returned: the worker's calls on the same engine keep the engine's own."""
    database = open_database(sqlite_settings)
    handler_db = HandlerDatabase(database.sessions, wait=WAIT)
    try:
        assert asyncio.run(handler_db.run(busy_timeout, database.sessions)) == WAIT * 1000
        assert busy_timeout(database.sessions) == 30_000  # models.db.make_engine's
    finally:
        database.engine.dispose()


def busy_timeout(sessions) -> int:
    with sessions() as session:
        return session.execute(text("PRAGMA busy_timeout")).scalar()
