"""The worker, observable and safe to stop: metrics, JSON logs with masking, health, SIGTERM.

Unit tests for masking, the JSON format and metric recording; then a real
`python worker.py` on the Temporal dev server, scraped and probed while a lead is
nurtured, scored and handed off, and stopped with SIGTERM, also mid-send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import ActivityEnvironment

from devstack.temporal_server import free_port
from infra import logs, metrics
from infra.logs import handler, mask
from infra.settings import Settings
from models.db import Handoff, HandoffEvent, Lead, Message
from models.workflow_io import lead_workflow_id, send_queue
from services.intake import EventIn, Intake, LeadIn
from services.runtime import load_and_prepare
from testkit.providers import ProviderServer
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import eventually

REPO = Path(__file__).resolve().parent.parent

# --- masking -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to ada@example.com now", "to a***@example.com now"),
        ("Ada.Lovelace+news@mail.example.co.uk.", "A***@mail.example.co.uk."),
        ("?email=ada%40example.com&x=1", "?email=a***%40example.com&x=1"),
        ("sms +14155550147 sent", "sms +1******0147 sent"),
        ("+1 (415) 555-0147", "+1******0147"),
        ("+44 20 7946 0958", "+4*******0958"),
        ("(415) 555-0147", "******0147"),
        ("415-555-0147 or 415.555.0147", "******0147 or ******0147"),
        ("4155550147", "******0147"),
        ("020 7946 0958", "*******0958"),
        ("07700 900123 / 07700900123", "*******0123 / *******0123"),
        ("06 12 34 56 78", "******5678"),
    ],
)
def test_masks_emails_and_phone_numbers(text, masked):
    assert mask(text) == masked
    assert mask(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "at 2026-11-23 16:20:37 and 2026-11-23T16:20:37.123Z",
        "lead=3f2a9c1e4155550147aa9bd3e0c1f2a7 handoff 12345678-1234-4abc-8def-123456789012",
        "epoch 1732380000, 1000000 bytes, score 97.1234567, v1.35.0, 192.168.100.200:9464",
        "total 80.0 (sql at 50), 23 of 1024, +1 point",
    ],
)
def test_leaves_times_ids_and_numbers_alone(text):
    assert mask(text) == text


def _log_through(log_format: str, emit) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.observability.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler(log_format, stream))
    emit(logger)
    return stream.getvalue()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_masking_covers_message_args_extra_fields_and_tracebacks(log_format):
    def emit(logger):
        logger.info(
            "sent to %s and %s", "ada@example.com", "+14155550147",
            extra={"to": "grace@example.org", "payload": {"phone": "(415) 555-0199",
                                                         "cc": ["bob@example.net"]}},
        )  # fmt: skip
        try:
            raise ValueError("refused: carol@example.com +442079460958")
        except ValueError:
            logger.exception("provider said no for %s", "dan@example.com")

    out = _log_through(log_format, emit)
    for secret in ("ada@", "grace@", "bob@", "carol@", "dan@", "4155550147", "555-0199",
                   "2079460958"):  # fmt: skip
        assert secret not in out, (secret, out)
    for shown in ("a***@example.com", "+1******0147", "d***@example.com", "c***@example.com",
                  "+4*******0958"):  # fmt: skip
        assert shown in out, (shown, out)
    if log_format == "json":
        first, second = (json.loads(line) for line in out.splitlines()[:2])
        assert first["message"] == "sent to a***@example.com and +1******0147"
        assert first["to"] == "g***@example.org"
        assert first["payload"] == {"phone": "******0199", "cc": ["b***@example.net"]}
        assert "ValueError: refused: c***@example.com +4*******0958" in second["exc_info"]


def test_the_root_handler_follows_stderr_when_it_is_swapped(monkeypatch):
    """A CLI test runner swaps sys.stderr for each command, then closes it: our root
    handler (set up by the command) must write to the stderr of the moment, not the
    closed one (which printed "--- Logging error ---" under later tests)."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    try:
        logs.setup("INFO")
        captured.close()
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        logging.getLogger("nurture.test").warning("sent to %s", "ada@example.com")
        assert now.getvalue().endswith("WARNING nurture.test sent to a***@example.com\n")
    finally:
        root.handlers[:], root.level = before
        logging.captureWarnings(False)


def test_json_lines_carry_temporal_ids_from_the_workflow_logger_extras():
    run_id = str(uuid.uuid4())

    def emit(logger):
        # What Temporal's workflow.logger adds to every record it logs.
        details = {"attempt": 1, "namespace": "default", "run_id": run_id,
                   "task_queue": "nurture", "workflow_id": "lead-abc123",
                   "workflow_type": "LeadWorkflow"}  # fmt: skip
        logger.warning("handoff %s: email notification failed", "h1",
                       extra={"temporal_workflow": details})  # fmt: skip
        logger.info("plain line")

    first, second = (json.loads(line) for line in _log_through("json", emit).splitlines())
    assert first["level"] == "WARNING" and first["message"] == (
        "handoff h1: email notification failed"
    )
    assert (first["lead_id"], first["workflow_id"], first["run_id"]) == (
        "abc123", "lead-abc123", run_id,
    )  # fmt: skip
    assert "temporal_workflow" not in first  # lifted, not repeated
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert set(second) == {"time", "level", "logger", "message"}


def test_json_lines_carry_the_running_activity_and_the_step():
    """Inside an activity (Temporal's ActivityEnvironment): activity.logger's extras, and
    the running activity for our own plain loggers, plus `step=` from the message."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id="lead-feed01", workflow_run_id="run-7",
        activity_type="send_message", attempt=3,
    )  # fmt: skip
    stream = io.StringIO()
    ours = logging.getLogger("test.observability.activity")
    ours.propagate, ours.handlers = False, [handler("json", stream)]
    ours.setLevel(logging.INFO)
    sdk = logging.getLogger(activity.logger.base_logger.name)
    sdk_handler, sdk_level = handler("json", stream), sdk.level
    sdk.addHandler(sdk_handler)
    sdk.setLevel(logging.INFO)
    try:

        def work():
            activity.logger.info("from the activity logger to ada@example.com")
            ours.info("sent email step=welcome lead=feed01")

        env.run(work)
    finally:
        sdk.removeHandler(sdk_handler)
        sdk.setLevel(sdk_level)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    from_sdk = next(r for r in records if r["message"].startswith("from the activity logger"))
    from_ours = next(r for r in records if r["message"].startswith("sent email"))
    for record in (from_sdk, from_ours):
        assert record["workflow_id"] == "lead-feed01" and record["lead_id"] == "feed01"
        assert record["run_id"] == "run-7" and record["activity"] == "send_message"
        assert record["attempt"] == 3
    assert "a***@example.com" in from_sdk["message"]
    assert from_ours["step"] == "welcome"


# --- metric recording ----------------------------------------------------------------------


def test_metrics_are_recorded_with_their_labels_and_never_raise():
    buffer = MetricBuffer(1000)
    runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    env = ActivityEnvironment()
    env.metric_meter = runtime.metric_meter
    env.info = dataclasses.replace(env.info, activity_type="send_message")

    def work():
        metrics.record(metrics.MESSAGES, channel="sms", status="deferred", sequence="quick")
        metrics.record(metrics.HANDOFF_LATENCY, 0.42)
        metrics.record(metrics.HANDOFFS, pool=None, rep="alice")

    env.run(work)
    updates = [(u.metric.name, u.value, dict(u.attributes)) for u in buffer.retrieve_updates()]
    wanted = {
        "channel": "sms",
        "status": "deferred",
        "sequence": "quick",
        "namespace": "default",
        "task_queue": "test",
        "activity_type": "send_message",
    }
    assert any(name == "nurture_messages_total" and number == 1 and wanted.items() <= labels.items()
               for name, number, labels in updates), updates  # fmt: skip
    assert any(name == "nurture_handoff_latency_seconds" and number == 0.42
               for name, number, _ in updates)  # fmt: skip
    assert any(name == "nurture_handoffs_total" and labels["pool"] == "none"
               for name, _, labels in updates)  # fmt: skip

    metrics.record(metrics.MESSAGES, channel="email", status="sent")  # outside an activity
    broken = ActivityEnvironment()
    broken.metric_meter = object()  # a meter that fails on every call
    broken.run(lambda: metrics.record(metrics.RESPONSES, type="email.open"))
    assert not metrics.enabled()


# --- a real worker process -----------------------------------------------------------------


def worker_env(tmp_path: Path, dev_server_env, **extra: str) -> dict[str, str]:
    return (
        os.environ.copy()
        | {
            "NURTURE_STATE_DIR": str(tmp_path / "state"),
            "NURTURE_DEFINITIONS": str(FIXTURE_DEFINITIONS),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'nurture.db'}",
            "TEMPORAL_ADDRESS": dev_server_env.client.service_client.config.target_host,
            "NURTURE_TASK_QUEUE": f"obs-{uuid.uuid4().hex[:8]}",
            "NURTURE_API_TOKEN": "test-token",
            "NURTURE_METRICS_HOST": "127.0.0.1",
            "NURTURE_METRICS_PORT": str(free_port()),
            "NURTURE_HEALTH_PORT": str(free_port()),
            "NURTURE_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        | extra
    )


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:  # a file, not a pipe: a full pipe would block the worker
        return subprocess.Popen([sys.executable, "worker.py"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def probe(env: dict[str, str], path: str) -> httpx.Response | None:
    """GET the health endpoint; None if nothing listens."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return await http.get(f"http://127.0.0.1:{env['NURTURE_HEALTH_PORT']}{path}")
    except httpx.TransportError:
        return None


async def until_healthy(env, worker, log: Path) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        assert worker.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no 200 from /health in 60 s"
        answer = await probe(env, "/health")
        if answer is not None and answer.status_code == 200:
            return answer
        await asyncio.sleep(0.2)


def scrape(env: dict[str, str]) -> dict[tuple[str, frozenset], float]:
    """The metrics page as {(name, labels): value}."""
    page = httpx.get(f"http://127.0.0.1:{env['NURTURE_METRICS_PORT']}/metrics", timeout=5)
    assert page.status_code == 200
    samples = {}
    for line in page.text.splitlines():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if line.startswith("#") or not found:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found[2] or ""))
        samples[(found[1], labels)] = float(found[3])
    return samples


def value(samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def stop_and_check(worker, env, log: Path) -> float:
    """SIGTERM: the health endpoint answers 503 (or no longer listens) at once, and the
    process exits 0. Returns the seconds it took to exit."""
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    answer = await probe(env, "/health")
    assert answer is None or answer.status_code == 503, answer.text
    if answer is not None:
        assert answer.json()["status"] == "stopping"
    code = await asyncio.to_thread(worker.wait, 60)
    assert code == 0, log.read_text()[-3000:]
    return time.monotonic() - started


def json_lines(log: Path) -> list[dict]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_bad_setting_or_taken_port_is_one_line_and_exit_1(tmp_path):
    env = os.environ.copy() | {"NURTURE_STATE_DIR": str(tmp_path / "state"),
                               "TEMPORAL_ADDRESS": "127.0.0.1:1"}  # fmt: skip
    bad = subprocess.run([sys.executable, "worker.py"], cwd=REPO, capture_output=True, text=True,
                         env=env | {"NURTURE_METRICS_PORT": "99999"}, timeout=60)  # fmt: skip
    assert bad.returncode == 1
    assert "NURTURE_METRICS_PORT" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for name in ("NURTURE_HEALTH_PORT", "NURTURE_METRICS_PORT"):
            ports = {"NURTURE_HEALTH_PORT": "0", "NURTURE_METRICS_PORT": "0",
                     "NURTURE_METRICS_HOST": "127.0.0.1", name: port}  # fmt: skip
            busy = subprocess.run([sys.executable, "worker.py"], cwd=REPO, env=env | ports,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert busy.returncode == 1, busy.stderr
            assert busy.stderr.startswith(f"{name}: cannot ") and "Traceback" not in busy.stderr


@pytest.mark.devserver
async def test_worker_exports_metrics_and_health_then_stops_on_sigterm(tmp_path, dev_server_env):
    env = worker_env(tmp_path, dev_server_env)
    queue = env["NURTURE_TASK_QUEUE"]
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        healthy = await until_healthy(env, worker, log)
        assert healthy.json() == {"status": "ok", "task_queue": queue, "temporal": "connected"}
        ready = await probe(env, "/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        assert (await probe(env, "/nope")).status_code == 404

        definitions, database = load_and_prepare(Settings(**env))
        intake = Intake(definitions, database.sessions, dev_server_env.client, queue)
        lead, _ = intake.upsert_lead(LeadIn(email="grace@example.com", first_name="Grace",
                                            phone="+14155550111"))  # fmt: skip
        await intake.enroll(lead, "quick")

        def sent() -> list[str]:
            with database.sessions() as session:
                return sorted(session.scalars(
                    select(Message.step_id).where(Message.status == "sent")))  # fmt: skip

        await eventually(lambda: sent() == ["ping", "welcome"], what="welcome and ping sent")

        async def respond(kind: str, occurred_at: datetime | None = None) -> None:
            event = EventIn(lead_id=lead.id, type=kind, event_id=kind, occurred_at=occurred_at)
            await intake.deliver(intake.store_events([event]).stored)

        def stage() -> str:
            with database.sessions() as session:
                return session.get(Lead, lead.id).stage

        await respond("email.reply")  # 30 points: an MQL
        await eventually(lambda: stage() == "mql", what="an MQL")
        await respond("webinar.attended", datetime.now(UTC))  # 80: an SQL, handed off

        def notified():
            with database.sessions() as session:
                return session.scalars(select(HandoffEvent).where(
                    HandoffEvent.kind == "notified", HandoffEvent.status == "sent")
                ).all()  # fmt: skip

        await eventually(notified, what="the rep notified")
        with database.sessions() as session:
            handoff = session.scalars(select(Handoff)).one()
        database.engine.dispose()

        samples = await eventually(
            lambda: (
                (page := scrape(env))
                and value(page, "nurture_handoff_latency_seconds_count")
                and page
            ),
            what="the handoff latency recorded",
        )
        ours = {"task_queue": queue, "namespace": "default"}
        for channel in ("email", "sms"):  # sends run on their channel's own task queue
            assert value(samples, "nurture_messages_total", channel=channel, status="sent",
                         sequence="quick", activity_type="send_message", namespace="default",
                         task_queue=send_queue(queue, channel)) == 1  # fmt: skip
        assert value(samples, "nurture_messages_total", status="failed") == 0
        assert value(samples, "nurture_responses_total", type="email.reply",
                     activity_type="score_lead", **ours) == 1  # fmt: skip
        assert value(samples, "nurture_responses_total", type="webinar.attended") == 1
        assert value(samples, "nurture_score_changes_total", cause="response", direction="up") == 2
        assert value(samples, "nurture_stage_changes_total", from_stage="lead", to_stage="mql") == 1
        assert value(samples, "nurture_stage_changes_total", from_stage="mql", to_stage="sql") == 1
        assert value(samples, "nurture_handoffs_total", pool=handoff.pool or "none",
                     rep=handoff.rep_id, activity_type="assign_handoff", **ours) == 1  # fmt: skip
        assert value(samples, "nurture_rep_notifications_total", channel="email", kind="new",
                     status="sent") == 1  # fmt: skip
        latency = value(samples, "nurture_handoff_latency_seconds_sum")
        assert 0 < latency < 60
        assert value(samples, "nurture_handoff_latency_seconds_bucket", le="60") == 1
        # The SDK's own metrics, on the same page.
        for channel in ("email", "sms"):
            assert (
                value(
                    samples,
                    "temporal_activity_execution_latency_count",
                    activity_type="send_message",
                    task_queue=send_queue(queue, channel),
                )
                == 1
            )
        assert value(samples, "temporal_num_pollers", task_queue=send_queue(queue, "sms")) > 0
        assert value(samples, "temporal_num_pollers", task_queue=queue) > 0

        took = await stop_and_check(worker, env, log)
        assert took < 30
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)

    records = json_lines(log)
    text = log.read_text()
    assert "grace@example.com" not in text and "4155550111" not in text
    welcome = next(r for r in records if r["message"] == f"sent email step=welcome lead={lead.id}")
    assert welcome["level"] == "INFO" and welcome["logger"] == "nurture.activities"
    assert welcome["workflow_id"] == lead_workflow_id(lead.id) and welcome["lead_id"] == lead.id
    assert welcome["activity"] == "send_message" and welcome["step"] == "welcome"
    assert welcome["run_id"]
    messages = [r["message"] for r in records if r["logger"] == "nurture.worker"]
    assert messages[0].startswith(f"worker on {env['TEMPORAL_ADDRESS']}")
    assert any(m.startswith("SIGTERM received") for m in messages)
    assert any(m.startswith("polling stops") for m in messages)
    assert messages[-1].startswith("worker stopped")


@pytest.mark.devserver
async def test_sigterm_lets_a_send_in_flight_finish(tmp_path, dev_server_env):
    """A slow provider (3 s per answer): SIGTERM during the send. Health turns 503 at
    once, nothing new is taken (a lead enrolled after the signal is not sent to), the
    send finishes within the shutdown timeout, and the process exits 0."""
    providers = ProviderServer(delay=3.0)
    env = worker_env(
        tmp_path, dev_server_env, NURTURE_SHUTDOWN_TIMEOUT="20",
        SENDGRID_API_KEY=providers.sendgrid_key, SENDGRID_HOST=providers.url,
    )  # fmt: skip
    queue = env["NURTURE_TASK_QUEUE"]
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        await until_healthy(env, worker, log)
        definitions, database = load_and_prepare(Settings(**env))
        intake = Intake(definitions, database.sessions, dev_server_env.client, queue)
        first, _ = intake.upsert_lead(LeadIn(email="first@example.com"))
        await intake.enroll(first, "quick")
        await eventually(lambda: providers.requests, what="the send reaching the provider")

        stopping = asyncio.create_task(stop_and_check(worker, env, log))
        await asyncio.sleep(0.3)
        second, _ = intake.upsert_lead(LeadIn(email="second@example.com"))
        await intake.enroll(second, "quick")  # after the signal: not this worker's
        took = await stopping
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        providers.close()

    assert took > 2, "exited before the send in flight had its answer"
    with database.sessions() as session:
        statuses = dict(session.execute(select(Message.lead_id, Message.status)).all())
    database.engine.dispose()
    assert statuses == {first.id: "sent"}  # finished during the shutdown; nothing new taken
    assert len(providers.requests) == 1
    messages = [r["message"] for r in json_lines(log) if r["logger"] == "nurture.worker"]
    assert "polling stops; running activities (1 now) get up to 20s to finish" in messages
    assert messages[-1].startswith("worker stopped")


def reachable(host: str, port: str) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.devserver
@pytest.mark.parametrize("host, from_elsewhere", [(None, False), ("0.0.0.0", True)])
async def test_metrics_and_health_listen_on_loopback_unless_opted_in(
    tmp_path, dev_server_env, host, from_elsewhere
):
    """By default only this machine reaches /metrics and /health; NURTURE_METRICS_HOST=0.0.0.0
    opens them. 127.0.0.2 stands for another address of the host: it is loopback too, but a
    socket bound to 127.0.0.1 alone does not accept connections made to it."""
    env = worker_env(tmp_path, dev_server_env)
    del env["NURTURE_METRICS_HOST"]
    if host is not None:
        env["NURTURE_METRICS_HOST"] = host
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        await until_healthy(env, worker, log)
        for name in ("NURTURE_METRICS_PORT", "NURTURE_HEALTH_PORT"):
            assert reachable("127.0.0.1", env[name])
            assert reachable("127.0.0.2", env[name]) is from_elsewhere, name
        await stop_and_check(worker, env, log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
