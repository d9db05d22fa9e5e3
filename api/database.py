"""The request handlers' database calls: in a worker thread, never on the event loop, and
never waiting long for a SQLite lock.

A handler that queried the database on the event loop held up every other request: with
the SQLite file locked by another writer, even /health waited out SQLite's 30 s busy
timeout. In a thread the loop goes on. And while an API call has a SQLite connection
checked out, the connection waits at most `wait` seconds for a lock (then SQLite's
"database is locked", answered 503 + Retry-After with nothing stored, api/app.py): a
caller is told to come back rather than kept hanging. The worker's calls on the same
engine (one process in `nurture dev`) keep the engine's own timeout. PostgreSQL is
bounded by NURTURE_DB_STATEMENT_TIMEOUT instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from models.sqlite_writers import set_busy_timeout

DATABASE_WAIT = 5.0  # seconds an API call waits for a SQLite lock
T = TypeVar("T")

# Set in the worker thread for the duration of an API call: the busy timeout it wants (ms).
_API_WAIT_MS: ContextVar[int | None] = ContextVar("nurture_api_wait_ms", default=None)
_SAVED = "nurture_saved_busy_timeout"  # in a pooled connection's info while shortened


class HandlerDatabase:
    """`await db.run(fn, *args)`: `fn` (synchronous, database work) in a worker thread."""

    def __init__(self, sessions: sessionmaker, wait: float = DATABASE_WAIT):
        self.wait_ms = max(1, round(wait * 1000))
        engine = sessions.kw.get("bind")
        if isinstance(engine, Engine) and engine.dialect.name == "sqlite":
            _shorten_waits_of_api_calls(engine)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(self._call, fn, args, kwargs)

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        token = _API_WAIT_MS.set(self.wait_ms)
        try:
            return fn(*args, **kwargs)
        finally:
            _API_WAIT_MS.reset(token)


def _shorten_waits_of_api_calls(engine: Engine) -> None:
    if not event.contains(engine, "checkout", _on_checkout):
        event.listen(engine, "checkout", _on_checkout)
        event.listen(engine, "checkin", _on_checkin)


def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    wait = _API_WAIT_MS.get()
    if wait is None:
        return  # not an API call: the engine's own timeout
    record.info[_SAVED] = set_busy_timeout(dbapi_connection, wait)


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    saved = record.info.pop(_SAVED, None)
    if saved is not None and dbapi_connection is not None:
        with contextlib.suppress(sqlite3.Error):  # a closed connection is dropped anyway
            set_busy_timeout(dbapi_connection, saved)
