"""SQLite's writers take turns: a lock among a process's threads, then a file lock among
processes, before SQLite's own write lock.

SQLite has one writer, and its busy handler makes the others sleep (1, 2, 5 ... up to
100 ms a try) and look again: at load the lock sat free while its waiters slept, the
inbox's inserts waited 100-300 ms each and the worker's scoring sometimes 5 s, starved
by the API's writers. Queued here, a writer starts as soon as the one before commits: in
a process on a `threading.Lock`, across processes (the API and `worker.py`) on an
`flock` of `<database>-writers.lock`, tried every 0.5-2 ms by at most one thread per
process. A writer that does not take turns (the sqlite3 shell, say) still meets SQLite's
busy handler, and the wait is bounded as SQLite's is (`set_busy_timeout`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: turns among one process's threads only
    fcntl = None  # type: ignore[assignment]

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE")
_LONGEST_NAP = 0.002  # seconds between tries of the file lock


class WriterTurns:
    """One writer at a time among every process using `path` (None: this process only)."""

    def __init__(self, lock_path: str | None):
        self._threads = threading.Lock()
        self._lock_path = lock_path if fcntl is not None else None
        self._fd: int | None = None
        self._fd_pid = 0  # a forked child opens its own: an inherited one is shared

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=max(timeout, 0)):
            return False
        if self._lock_path is None:
            return True
        fd, nap = self._file(), 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._threads.release()
                    return False
                time.sleep(nap)
                nap = min(nap * 2, _LONGEST_NAP)

    def release(self) -> None:
        if self._lock_path is not None:
            fcntl.flock(self._file(), fcntl.LOCK_UN)
        self._threads.release()

    def _file(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd_pid = os.getpid()
        return self._fd


def gated_connection(database: str | None) -> type[sqlite3.Connection]:
    """A connection class whose writers take turns (`WriterTurns`) on `database`'s file."""
    on_disk = bool(database) and database != ":memory:" and not database.startswith("file:")
    turns = WriterTurns(f"{database}-writers.lock" if on_disk else None)

    class GatedCursor(sqlite3.Cursor):
        def execute(self, sql, parameters=(), /):
            with self.connection.turn_for(sql):
                return super().execute(sql, parameters)

        def executemany(self, sql, seq_of_parameters, /):
            with self.connection.turn_for(sql):
                return super().executemany(sql, seq_of_parameters)

    class GatedConnection(sqlite3.Connection):
        holding = False
        wait = 30.0  # seconds, as the busy timeout: set_busy_timeout() sets both

        def cursor(self, factory=GatedCursor):
            return super().cursor(factory)

        @contextlib.contextmanager
        def turn_for(self, sql: str) -> Iterator[None]:
            """A write statement takes the turn first; it is given back at the end of the
            transaction, or at once if none is open after it (autocommit, a failed BEGIN)."""
            if not self.holding and sql.lstrip()[:15].upper().startswith(_WRITES):
                if not turns.acquire(self.wait):
                    raise sqlite3.OperationalError("database is locked (waiting for a writer)")
                self.holding = True
            try:
                yield
            finally:
                if self.holding and not self.in_transaction:
                    self._give_turn()

        def commit(self):
            try:
                super().commit()
            finally:
                self._give_turn()

        def rollback(self):
            try:
                super().rollback()
            finally:
                self._give_turn()

        def close(self):
            try:
                super().close()
            finally:
                self._give_turn()

        def _give_turn(self) -> None:
            if self.holding:
                self.holding = False
                turns.release()

    return GatedConnection


def set_busy_timeout(dbapi_connection: sqlite3.Connection, ms: int) -> int:
    """Set how long this SQLite connection waits for the write lock; returns the old wait."""
    old = dbapi_connection.execute("PRAGMA busy_timeout").fetchone()[0]
    dbapi_connection.execute(f"PRAGMA busy_timeout = {int(ms)}")
    if hasattr(dbapi_connection, "wait"):  # a gated connection: its turn, waited as long
        dbapi_connection.wait = ms / 1000
    return old
