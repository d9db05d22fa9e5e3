"""Pausing and resuming a sequence, on the time-skipping server with real activities.

A paused sequence's send is held (deferred "sequence paused", never dropped) while its
waits go on; resuming wakes the lead at once, and a send resumed in quiet hours waits for
the window; nothing is sent twice. Then the CLI.
"""

from __future__ import annotations

import shutil
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from channels.policy import window_opening
from cli.app import app
from models.db import AuditEntry, Message, PausedSequence
from models.definitions import SendWindow
from models.workflow_io import PAUSED_REASON
from services.definitions import load_definitions
from services.sequence_pause import UnknownSequence, pause, pause_of, resume
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import eventually, running_harness

SMS_HOURS = {"days": "weekdays", "hours": "09:00-20:00"}
PACED = {"id": "paced", "name": "Paced", "steps": [
    {"id": "welcome", "type": "email", "template": "hello"},
    {"id": "gap", "type": "wait", "duration": "1d"},
    {"id": "ping", "type": "sms", "template": "ping"},
    {"id": "rest", "type": "wait", "duration": "2d"},
    {"id": "later", "type": "email", "template": "followup"}]}  # fmt: skip


@pytest.fixture
def paced_definitions(tmp_path):
    """The fixtures, with SMS in weekday hours only and `paced`: an email, a day, an SMS."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "paced.yaml").write_text(yaml.safe_dump(PACED))
    delivery = yaml.safe_load((root / "delivery.yaml").read_text())
    delivery["send_windows"] = {"email": "always", "sms": SMS_HOURS}
    (root / "delivery.yaml").write_text(yaml.safe_dump(delivery))
    return load_definitions(root)


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, paced_definitions):
    settings = sqlite_settings.model_copy(update={"definitions_dir": paced_definitions.root})
    async with running_harness(time_skipping_env, settings, paced_definitions) as h:
        yield h


def messages(h, lead_id: str, step_id: str) -> list[Message]:
    return [m for m in h.rows(Message, lead_id) if m.step_id == step_id]


async def test_a_paused_send_is_held_and_goes_out_once_when_resumed(harness, paced_definitions):
    h, sessions = harness, harness.database.sessions
    lead_id = await h.enroll("paced", email="held@example.com", phone="+14155550100",
                             timezone="UTC")  # fmt: skip
    await h.until(lead_id, lambda s: s.step_id == "gap")
    pause(sessions, paced_definitions, "paced", "cli:test", "copy under review")
    # Past the wait and hours more: the SMS is held, not sent and not dropped.
    await h.env.sleep(timedelta(days=1, hours=3))
    state = await h.until(lead_id, lambda s: s.deferred is not None)
    assert (state.step_id, state.deferred.reason) == ("ping", PAUSED_REASON)
    (held,) = messages(h, lead_id, "ping")
    assert (held.status, held.status_reason) == ("deferred", PAUSED_REASON)
    assert h.sent_steps(lead_id) == ["welcome"]
    assert pause_of(sessions, "paced").held_leads == 1

    # Resumed at 21:00 in the lead's zone, after the SMS window: it waits for the window.
    now = await h.env.get_current_time()
    evening = now.replace(hour=21, minute=0, second=0, microsecond=0)
    evening += timedelta(days=1) if evening <= now else timedelta(0)
    await h.env.sleep(evening - now)
    woken = await resume(h.env.client, sessions, paced_definitions, "paced", "cli:test")
    assert (woken.was_paused, woken.held_leads, woken.woken) == (True, 1, 1)
    at = await h.env.get_current_time()
    opening = window_opening(at, ZoneInfo("UTC"), SendWindow(**SMS_HOURS))
    state = await h.until(lead_id, lambda s: s.deferred and s.deferred.reason != PAUSED_REASON)
    assert state.deferred.until == opening
    await h.env.sleep(opening - at + timedelta(minutes=1))
    await eventually(lambda: h.sent_steps(lead_id) == ["welcome", "ping"], what="the SMS sent")
    (sent,) = messages(h, lead_id, "ping")  # the same message: claimed once, sent once
    assert sent.id == held.id
    assert opening <= sent.scheduled_at.replace(tzinfo=UTC) < opening + timedelta(minutes=1)
    # The rest of the sequence goes on as written.
    await h.env.sleep(timedelta(days=2, hours=1))
    await eventually(lambda: h.sent_steps(lead_id) == ["welcome", "ping", "later"])
    with sessions() as session:
        assert session.get(PausedSequence, "paced") is None
        actions = [e.action for e in session.query(AuditEntry).order_by(AuditEntry.id)]
        assert actions == ["sequence.pause", "sequence.resume"]


async def test_resuming_wakes_a_held_lead_without_waiting_for_its_recheck(
    harness, paced_definitions
):
    h, sessions = harness, harness.database.sessions
    lead_id = await h.enroll("paced", email="soon@example.com", phone="+14155550101",
                             timezone="UTC")  # fmt: skip
    pause(sessions, paced_definitions, "paced", "cli:test")
    state = await h.until(lead_id, lambda s: s.deferred is not None)  # the welcome, at once
    assert state.step_id == "welcome" and h.sent_steps(lead_id) == []
    await resume(h.env.client, sessions, paced_definitions, "paced", "cli:test")
    # No time skipped: only the resume signal can have woken it (the recheck is an hour).
    await eventually(lambda: h.sent_steps(lead_id) == ["welcome"], what="the welcome sent")
    await h.until(lead_id, lambda s: s.step_id == "gap" and s.deferred is None)


async def test_pausing_twice_or_an_unknown_sequence_changes_nothing(harness, paced_definitions):
    sessions = harness.database.sessions
    first, created = pause(sessions, paced_definitions, "paced", "cli:a", "one")
    again, created_again = pause(sessions, paced_definitions, "paced", "cli:b", "two")
    assert (created, created_again) == (True, False)
    assert (again.paused_by, again.reason) == ("cli:a", "one")
    with pytest.raises(UnknownSequence, match="no sequence 'pacd'.*known: .*paced"):
        pause(sessions, paced_definitions, "pacd", "cli:a")
    with sessions() as session:
        assert session.query(PausedSequence).count() == 1
        assert session.query(AuditEntry).count() == 1


def test_the_cli_pauses_lists_and_refuses_an_unknown_sequence(tmp_path, monkeypatch):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(root))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/n.db")
    monkeypatch.setenv("NURTURE_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    paused = runner.invoke(app, ["sequence", "pause", "month", "--reason", "new copy"])
    assert paused.exit_code == 0 and "paused month" in paused.output
    again = runner.invoke(app, ["sequence", "pause", "month"])
    assert again.exit_code == 0 and "already paused" in again.output
    listed = runner.invoke(app, ["sequence", "paused", "--json"])
    (item,) = __import__("json").loads(listed.output)
    assert (item["sequence"], item["reason"], item["held_leads"]) == ("month", "new copy", 0)
    unknown = runner.invoke(app, ["sequence", "pause", "mnth"])
    assert unknown.exit_code == 1 and "no sequence 'mnth'" in unknown.output
