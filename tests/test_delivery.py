"""Quiet hours in the lead's time zone and frequency caps across sequences.

The rules are pure functions (channels/policy.py), checked here with examples and a
hypothesis property; then through the send activity on a real database, and through
the lead workflow on the time-skipping server, where a held-back send waits on a
durable timer and shows in the lead's state.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.policy import cap_release, earliest_send_time, window_opening
from models.db import Message
from models.definitions import DeliveryPolicy, FrequencyCap, SendWindow
from models.workflow_io import SendRequest, StartEnrollment
from services.definitions import check_definitions
from services.intake import Intake, LeadIn
from services.runtime import build_activities
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import running_harness

PARIS = ZoneInfo("Europe/Paris")
SMS_HOURS = SendWindow(days="weekdays", hours="09:00-20:00")
DAY, WEEK = 86400, 604800


def paris(*args) -> datetime:
    return datetime(*args, tzinfo=PARIS)


# --- quiet hours ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "opens"),
    [
        (paris(2026, 11, 24, 10, 30), paris(2026, 11, 24, 10, 30)),  # Tuesday, inside
        (paris(2026, 11, 24, 7, 0), paris(2026, 11, 24, 9, 0)),  # before the window
        (paris(2026, 11, 24, 20, 0), paris(2026, 11, 25, 9, 0)),  # the end is exclusive
        (paris(2026, 11, 27, 22, 15), paris(2026, 11, 30, 9, 0)),  # Friday night -> Monday
        (paris(2026, 11, 28, 12, 0), paris(2026, 11, 30, 9, 0)),  # Saturday
    ],
)
def test_sms_window_in_the_leads_time_zone(moment, opens):
    assert window_opening(moment.astimezone(UTC), PARIS, SMS_HOURS) == opens


def test_window_across_a_daylight_saving_change():
    new_york = ZoneInfo("America/New_York")
    window = SendWindow(days="every day", hours="09:00-20:00")
    # 2026-03-08: clocks go forward at 02:00. 09:00 that day is 13:00 UTC, not 14:00.
    opens = window_opening(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), new_york, window)
    assert opens == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    assert opens.astimezone(new_york).hour == 9


def test_email_any_time_is_never_held():
    moment = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)  # a Sunday, 3 am
    assert window_opening(moment, PARIS, SendWindow()) == moment


ZONES = ["UTC", "Europe/Paris", "America/Los_Angeles", "Asia/Kolkata", "Australia/Sydney"]


@given(
    moment=st.datetimes(datetime(2025, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    zone=st.sampled_from(ZONES),
    days=st.sets(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1),
    start=st.integers(0, 23 * 60),
    length=st.integers(1, 24 * 60),
)
def test_window_opening_is_the_first_allowed_moment(moment, zone, days, start, length):
    end = min(start + length, 24 * 60)
    window = SendWindow(
        days=sorted(days),
        hours=f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}",
    )
    tz = ZoneInfo(zone)

    def inside(instant: datetime) -> bool:
        local = instant.astimezone(tz)
        minute = local.hour * 60 + local.minute
        return local.weekday() in window.weekdays and start <= minute < end

    opens = window_opening(moment, tz, window)
    assert opens >= moment
    assert opens - moment <= timedelta(days=8)
    if opens == moment:
        assert inside(moment)
    else:
        assert inside(opens) or inside(opens + timedelta(hours=1))  # a DST gap at the start
        assert not inside(opens - timedelta(minutes=1)) or opens - timedelta(minutes=1) < moment


# --- frequency caps -------------------------------------------------------------------------


def test_caps_release_when_the_oldest_counted_send_leaves_the_period():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    one_a_day = FrequencyCap(max=1, per="1d")
    three_a_week = FrequencyCap(max=3, per="1w")
    assert cap_release(now, [one_a_day], []) == (now, [])
    sent = [now - timedelta(hours=10)]
    assert cap_release(now, [one_a_day], sent) == (now + timedelta(hours=14), [one_a_day])
    sent = [now - timedelta(days=d) for d in (6, 4, 2)]  # three this week
    released, held_by = cap_release(now, [one_a_day, three_a_week], sent)
    assert released == now + timedelta(days=1) and held_by == [three_a_week]
    assert cap_release(now, [three_a_week], [now - timedelta(days=8)] * 5) == (now, [])


def test_caps_and_quiet_hours_together():
    # Friday 19:00 Paris, an SMS sent at 10:00 today: the cap frees at 10:00 Saturday, the
    # window is shut all weekend, so Monday 09:00; both reasons are named.
    due = paris(2026, 11, 27, 19, 0).astimezone(UTC)
    sent = [paris(2026, 11, 27, 10, 0).astimezone(UTC)]
    result = earliest_send_time(due, PARIS, SMS_HOURS, [FrequencyCap(max=1, per=DAY)], sent, "sms")
    assert result.at == paris(2026, 11, 30, 9, 0)
    assert result.reasons == (
        "frequency cap: at most 1 sms per 1d",
        "quiet hours: sms goes out weekdays 09:00-20:00 (Europe/Paris)",
    )
    assert not earliest_send_time(result.at, PARIS, SMS_HOURS, [], sent, "sms").deferred


# --- definitions ----------------------------------------------------------------------------


def test_delivery_yaml_problems_name_line_and_field(tmp_path):
    root = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "delivery.yaml").write_text(
        textwrap.dedent(
            """\
            send_windows:
              email: always
              sms: {days: funday, hours: "09:00-20:00"}
            frequency_caps:
              email:
                - {max: 0, per: 1d}
                - {max: 3, per: "a week"}
              fax: []
            """
        )
    )
    (root / "sequences" / "quick.yaml").write_text(
        (root / "sequences" / "quick.yaml").read_text()
        + 'send_windows:\n  sms: {days: weekdays, hours: "20:00-09:00"}\n'
    )
    _definitions, problems = check_definitions(root)
    found = {(p.file.rsplit("/", 1)[-1], p.line, p.field) for p in problems}
    assert ("delivery.yaml", 3, "send_windows.sms.days") in found
    assert ("delivery.yaml", 6, "frequency_caps.email.0.max") in found
    assert ("delivery.yaml", 7, "frequency_caps.email.1.per") in found
    assert any(p.field.startswith("frequency_caps.fax") for p in problems)
    assert any(
        p.file.endswith("quick.yaml") and "end after they start" in p.message for p in problems
    )


# --- the send activity ----------------------------------------------------------------------


@pytest.fixture
def strict_definitions(fixture_definitions):
    """The fixture definitions with a real policy: SMS on weekday hours, 1 email a day."""
    policy = DeliveryPolicy(
        send_windows={"email": SendWindow(), "sms": SMS_HOURS},
        frequency_caps={"email": (FrequencyCap(max=1, per=DAY),), "sms": ()},
    )
    return dataclasses.replace(fixture_definitions, delivery=policy)


def test_deferred_send_is_recorded_and_sent_when_allowed(settings, database, strict_definitions):
    activities = build_activities(settings, database, strict_definitions).lead
    intake = Intake(strict_definitions, database.sessions, client=None, task_queue="unused")
    lead, _ = intake.upsert_lead(LeadIn(email="zoe@example.fr", phone="+33612345678",
                                        timezone="Europe/Paris"))  # fmt: skip
    for sequence in ("month", "quick"):
        activities.start_enrollment(
            StartEnrollment(lead_id=lead.id, enrollment_id=f"{lead.id}:{sequence}",
                            workflow_id="w", sequence_id=sequence, sequence_version=1)
        )  # fmt: skip

    def request(sequence, step, channel, due, **extra):
        return SendRequest(lead_id=lead.id, enrollment_id=f"{lead.id}:{sequence}",
                           sequence_id=sequence, step_id=step, visit=1, channel=channel,
                           template="hello" if channel == "email" else "ping",
                           due_at=due.astimezone(UTC), **extra)  # fmt: skip

    saturday = paris(2027, 1, 2, 11, 0)  # in the future, so the activity judges at `due_at`
    sms = activities.send_message(request("month", "text", "sms", saturday))
    assert sms.status == "deferred" and sms.retry_at == paris(2027, 1, 4, 9, 0)
    assert sms.reason.startswith("quiet hours: sms goes out weekdays 09:00-20:00")
    with database.sessions() as session:
        row = session.get(Message, sms.message_id)
        assert (row.status, row.recipient) == ("deferred", "")  # nothing went out
    sms = activities.send_message(request("month", "text", "sms", paris(2027, 1, 4, 9, 0)))
    assert sms.status == "sent"

    # Caps count across sequences: month's email holds back quick's for a day.
    assert activities.send_message(request("month", "hi", "email", saturday)).status == "sent"
    later = activities.send_message(request("quick", "hi", "email", saturday + timedelta(hours=3)))
    assert later.status == "deferred" and later.retry_at == saturday + timedelta(days=1)
    assert later.reason == "frequency cap: at most 1 email per 1d"
    # A sequence that ignores caps is neither held back nor counted.
    exempt = activities.send_message(
        request("quick", "demo", "email", saturday + timedelta(hours=4), ignore_frequency_caps=True)
    )
    assert exempt.status == "sent"
    resent = activities.send_message(request("quick", "hi", "email", saturday + timedelta(days=1)))
    assert resent.status == "sent" and resent.message_id == later.message_id  # the same claim


# --- the workflow --------------------------------------------------------------------------


def zone_where_it_is_3am(now: datetime) -> str:
    """A fixed-offset zone where it is 03:xx at `now`: outside any 09:00-20:00 window."""
    offset = (3 - now.hour) % 24
    offset = offset - 24 if offset > 12 else offset
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-5 is UTC+5


async def test_quiet_hours_and_caps_defer_on_durable_timers(
    time_skipping_env, sqlite_settings, strict_definitions
):
    # The time-skipping server's clock (not the wall clock) is the one that counts.
    zone = zone_where_it_is_3am(await time_skipping_env.get_current_time())
    async with running_harness(time_skipping_env, sqlite_settings, strict_definitions) as harness:
        # quick: welcome email, 2s, ping SMS (quiet hours), 1h, later email (capped).
        lead_id = await harness.enroll("quick", email="night@example.com",
                                       phone="+14155550142", timezone=zone)  # fmt: skip
        state = await harness.until(lead_id, lambda s: s.deferred is not None)
        assert state.deferred.step_id == "ping" and state.deferred.channel == "sms"
        assert state.deferred.reason.startswith("quiet hours")
        opens = state.deferred.until.astimezone(ZoneInfo(zone))
        assert (opens.hour, opens.minute, opens.weekday() < 5) == (9, 0, True)
        # The workflow sleeps on a durable timer until then.
        assert abs(state.next_action_at - state.deferred.until) < timedelta(seconds=1)
        assert harness.sent_steps(lead_id) == ["welcome"]

        now = await harness.env.get_current_time()
        await harness.env.sleep(state.deferred.until - now + timedelta(hours=2))
        state = await harness.until(
            lead_id, lambda s: s.deferred is not None and s.deferred.step_id == "later"
        )
        assert state.deferred.reason == "frequency cap: at most 1 email per 1d"
        assert harness.sent_steps(lead_id) == ["welcome", "ping"]

        await harness.env.sleep(timedelta(days=2))
        await harness.until(lead_id, lambda s: s.enrollment_status == "completed")
    messages = {m.step_id: m for m in harness.rows(Message, lead_id)}
    assert [messages[s].status for s in ("welcome", "ping", "later")] == ["sent"] * 3
    ping_local = messages["ping"].scheduled_at.replace(tzinfo=UTC).astimezone(ZoneInfo(zone))
    assert (ping_local.hour, ping_local.minute) == (9, 0)
    gap = messages["later"].scheduled_at - messages["welcome"].scheduled_at
    # The cap released it a day after the welcome (timers fire within milliseconds).
    assert timedelta(days=1) <= gap < timedelta(days=1, seconds=1)
