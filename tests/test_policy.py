"""Send windows and frequency caps (channels/policy.py): the edges.

tests/test_delivery.py has the examples, the property and the send activity; these pin
the boundaries that mutation testing (scripts/mutation.py, docs/testing.md) found untested.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from channels.policy import SendTime, cap_release, earliest_send_time, window_opening
from models.definitions import FrequencyCap, SendWindow

PARIS = ZoneInfo("Europe/Paris")
SMS_HOURS = SendWindow(days="weekdays", hours="09:00-20:00")
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # a Tuesday, 13:00 in Paris
ONE_A_DAY = FrequencyCap(max=1, per="1d")
SECOND = timedelta(seconds=1)


def paris(*args) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def test_a_send_at_the_due_moment_counts_against_its_cap():
    assert cap_release(NOW, [ONE_A_DAY], [NOW]) == (NOW + timedelta(days=1), [ONE_A_DAY])


def test_a_send_exactly_one_period_ago_no_longer_counts():
    day_ago = NOW - timedelta(days=1)
    assert cap_release(NOW, [ONE_A_DAY], [day_ago]) == (NOW, [])
    assert cap_release(NOW, [ONE_A_DAY], [day_ago + SECOND]) == (NOW + SECOND, [ONE_A_DAY])


def test_later_sends_do_not_count_now():
    assert cap_release(NOW, [ONE_A_DAY], [NOW + SECOND]) == (NOW, [])


def test_a_cap_of_several_waits_for_the_oldest_that_matters():
    two_a_day = FrequencyCap(max=2, per="1d")
    sent = [NOW - timedelta(hours=h) for h in (20, 3, 10)]  # in any order
    # Three in the period, two allowed: room once the 10-hour-old one (not the oldest) leaves.
    assert cap_release(NOW, [two_a_day], sent) == (NOW + timedelta(hours=14), [two_a_day])
    assert cap_release(NOW, [two_a_day], sent[:1]) == (NOW, [])


def test_the_latest_release_of_several_caps_wins_whatever_their_order():
    three_a_week = FrequencyCap(max=3, per="1w")
    sent = [NOW - timedelta(days=d) for d in (6, 4, 0.5)]
    later = NOW + timedelta(days=1)  # the 6-day-old send leaves the week
    for caps in ([ONE_A_DAY, three_a_week], [three_a_week, ONE_A_DAY]):
        released, held_by = cap_release(NOW, caps, sent)
        assert released == later and three_a_week in held_by


def test_quiet_hours_and_a_cap_give_one_reason_each():
    # Tuesday 08:00 in Paris: the window opens at 09:00, but the SMS of Monday 19:00 holds
    # "1 per 30h" until Wednesday 01:00, in quiet hours again: Wednesday 09:00.
    cap = FrequencyCap(max=1, per="30h")
    due = paris(2026, 11, 24, 8, 0).astimezone(UTC)
    sent = [paris(2026, 11, 23, 19, 0).astimezone(UTC)]
    result = earliest_send_time(due, PARIS, SMS_HOURS, [cap], sent, "sms")
    assert result == SendTime(paris(2026, 11, 25, 9, 0), (
        "quiet hours: sms goes out weekdays 09:00-20:00 (Europe/Paris)",
        "frequency cap: at most 1 sms per 30h",
    ))  # fmt: skip
    assert result.deferred


def test_a_send_that_may_go_at_once_is_not_deferred():
    result = earliest_send_time(NOW, PARIS, SMS_HOURS, [ONE_A_DAY], [], "sms")
    assert result == SendTime(NOW, ()) and not result.deferred
    assert result.at is NOW


def test_each_cap_that_holds_is_named_once():
    per_hour = FrequencyCap(max=1, per="1h")
    sent = [NOW - timedelta(minutes=30)]
    result = earliest_send_time(NOW, PARIS, SendWindow(), [per_hour, ONE_A_DAY], sent, "email")
    assert result.at == NOW + timedelta(hours=23, minutes=30)
    assert result.reasons == ("frequency cap: at most 1 email per 1h",
                              "frequency cap: at most 1 email per 1d")  # fmt: skip


@pytest.mark.parametrize(
    ("moment", "opens"),
    [
        (paris(2026, 11, 24, 9, 0), paris(2026, 11, 24, 9, 0)),  # the start is inside
        (paris(2026, 11, 24, 8, 59, 59), paris(2026, 11, 24, 9, 0)),
        (paris(2026, 11, 24, 19, 59, 59), paris(2026, 11, 24, 19, 59, 59)),
    ],
)
def test_window_edges(moment, opens):
    assert window_opening(moment, PARIS, SMS_HOURS) == opens


def test_a_window_one_day_a_week_opens_up_to_a_week_later():
    sundays = SendWindow(days=["sun"], hours="10:00-11:00")
    # Sunday 11:00, just after it closed: the next Sunday.
    assert window_opening(paris(2026, 11, 29, 11, 0), PARIS, sundays) == paris(2026, 12, 6, 10)


@pytest.fixture
def machine_in_tokyo(monkeypatch):
    """The machine's own time zone far from the lead's: it must not matter."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_day_is_the_leads_own_not_the_machines(machine_in_tokyo):
    new_york = ZoneInfo("America/New_York")
    evenings = SendWindow(days="every day", hours="21:00-22:00")
    monday_8pm = datetime(2026, 11, 23, 20, 0, tzinfo=new_york)  # Tuesday in Tokyo and UTC
    opens = window_opening(monday_8pm.astimezone(UTC), new_york, evenings)
    assert opens == datetime(2026, 11, 23, 21, 0, tzinfo=new_york)
