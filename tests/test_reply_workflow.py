"""Replies in the lead workflow, on the time-skipping server with real activities: a
person's reply mid-wait ends the sequence at once (`on_reply: exit`, the default) and
nothing more is sent; an out-of-office is neither a reply nor engagement; a sequence with
`on_reply: continue` goes on; `on_reply: pause` holds the sends for `reply_pause` from
the last reply, and the one held goes out once after it."""

from __future__ import annotations

import shutil
from datetime import UTC, timedelta

import pytest
import yaml

from models.db import Enrollment, Message
from services.definitions import load_definitions
from services.intake import EventIn
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import running_harness

MONTH_PATH = ["welcome", "nudge", "last_try", "thanks"]  # no click, a score under 5


@pytest.fixture
def reply_definitions(tmp_path):
    """The fixtures, and `month_talk`: the month's steps with `on_reply: continue`."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = yaml.safe_load((root / "sequences" / "month.yaml").read_text())
    talk = month | {"id": "month_talk", "name": "Talks on", "on_reply": "continue"}
    (root / "sequences" / "month_talk.yaml").write_text(yaml.safe_dump(talk))
    hold = month | {"id": "month_hold", "name": "Holds", "on_reply": "pause", "reply_pause": "2d"}
    (root / "sequences" / "month_hold.yaml").write_text(yaml.safe_dump(hold))
    return load_definitions(root)


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, reply_definitions):
    settings = sqlite_settings.model_copy(update={"definitions_dir": reply_definitions.root})
    async with running_harness(time_skipping_env, settings, reply_definitions) as h:
        yield h


@pytest.mark.parametrize("reply", ["email.reply", "sms.reply"])
async def test_a_reply_mid_wait_exits_the_sequence_and_nothing_more_is_sent(harness, reply):
    lead_id = await harness.enroll(email="talker@example.com", phone="+14155550100")
    await harness.until(lead_id, lambda s: s.step_id == "pause")  # the 7-day wait
    await harness.respond(lead_id, reply)
    # At once: the wait does not run out first.
    state = await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    assert state.step_id is None and state.next_action_at is None
    await harness.env.sleep(timedelta(days=32))
    assert harness.sent_steps(lead_id) == ["welcome"]
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "replied")
    assert (await harness.state(lead_id)).responses_handled == 1  # still scored


async def test_an_out_of_office_neither_exits_nor_scores(harness):
    lead_id = await harness.enroll(email="away@example.com", phone="+14155550101")
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await harness.respond(lead_id, "email.auto_reply")
    state = await harness.until(lead_id, lambda s: s.responses_handled == 1)
    assert (state.score, state.enrollment_status, state.step_id) == (0, "active", "pause")
    await harness.env.sleep(timedelta(days=32))
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    assert harness.sent_steps(lead_id) == MONTH_PATH
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.exit_reason == "month over"


async def test_on_reply_continue_keeps_sending(harness):
    lead_id = await harness.enroll("month_talk", email="chatty@example.com",
                                   phone="+14155550102")  # fmt: skip
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await harness.respond(lead_id, "email.reply")
    state = await harness.until(lead_id, lambda s: s.score == 30)
    assert (state.enrollment_status, state.step_id) == ("active", "pause")
    await harness.env.sleep(timedelta(days=32))
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    # The reply's 30 points take the branch's `then`: thanks, not the last try.
    assert harness.sent_steps(lead_id) == ["welcome", "nudge", "thanks"]
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.exit_reason == "month over"


async def test_on_reply_pause_holds_the_sends_from_the_last_reply(harness):
    lead_id = await harness.enroll("month_hold", email="busy@example.com",
                                   phone="+14155550103")  # fmt: skip
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    start = await harness.env.get_current_time()
    # Day 9, in the wait_for: a reply holds sends 2 days. The nudge falls due on day 10.
    await harness.env.sleep(timedelta(days=9))
    await harness.respond(lead_id, "email.reply")
    await harness.until(lead_id, lambda s: s.responses_handled == 1)
    await harness.env.sleep(timedelta(days=1, hours=12))
    state = await harness.until(lead_id, lambda s: s.deferred is not None)
    assert (state.step_id, state.deferred.reason) == ("nudge", "replied: sends paused")
    # Day 10.5: a second reply moves the end to day 12.5; the nudge waits for it.
    await harness.respond(lead_id, "sms.reply")
    state = await harness.until(lead_id, lambda s: s.deferred and s.responses_handled == 2
                                and s.deferred.until - start > timedelta(days=12))  # fmt: skip
    assert harness.sent_steps(lead_id) == ["welcome"]
    await harness.env.sleep(timedelta(days=1, hours=23))  # day 12.4: still held
    assert harness.sent_steps(lead_id) == ["welcome"]
    await harness.env.sleep(timedelta(hours=3))
    await harness.until(lead_id, lambda s: s.step_id == "long_pause")
    (nudge,) = [m for m in harness.rows(Message, lead_id) if m.step_id == "nudge"]
    sent_after = nudge.scheduled_at.replace(tzinfo=UTC) - start
    assert nudge.status == "sent" and timedelta(days=12, hours=12) <= sent_after
    assert sent_after < timedelta(days=12, hours=13)
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.status == "active"  # paused, never ended by the replies


async def test_an_out_of_office_with_a_return_date_defers_the_next_send_until_then(harness):
    lead_id = await harness.enroll(email="leave@example.com", phone="+14155550104")
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    start = await harness.env.get_current_time()
    back = (start + timedelta(days=12)).replace(hour=0, minute=0, second=0, microsecond=0)
    away = EventIn(lead_id=lead_id, type="email.auto_reply", occurred_at=start,
                   data={"automatic": "subject: Out of office", "text": "away",
                         "return_date": back.isoformat()})  # fmt: skip
    await harness.intake.deliver(harness.intake.store_events([away]).stored)
    await harness.until(lead_id, lambda s: s.responses_handled == 1)
    await harness.env.sleep(timedelta(days=10, hours=1))  # the nudge falls due on day 10
    state = await harness.until(lead_id, lambda s: s.deferred is not None)
    assert (state.step_id, state.deferred.until) == ("nudge", back)
    assert state.deferred.reason == f"out of office until {back:%Y-%m-%d}"
    assert state.enrollment_status == "active" and harness.sent_steps(lead_id) == ["welcome"]
    await harness.env.sleep(back - start - timedelta(days=10) + timedelta(minutes=5))
    await harness.until(lead_id, lambda s: s.step_id == "long_pause")
    (nudge,) = [m for m in harness.rows(Message, lead_id) if m.step_id == "nudge"]
    assert nudge.status == "sent" and nudge.scheduled_at.replace(tzinfo=UTC) >= back
