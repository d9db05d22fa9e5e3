"""A rep's working time: their `working_hours` (days and hours) in their own time zone.

Pure (stdlib zoneinfo). Every datetime taken and returned is aware UTC; a naive one
is read as UTC (as SQLite hands them back). Days are walked in the rep's local
calendar, so nights, weekends and daylight-saving changes fall out of the maths:
a 09:00-17:00 day is eight hours of working time whatever the UTC offset does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from models.definitions import SalesRep

# A window has at least one day a week, so the next working moment is always within a
# week; working time is searched for at most a year ahead.
_MAX_DAYS = 366


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _local_moment(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """`minute` of the local `day` (1440: the next midnight) as UTC."""
    if minute >= 24 * 60:
        day, minute = day + timedelta(days=1), minute - 24 * 60
    local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    return local.astimezone(UTC)


def _intervals(rep: SalesRep, since: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The rep's working intervals [start, end) in UTC, in order, from the one around
    `since` on; intervals of consecutive days that touch are merged."""
    zone = _zone(rep.timezone)
    window = rep.working_hours
    first, end_minute = window.minutes
    weekdays = window.weekdays
    day = since.astimezone(zone).date() - timedelta(days=1)
    pending: tuple[datetime, datetime] | None = None
    for _ in range(_MAX_DAYS + 2):
        if day.weekday() in weekdays:
            start, end = _local_moment(day, first, zone), _local_moment(day, end_minute, zone)
            if end > start:  # a window inside a skipped DST hour is empty
                if pending and pending[1] >= start:
                    pending = (pending[0], max(pending[1], end))
                else:
                    if pending and pending[1] > since:
                        yield pending
                    pending = (start, end)
        day += timedelta(days=1)
    if pending and pending[1] > since:
        yield pending
    raise ValueError(f"rep {rep.id!r} has no working time within {_MAX_DAYS} days")


def is_working(rep: SalesRep, at: datetime) -> bool:
    """Whether `at` is inside the rep's working hours (in their time zone)."""
    at = _utc(at)
    start, _end = next(_intervals(rep, at))
    return start <= at


def next_working_start(rep: SalesRep, at: datetime) -> datetime:
    """`at` itself if the rep is working then, else when their next working period starts."""
    at = _utc(at)
    start, _end = next(_intervals(rep, at))
    return max(start, at)


def add_working_time(rep: SalesRep, start: datetime, seconds: int) -> datetime:
    """The moment `seconds` of the rep's working time have passed after `start`.

    Time outside working hours does not count: 15 working minutes from Friday 16:50
    (hours 09:00-17:00, weekdays) end on Monday at 09:05, in the rep's time zone.
    """
    if seconds < 0:
        raise ValueError("seconds of working time cannot be negative")
    start = _utc(start)
    remaining = timedelta(seconds=seconds)
    if not remaining:
        return start
    for begin, end in _intervals(rep, start):
        begin = max(begin, start)
        if begin + remaining <= end:
            return begin + remaining
        remaining -= end - begin
    raise AssertionError("unreachable: _intervals raises when it runs out")
