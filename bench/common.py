"""What the benchmarks share (bench/response_throughput.py, bench/speed_to_lead.py,
bench/enroll_and_handoff.py): SendGrid's signature, a count of the API's log lines,
waiting and counting rows, and the figures' format. The stack they run is testkit.stack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from sqlalchemy import func, select

from services.runtime import Database


class LogCounter(logging.Handler):
    """Counts the API's log lines: relay re-deliveries and failed first deliveries."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("relay delivered"):
            self.counts["relay rounds that delivered"] += 1
            self.counts["events delivered by the relay"] += int(message.split()[2])
        elif record.levelno >= logging.WARNING:
            self.counts[f"warning: {message[:80]}"] += 1

    @contextlib.contextmanager
    def attached(self) -> Iterator[LogCounter]:
        """Count the `nurture` logger's lines (INFO and up) until the block exits."""
        nurture_log = logging.getLogger("nurture")
        nurture_log.addHandler(self)
        nurture_log.setLevel(logging.INFO)
        try:
            yield self
        finally:
            nurture_log.removeHandler(self)


def count_rows(database: Database, model, *where) -> int:
    """How many rows of `model` match `where`."""
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


async def wait_until(done: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout
    while not done() and time.perf_counter() < deadline:
        await asyncio.sleep(every)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"
