"""Failure drills: real processes, a real failure, and the outcome read from the database
and from the provider imitation's request log (`testkit/providers.py`).

1. Two `python worker.py` processes on one task queue; one is SIGKILLed with sends in
   flight while the other keeps going.
2. The Temporal dev server stopped (SIGTERM) mid-sequence and started again on its
   database file; the worker is left running and reconnects by itself.
3. PostgreSQL unreachable for 30 s (a TCP proxy, `tests/tcp_proxy.py`, cut and restored)
   while leads are mid-sequence and responses arrive through the API.

In each: every lead finishes its sequence, every (lead, step) reaches the provider exactly
once, and the messages rows say so: `sent` with the ID the provider answered, or
`unknown` for a send whose worker died waiting for that answer (it went out once and was
not repeated). An answer that arrives while the database is away is kept in the
activity's heartbeat, so a later attempt writes it however long the outage lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from api.app import create_app
from devstack.stack import api_server
from devstack.temporal_server import TemporalDevServer, free_port
from infra.settings import Settings
from models.db import Enrollment, Lead, Message, Response, ScoreChange
from models.workflow_io import lead_workflow_id
from services.intake import Intake, LeadIn
from services.runtime import Database, connect_temporal, load_and_prepare, open_database
from testkit.providers import ProviderServer, sends_definitions, worker_process_env
from tests.conftest import fresh_postgres_database
from tests.tcp_proxy import TcpProxy
from workflows.lead import LeadWorkflow

pytestmark = pytest.mark.devserver

REPO = Path(__file__).resolve().parent.parent
SEQUENCE = "drill"
# The drill sequence's sends, (step id, channel, template), with a short wait after each.
SENDS = [
    ("email_1", "email", "hello"),
    ("sms_1", "sms", "drill_sms_1"),
    ("email_2", "email", "followup"),
    ("sms_2", "sms", "drill_sms_2"),
]
AUTH = {"Authorization": "Bearer test-token"}


# --- set-up ---------------------------------------------------------------------------------


def drill_definitions(root: Path, waits: tuple[int, ...] = (1, 2, 1)) -> Path:
    """The fixture definitions plus the `drill` sequence: SENDS with `waits` seconds between."""
    return sends_definitions(root, SEQUENCE, "Failure drill", SENDS, list(waits))


def drill_env(tmp_path: Path, providers: ProviderServer, database_url: str,
              temporal_address: str) -> dict[str, str]:  # fmt: skip
    return worker_process_env(
        providers, str(drill_definitions(tmp_path / "definitions")), database_url,
        temporal_address, f"drill-{uuid.uuid4().hex[:8]}", str(tmp_path / "state"))  # fmt: skip


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:  # a file, not a pipe: a full pipe would block the worker
        return subprocess.Popen([sys.executable, "worker.py"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def stop_all(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGCONT)  # in case a drill left it frozen
            worker.kill()
            worker.wait(timeout=10)


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    with fresh_postgres_database("nurture_drill") as url:
        yield url


def enroll_leads(intake: Intake, count: int, prefix: str):
    """Upsert `count` leads with an email and a phone; returns ({phone: lead id}, coroutine
    enrolling them all, as `POST /leads` does)."""
    lead_by_phone: dict[str, str] = {}
    leads = []
    for i in range(count):
        phone = f"+1415555{2000 + i:04d}"
        lead, created = intake.upsert_lead(
            LeadIn(email=f"{prefix}{i}@example.com", phone=phone, first_name=f"Lead{i}")
        )
        lead_by_phone[phone] = lead.id
        leads.append((lead, created))

    async def enroll() -> None:
        for lead, created in leads:
            await intake.enroll(lead, SEQUENCE, new_lead=created)

    return lead_by_phone, enroll()


# --- reading the outcome ------------------------------------------------------------------


class RequestLog:
    """The imitation's requests as (lead, step) keys, in arrival order (parsed once each)."""

    def __init__(self, providers: ProviderServer, lead_by_phone: dict[str, str]):
        self.providers, self.lead_by_phone = providers, lead_by_phone
        self._keys: list[tuple[str, str]] = []
        self.message_ids: dict[tuple[str, str], str] = {}  # email: our message ID

    def keys(self) -> list[tuple[str, str]]:
        for request in self.providers.requests[len(self._keys) :]:
            if request.path == "/v3/mail/send":
                payload = request.json()
                args = payload["personalizations"][0].get("custom_args") or payload["custom_args"]
                key = (args["lead_id"], args["step_id"])
                self.message_ids[key] = args["message_id"]
            else:
                form = request.form()
                key = (self.lead_by_phone[form["To"]], re.search(r"step (\w+)\.", form["Body"])[1])
            self._keys.append(key)
        return list(self._keys)

    def __len__(self) -> int:
        return len(self.providers.requests)


def messages_by_key(database: Database) -> dict[tuple[str, str], Message]:
    with database.sessions() as session:
        rows = session.scalars(select(Message)).all()
    by_key = {(m.lead_id, m.step_id): m for m in rows}
    assert len(by_key) == len(rows), "two message rows for one (lead, step)"
    return by_key


def sending(database: Database) -> set[tuple[str, str]]:
    with database.sessions() as session:
        rows = session.execute(
            select(Message.lead_id, Message.step_id).where(Message.status == "sending")
        )
        return {(lead_id, step_id) for lead_id, step_id in rows}


def enrollment_statuses(database: Database) -> Counter:
    with database.sessions() as session:
        rows = session.execute(select(Enrollment.status, func.count()).group_by(Enrollment.status))
        return Counter(dict(rows.all()))


async def wait_for(check, timeout: float, what: str, alive: list[subprocess.Popen] = (),
                   log: Path | None = None, interval: float = 0.25):  # fmt: skip
    """Poll `check` until truthy (an overall limit against hanging, not a timing claim);
    the processes in `alive` must keep running meanwhile."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        for process in alive:
            tail = log.read_text()[-3000:] if log else ""
            assert process.poll() is None, f"a worker died: {tail}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(interval)
    return result


def assert_each_step_reached_the_provider_once(
    log: RequestLog, messages: dict[tuple[str, str], Message], expected: set
) -> Counter:
    seen = Counter(log.keys())
    assert {key: n for key, n in seen.items() if n > 1} == {}, "sent more than once"
    assert set(seen) == expected, f"never sent: {sorted(expected - set(seen))[:5]}"
    assert set(messages) == expected
    for key, message in messages.items():
        if message.channel == "email":  # the request carried this row's message ID
            assert log.message_ids[key] == message.id, key
    return seen


# --- drill 1: a worker killed while another keeps going -------------------------------------

LEADS_1 = 200
# About a third of all sends are out when worker A dies.
KILL_AFTER = len(SENDS) * LEADS_1 // 3


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T"


async def freeze_a_mid_send(a, b, database, log: RequestLog) -> set:
    """Leave worker A stopped (SIGSTOP) at a moment when it has sends in flight, each of
    which has reached the provider and waits for its answer; B runs on. Returns A's sends.

    Between a send being marked `sending` and its request reaching the provider nothing
    can tell whether it went out (the providers take no idempotency key): a worker killed
    there leaves it `unknown` and unsent, by design (tests/test_providers.py). So both are
    stopped while the database and the request log are compared (test_worker_crash.py
    does the same with one worker); then B goes on, and what is still `sending` once B's
    own sends of that moment are answered is A's."""
    for _attempt in range(100):
        for worker in (a, b):
            os.kill(worker.pid, signal.SIGSTOP)
        while not (_stopped(a.pid) and _stopped(b.pid)):
            await asyncio.sleep(0.001)
        in_flight = sending(database)
        outside_the_gap = in_flight and in_flight <= set(log.keys())
        os.kill(b.pid, signal.SIGCONT)
        if outside_the_gap:
            await asyncio.sleep(3)  # B's sends are answered after 0.3 s; A's cannot move
            if mine := in_flight & sending(database):
                return mine
        os.kill(a.pid, signal.SIGCONT)
        await asyncio.sleep(0.003)
    raise AssertionError("never found worker A mid-send outside the gap")


@pytest.mark.postgres
async def test_worker_killed_while_another_keeps_going(tmp_path, dev_server_env, fresh_postgres):
    """Two workers share 200 leads; A is SIGKILLed mid-send, B goes on alone: every lead
    completes, each (lead, step) reaches the provider once, and exactly A's sends cut off
    during their provider call are `unknown` (they went out, once)."""
    providers = ProviderServer(delay=0.3)  # slow answers: sends are in flight at the kill
    target = dev_server_env.client.service_client.config.target_host
    env = drill_env(tmp_path, providers, fresh_postgres, target)
    definitions, database = load_and_prepare(Settings(**env))
    intake = Intake(definitions, database.sessions, dev_server_env.client,
                    env["NURTURE_TASK_QUEUE"])  # fmt: skip
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(env, logs[0]), start_worker(env, logs[1])]
    try:
        lead_by_phone, enrollment = enroll_leads(intake, LEADS_1, "drill")
        await enrollment
        log = RequestLog(providers, lead_by_phone)
        expected = {(lead, step) for lead in lead_by_phone.values() for step, *_ in SENDS}

        await wait_for(lambda: len(log) >= KILL_AFTER, 120, f"{KILL_AFTER} sends", workers,
                       interval=0.01)  # fmt: skip
        cut_off = await freeze_a_mid_send(workers[0], workers[1], database, log)
        sent_before_kill = set(log.keys())
        workers[0].kill()  # SIGKILL: A's activities die mid-flight
        assert workers[0].wait(timeout=10) == -signal.SIGKILL
        assert len(sent_before_kill) < len(expected), "worker A was killed too late"
        sent_by = [log_file.read_text().count(" sent ") for log_file in logs]
        assert all(sent_by), f"both workers were sending before the kill: {sent_by}"

        # A's sends stay `sending` until their 30 s start-to-close timeout lets B retry them.
        await wait_for(
            lambda: enrollment_statuses(database)["completed"] == LEADS_1,
            240, "every enrollment completed", workers[1:], logs[1],
        )  # fmt: skip
        assert workers[1].poll() is None
        messages = messages_by_key(database)
        assert enrollment_statuses(database) == {"completed": LEADS_1}
    finally:
        stop_all(workers)
        providers.close()
        database.engine.dispose()

    assert_each_step_reached_the_provider_once(log, messages, expected)
    assert len(log) > len(sent_before_kill), "worker B sent nothing after the kill"
    unknown = {key for key, message in messages.items() if message.status == "unknown"}
    # Only sends A was making when it died, each of which had reached the provider. (One
    # whose answer A had already kept in its heartbeat, in the milliseconds before
    # writing it, is `sent`: B wrote the kept answer.)
    assert unknown and unknown <= cut_off <= sent_before_kill
    statuses = Counter(message.status for message in messages.values())
    assert statuses == {"sent": len(expected) - len(unknown), "unknown": len(unknown)}
    # Every `sent` carries an ID the provider answered with, each once; the answers A
    # never read are the `unknown` ones.
    recorded = [m.provider_message_id for m in messages.values() if m.status == "sent"]
    assert len(set(recorded)) == len(recorded) and set(recorded) <= set(providers.issued)
    assert len(providers.issued) == len(recorded) + len(unknown)
    print(f"drill 1: {len(expected)} sends, {len(sent_before_kill)} before the kill, "
          f"{len(unknown)} cut off mid-call (unknown), worker logs 'sent': {sent_by}")  # fmt: skip


# --- drill 2: the Temporal dev server stopped and started again on its file -----------------

LEADS_2 = 30
STOP_AFTER = LEADS_2 + LEADS_2 // 2  # the welcome emails and half the first SMS
OUTAGE_SECONDS = 5


async def test_temporal_restarted_on_its_database_file(tmp_path):
    """The dev server (state in a file) is stopped mid-sequence, kept down, and started
    again on the same file and port. The worker is not restarted: it reconnects. Every
    lead resumes and finishes; each step is sent once, and all are `sent`."""
    server = TemporalDevServer(
        port=free_port(), ui_port=None, db_file=tmp_path / "temporal" / "temporal.db",
        log_file=tmp_path / "temporal" / "server.log",
    )  # fmt: skip
    providers = ProviderServer(delay=0.1)
    env = drill_env(tmp_path, providers, f"sqlite:///{tmp_path / 'nurture.db'}", server.address)
    settings = Settings(**env)
    definitions, database = load_and_prepare(settings)
    worker_log = tmp_path / "worker.log"
    workers: list[subprocess.Popen] = []
    server.start()
    try:
        client = await connect_temporal(settings)
        intake = Intake(definitions, database.sessions, client, settings.task_queue)
        workers.append(start_worker(env, worker_log))
        lead_by_phone, enrollment = enroll_leads(intake, LEADS_2, "restart")
        await enrollment
        log = RequestLog(providers, lead_by_phone)
        expected = {(lead, step) for lead in lead_by_phone.values() for step, *_ in SENDS}

        await wait_for(lambda: len(log) >= STOP_AFTER, 60, "the first sends", workers,
                       worker_log, interval=0.01)  # fmt: skip
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)  # a clean stop, not a kill
        sent_before_stop = len(log)
        assert sent_before_stop < len(expected), "the server was stopped too late"
        await asyncio.sleep(OUTAGE_SECONDS)
        assert workers[0].poll() is None, worker_log.read_text()[-3000:]
        during_outage = len(log) - sent_before_stop  # sends already running may finish

        server.start()  # the same port and file
        await wait_for(
            lambda: enrollment_statuses(database)["completed"] == LEADS_2,
            180, "every enrollment completed", workers, worker_log,
        )  # fmt: skip
        messages = messages_by_key(database)
    finally:
        stop_all(workers)
        server.stop()
        providers.close()
        database.engine.dispose()

    assert_each_step_reached_the_provider_once(log, messages, expected)
    assert Counter(m.status for m in messages.values()) == {"sent": len(expected)}
    print(f"drill 2: dev server exit code {code}; {sent_before_stop} of {len(expected)} sends "
          f"before the stop, {during_outage} finished while it was down")  # fmt: skip


# --- drill 3: PostgreSQL unreachable for 30 s ---------------------------------------------------

LEADS_3 = 20
CUT_SECONDS = 30
CUT_AFTER = LEADS_3 + LEADS_3 // 2  # the welcome emails and half the first SMS


@contextlib.asynccontextmanager
async def running_api(settings: Settings, intake: Intake):
    """The API alone, in the test's loop (the worker is a process of its own), served as
    `nurture dev` serves it, without taking over the test's signals."""
    server = api_server(create_app(intake, settings), settings, log_level="critical")
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        yield f"http://{settings.api_host}:{settings.api_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def opens(lead_ids: list[str], tag: str) -> list[dict]:
    return [{"lead_id": lead_id, "type": "email.open", "event_id": f"{tag}-{n}"}
            for n, lead_id in enumerate(lead_ids)]  # fmt: skip


@pytest.mark.postgres
async def test_postgres_unreachable_for_30_seconds(tmp_path, dev_server_env, fresh_postgres):
    """Worker and API reach PostgreSQL through a proxy, cut for 30 s while leads are
    mid-sequence and responses arrive, then restored. Activities fail and Temporal retries
    them; the API refuses what it cannot store (non-2xx: the caller retries). Afterwards:
    every lead finishes, each step reached the provider once and is `sent` with the ID it
    answered (those answered during the cut too), every response stored is scored
    exactly once (the fixture model: one point per open, no decay)."""
    proxy = TcpProxy("127.0.0.1", 5432)
    proxied = make_url(fresh_postgres).set(port=proxy.port, query={"sslmode": "disable"})
    providers = ProviderServer(delay=0.5)  # sends are in flight at the cut
    target = dev_server_env.client.service_client.config.target_host
    env = drill_env(tmp_path, providers, proxied.render_as_string(hide_password=False), target)
    env["NURTURE_API_PORT"] = str(free_port())
    settings = Settings(**env)
    # The test reads PostgreSQL directly; the worker and the API go through the proxy.
    direct = open_database(settings.model_copy(update={"database_url": fresh_postgres}))
    definitions, api_database = load_and_prepare(settings)
    intake = Intake(definitions, api_database.sessions, dev_server_env.client,
                    settings.task_queue)  # fmt: skip
    worker_log = tmp_path / "worker.log"
    workers = [start_worker(env, worker_log)]
    accepted: Counter = Counter()  # lead -> events answered 2xx (not as duplicates)
    refused: dict[str, list] = {"events": [], "leads": []}
    try:
        async with (
            running_api(settings, intake) as api_url,
            httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        ):

            async def post_events(events: list[dict]) -> httpx.Response:
                answer = await http.post("/events", json=events, headers=AUTH)
                if answer.is_success:
                    assert answer.json()["accepted"] + answer.json()["duplicates"] == len(events)
                    accepted.update(e["lead_id"] for e in events if e["event_id"]
                                    in answer.json()["event_ids"])  # fmt: skip
                return answer

            lead_ids, lead_by_phone = [], {}
            for i in range(LEADS_3):
                lead = {"email": f"cut{i}@example.com", "phone": f"+1415555{3000 + i:04d}",
                        "first_name": f"Lead{i}", "sequence": SEQUENCE}  # fmt: skip
                created = await http.post("/leads", json=lead, headers=AUTH)
                assert created.status_code == 201, created.text
                lead_ids.append(created.json()["lead_id"])
                lead_by_phone[lead["phone"]] = lead_ids[-1]
            log = RequestLog(providers, lead_by_phone)

            for round_ in ("open-a", "open-b"):  # scored before the cut (most of them)
                assert (await post_events(opens(lead_ids, round_))).status_code == 202
            await wait_for(lambda: len(log) >= CUT_AFTER, 60, "the first sends", workers,
                           worker_log)  # fmt: skip
            # Stored, maybe not yet scored, when the database goes away.
            assert (await post_events(opens(lead_ids, "open-c"))).status_code == 202

            # Cut while a send waits for the provider's answer (its request not yet in the
            # log a moment ago: the answer is ~0.5 s away): it goes out, but its `sent`
            # cannot be written.
            def just_sending() -> set:
                before = set(log.keys())
                return sending(direct) - before

            await wait_for(just_sending, 30, "a send in its provider call", workers, worker_log,
                           interval=0.005)  # fmt: skip
            report = proxy.cut()
            sending_at_cut = sending(direct)
            cut_at = time.monotonic()
            # --- PostgreSQL unreachable: what the API answers ---------------------------------
            during = opens(lead_ids, "open-during")
            answer = await post_events(during)
            # 503 + Retry-After, in the API's JSON error shape: nothing stored, send again.
            assert answer.status_code == 503, f"{answer.status_code}: {answer.text}"
            assert "nothing was stored" in answer.json()["detail"]
            assert answer.headers["retry-after"] == "10"
            refused["events"].append((answer.status_code, during))
            late_lead = {"email": "late@example.com", "phone": "+14155553999",
                         "first_name": "Late", "sequence": SEQUENCE}  # fmt: skip
            answer = await http.post("/leads", json=late_lead, headers=AUTH)
            assert answer.status_code == 503, f"{answer.status_code}: {answer.text}"
            refused["leads"].append(answer.status_code)
            await wait_for(lambda: time.monotonic() - cut_at >= CUT_SECONDS, CUT_SECONDS + 5,
                           "the cut", workers, worker_log, interval=1)  # fmt: skip
            proxy.restore()

            # --- back: the callers retry what was refused, and go on -------------------------
            for _status, events in refused["events"]:
                assert (await post_events(events)).status_code == 202
            created = await http.post("/leads", json=late_lead, headers=AUTH)
            assert created.status_code == 201, created.text
            assert created.json()["created"], "the refused lead was stored after all"
            lead_ids.append(created.json()["lead_id"])
            lead_by_phone[late_lead["phone"]] = lead_ids[-1]
            assert (await post_events(opens(lead_ids, "open-after"))).status_code == 202

            def stored_per_lead() -> Counter:
                with direct.sessions() as session:
                    return Counter(session.scalars(select(Response.lead_id)))

            def settled() -> bool:
                with direct.sessions() as session:
                    scores = dict(session.execute(select(Lead.id, Lead.score)).all())
                stored = stored_per_lead()
                return enrollment_statuses(direct)["completed"] == len(lead_ids) and all(
                    scores[lead_id] == stored[lead_id] for lead_id in lead_ids
                )

            await wait_for(settled, 180, "every lead finished and scored", workers, worker_log)
            await asyncio.sleep(1)  # a late second scoring would show by now
            states = {
                lead_id: await dev_server_env.client.get_workflow_handle(
                    lead_workflow_id(lead_id)
                ).query(LeadWorkflow.state)
                for lead_id in lead_ids
            }
        assert workers[0].poll() is None, "the worker died"
        with direct.sessions() as session:
            responses = session.scalars(select(Response)).all()
            leads = {lead.id: lead for lead in session.scalars(select(Lead))}
            changes = {
                tuple(row)
                for row in session.execute(select(ScoreChange.lead_id, ScoreChange.event_id))
            }
        messages = messages_by_key(direct)
        statuses = enrollment_statuses(direct)
    finally:
        stop_all(workers)
        providers.close()
        proxy.close()
        api_database.engine.dispose()
        direct.engine.dispose()

    print(f"drill 3: cut {report}, {len(sending_at_cut)} sends in their provider call, "
          f"refused with the database down: {refused['leads']} (lead), "
          f"{[status for status, _ in refused['events']]} (events); "
          f"{proxy.refused} connections refused during the cut")  # fmt: skip
    assert report.drained
    # Worker and API kept trying during the cut; the worker's activities failed meanwhile
    # (and were retried by Temporal).
    assert proxy.refused > 0
    assert "OperationalError" in worker_log.read_text()
    # Nothing lost: every event answered 2xx (those refused, once sent again) is stored,
    # delivered and counted once in its lead's score.
    assert statuses == {"completed": len(lead_ids)}
    stored = Counter(response.lead_id for response in responses)
    assert stored == accepted
    assert len({r.event_id for r in responses}) == len(responses) == sum(accepted.values())
    assert all(response.delivered_at is not None for response in responses)
    for lead_id in lead_ids:
        assert leads[lead_id].score == stored[lead_id], lead_id
        assert states[lead_id].responses_handled == stored[lead_id], lead_id
        assert states[lead_id].score == stored[lead_id], lead_id
    response_ids = {(r.lead_id, r.event_id) for r in responses}
    assert changes <= response_ids  # a card per scoring, each for a stored response

    # Each step reached the provider once and is `sent` with the ID the provider answered,
    # those caught mid-call by the cut too: their `sent` could not be written for 30 s,
    # and a later attempt wrote it from the answer kept in the activity's heartbeat.
    expected = {(lead, step) for lead in lead_ids for step, *_ in SENDS}
    assert_each_step_reached_the_provider_once(log, messages, expected)
    assert sending_at_cut, "no send was in its provider call at the cut"
    assert Counter(message.status for message in messages.values()) == {"sent": len(expected)}
    recorded_ids = [message.provider_message_id for message in messages.values()]
    assert sorted(recorded_ids) == sorted(providers.issued)


@pytest.mark.postgres
def test_a_send_the_provider_took_is_recorded_once_the_database_is_back(
    fresh_postgres, sqlite_settings
):
    """PostgreSQL away for 3 s while the provider answers: the activity keeps trying to
    record the answer (instead of leaving it `sending`, which a retry would call
    `unknown`), and the send is `sent` with the provider's message ID."""
    from services.runtime import build_activities
    from tests.test_providers import lead_and_request

    proxy = TcpProxy("127.0.0.1", 5432)
    providers = ProviderServer(delay=1.0)  # the cut lands during the provider call
    proxied = make_url(fresh_postgres).set(port=proxy.port, query={"sslmode": "disable"})
    proxied_settings = sqlite_settings.model_copy(update={
        "database_url": proxied.render_as_string(hide_password=False),
        "sendgrid_api_key": SecretStr(providers.sendgrid_key), "sendgrid_host": providers.url,
    })  # fmt: skip
    database = open_database(proxied_settings)
    try:
        activities = build_activities(proxied_settings, database).lead
        request = lead_and_request(database, "email", "hello")

        def cut_for_three_seconds() -> None:
            while not providers.requests:  # the provider has the email
                time.sleep(0.01)
            proxy.cut()
            time.sleep(3)
            proxy.restore()

        cutter = threading.Thread(target=cut_for_three_seconds)
        cutter.start()
        outcome = activities.send_message(request)
        cutter.join()
        assert outcome.status == "sent" and outcome.provider_message_id
        assert len(providers.requests) == 1
        with database.sessions() as session:
            (message,) = session.scalars(select(Message))
            assert (message.status, message.provider_message_id) == (
                "sent", outcome.provider_message_id)  # fmt: skip
    finally:
        database.engine.dispose()
        proxy.close()
        providers.close()
