"""When a send may go out: send windows (quiet hours) and frequency caps. Pure functions.

The send activity asks `earliest_send_time` before calling a provider; a later
answer than the due time defers the send, and the lead workflow waits for it on
a durable timer. Times are aware datetimes; windows are in the lead's time zone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from models.definitions import FrequencyCap, SendWindow


@dataclass(frozen=True)
class SendTime:
    at: datetime
    reasons: tuple[str, ...] = ()  # why `at` is later than the due time; empty if not

    @property
    def deferred(self) -> bool:
        return bool(self.reasons)


def window_opening(moment: datetime, zone: ZoneInfo, window: SendWindow) -> datetime:
    """`moment` if it is inside the window, else the next time the window opens."""
    if window.always:
        return moment
    start_minute, end_minute = window.minutes
    local_day = moment.astimezone(zone).date()
    for offset in range(8):
        day = local_day + timedelta(days=offset)
        if day.weekday() not in window.weekdays:
            continue
        midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
        # Wall-clock arithmetic: 09:00 local is 09:00 on DST days as well.
        start = (midnight.replace(tzinfo=None) + timedelta(minutes=start_minute)).replace(
            tzinfo=zone
        )
        end = (midnight.replace(tzinfo=None) + timedelta(minutes=end_minute)).replace(tzinfo=zone)
        if moment < start:
            return start
        if moment < end:
            return moment
    raise AssertionError("a send window opens at least once a week")  # days is never empty


def cap_release(moment: datetime, caps: Iterable[FrequencyCap], sent: list[datetime]):
    """(earliest time >= moment at which every cap has room, the caps that held it back).

    A cap counts sends in the half-open period (t - per, t].
    """
    held_by: list[FrequencyCap] = []
    for cap in caps:
        period = timedelta(seconds=cap.per)
        recent = sorted(s for s in sent if moment - period < s <= moment)
        if len(recent) >= cap.max:
            # Once the (len - max)th send leaves the period, only max - 1 remain.
            moment = max(moment, recent[len(recent) - cap.max] + period)
            held_by.append(cap)
    return moment, held_by


def earliest_send_time(
    due: datetime,
    zone: ZoneInfo,
    window: SendWindow,
    caps: Iterable[FrequencyCap],
    sent: list[datetime],
    channel: str,
) -> SendTime:
    """The first moment at or after `due` inside the window with room under every cap."""
    caps = tuple(caps)
    moment, reasons = due, []
    for _round in range(100):  # each round only moves forward; a handful always suffice
        opened = window_opening(moment, zone, window)
        if opened != moment and not any(r.startswith("quiet hours") for r in reasons):
            reasons.append(f"quiet hours: {channel} goes out {window.describe()} ({zone.key})")
        released, held_by = cap_release(opened, caps, sent)
        for cap in held_by:
            reason = f"frequency cap: {cap.describe(channel)}"
            if reason not in reasons:
                reasons.append(reason)
        if released == opened == moment:
            return SendTime(moment, tuple(reasons))
        moment = released
    raise RuntimeError(f"no send time found after {due} for {channel}")
