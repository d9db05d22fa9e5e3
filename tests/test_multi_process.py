"""Two API processes and two workers on one PostgreSQL database and one Temporal dev
server, as production runs them (real OS processes, `testkit/processes.py`).

Leads are enrolled through both APIs (some through each); signed SendGrid event
batches (opens and clicks) are spread over both APIs, some batches redelivered to the
other API at the same moment and some later, and some leads are pushed over SQL (50
points: ten clicks). One worker is SIGKILLed in the middle of the batches. Then, from the
SendGrid imitation's request log, the webhook sink standing in for the reps and the
database: each lead's welcome email went out once; every event accepted is one inbox row,
scored once (its `scored_in` change is its lead's, and each lead's score is the sum of
its events' points, once each); every SQL lead has one handoff and one notification
(one delivery ID at the sink), and no other lead has any.

    .venv/bin/pytest -q -p no:cacheprovider tests/test_multi_process.py -m postgres
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from models.db import Handoff, HandoffEvent, Lead, Message, Response, ScoreChange
from services.runtime import Database
from testkit import FIXTURE_DEFINITIONS
from testkit.processes import Fleet, prepare, running_processes
from testkit.providers import ProviderServer, worker_process_env
from testkit.sendgrid_signer import Signer
from testkit.webhook_sink import WebhookSink
from tests.conftest import fresh_postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.devserver]

AUTH = {"Authorization": "Bearer test-token"}
HOT, WARM = 8, 16  # leads pushed over SQL (10 clicks: 50 points), leads kept under it
POINTS = {"open": 1, "click": 5}  # tests/fixtures/definitions/scoring.yaml
WARM_EVENTS = ["click", "click", "open", "open", "open", "open", "open"]  # 15 points
BATCH = 8  # events per SendGrid request
REDELIVERED_AT_ONCE = {3, 9, 15}  # batch indices also posted to the other API, concurrently
REDELIVERED_LATER = {1, 12}  # ... and posted to the other API again at the end


def definitions_with_reps(root: Path, sink: WebhookSink) -> Path:
    """The test definitions with two reps notified only by webhook, at `sink`."""
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    reps = [{"id": rep, "name": rep.title(), "email": f"{rep}@example.com",
             "webhook_url": sink.url_for(f"/slack/{rep}"), "working_hours": "always",
             "notify": ["webhook"]} for rep in ("alice", "bob")]  # fmt: skip
    (root / "sales.yaml").write_text(yaml.safe_dump({"reps": reps}, sort_keys=False))
    return root


class SendGrid(Signer):
    """Plays SendGrid's Event Webhook: signs each batch and posts it."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[dict] = []

    async def post(self, http: httpx.AsyncClient, url: str, body: bytes) -> None:
        headers = self.headers(body)
        answer = await http.post(f"{url}/webhooks/sendgrid/events", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        self.answers.append(answer.json())


def event_batches(leads: dict[str, str], hot: set[str]) -> tuple[list[bytes], dict]:
    """The events, shuffled into signed-batch bodies; and each lead's expected score."""
    rng = random.Random(16)
    events, expected = [], {}
    for email, lead_id in leads.items():
        kinds = ["click"] * 10 if email in hot else WARM_EVENTS
        expected[lead_id] = sum(POINTS[kind] for kind in kinds)
        for n, kind in enumerate(kinds):
            events.append({"event": kind, "email": email, "lead_id": lead_id,
                           "sg_event_id": f"mp-{lead_id}-{n}", "timestamp": int(time.time()),
                           "url": "https://example.com/pricing"})  # fmt: skip
    rng.shuffle(events)
    bodies = [json.dumps(events[i : i + BATCH]).encode() for i in range(0, len(events), BATCH)]
    return bodies, expected


async def enroll(http: httpx.AsyncClient, urls: list[str]) -> dict[str, str]:
    """HOT + WARM leads through both APIs in turn; every third again through the other
    (enrolling twice is a no-op: no second welcome). Not both at once: two requests
    creating one new lead at the same moment race in `Intake.upsert_lead` (one gets a
    500 from the unique email), whether in one API process or two."""

    async def post(url: str, email: str) -> str:
        answer = await http.post(
            f"{url}/leads",
            headers=AUTH,
            json={"email": email, "first_name": "Ada", "sequence": "month"},
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["lead_id"]

    leads = {}
    for n in range(HOT + WARM):
        email = f"mp{n}@example.com"
        leads[email] = await post(urls[n % 2], email)
        if n % 3 == 0:
            assert await post(urls[(n + 1) % 2], email) == leads[email]
    return leads


async def play(fleet: Fleet, http: httpx.AsyncClient, sendgrid: SendGrid, bodies: list[bytes]):
    """Every batch to one API, alternately; some also to the other, at once or at the end.
    Worker 0 is SIGKILLed half way through."""
    urls = fleet.api_urls
    for index, body in enumerate(bodies):
        if index == len(bodies) // 2:
            assert fleet.kill_worker(0) == -9
        targets = urls if index in REDELIVERED_AT_ONCE else [urls[index % 2]]
        await asyncio.gather(*(sendgrid.post(http, url, body) for url in targets))
        await asyncio.sleep(0.15)
    for index in sorted(REDELIVERED_LATER):
        await sendgrid.post(http, urls[(index + 1) % 2], bodies[index])


def settled(database: Database, events: int, hot: int) -> bool:
    """Every event scored and every hot lead handed off."""
    with database.sessions() as session:
        scored = session.scalar(
            select(func.count()).select_from(Response).where(Response.scored_in.is_not(None))
        )
        handoffs = session.scalar(select(func.count()).select_from(Handoff))
    return scored >= events and handoffs >= hot


async def wait_for(check, timeout: float, what: str, fleet: Fleet) -> None:
    """Poll `check` (an overall limit against hanging, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not check():
        fleet.assert_running()
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s\n{fleet.tail()}"
        await asyncio.sleep(0.25)


def welcome_sends(providers: ProviderServer) -> Counter:
    """(lead, step) of every email that reached the SendGrid imitation."""
    sends = Counter()
    for request in list(providers.requests):
        if request.path == "/v3/mail/send":
            payload = request.json()
            args = payload["personalizations"][0].get("custom_args") or payload["custom_args"]
            sends[(args["lead_id"], args["step_id"])] += 1
    return sends


@pytest.fixture
def fresh_postgres():
    with fresh_postgres_database("nurture_multi") as url:
        yield url


async def test_two_apis_and_two_workers_lose_nothing_and_repeat_nothing(
    tmp_path, dev_server_env, fresh_postgres
):
    providers, sink, sendgrid = ProviderServer(), WebhookSink(), SendGrid()
    env = worker_process_env(
        providers, str(definitions_with_reps(tmp_path / "definitions", sink)), fresh_postgres,
        dev_server_env.client.service_client.config.target_host,
        f"multi-{uuid.uuid4().hex[:8]}", str(tmp_path / "state"),
    ) | {"SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid.public_key,
         "NURTURE_SECRET_KEY": "multi-process-test-secret"}  # fmt: skip
    _definitions, database = prepare(env)
    try:
        async with (
            running_processes(env, apis=2, workers=2, logs=tmp_path / "logs") as fleet,
            httpx.AsyncClient(timeout=30) as http,
        ):
            began = time.monotonic()
            leads = await enroll(http, fleet.api_urls)
            # The kill comes after the welcome emails: a send cut off between being marked
            # `sending` and reaching SendGrid is `unknown` and never repeated, by design.
            await wait_for(lambda: sum(welcome_sends(providers).values()) >= len(leads), 30,
                           "every welcome email", fleet)  # fmt: skip
            sent_by = [w.log.read_text().count("sent email") for w in fleet.workers]
            assert all(sent_by), f"both workers take tasks: {sent_by}\n{fleet.tail()}"
            hot = set(list(leads)[:HOT])
            bodies, expected = event_batches(leads, hot)
            await play(fleet, http, sendgrid, bodies)
            events = sum(len(json.loads(body)) for body in bodies)
            # A score_lead cut off by the kill is retried after its 30 s start-to-close.
            await wait_for(lambda: settled(database, events, HOT), 45, "all scored", fleet)
            await asyncio.sleep(1)  # room for a late repeat to show itself
            fleet.assert_running()
            print(
                f"{len(leads)} leads, {events} events in {len(bodies)} batches; welcome "
                f"emails by worker {sent_by}; enrolled to settled {time.monotonic() - began:.1f} s"
            )
        check_outcome(database, providers, sink, sendgrid, leads, hot, expected, events)
    finally:
        providers.close()
        sink.close()
        database.engine.dispose()


def check_outcome(database, providers, sink, sendgrid, leads, hot, expected, events) -> None:
    sends = welcome_sends(providers)
    assert sends == Counter({(lead_id, "welcome"): 1 for lead_id in leads.values()})
    redelivered = BATCH * len(REDELIVERED_AT_ONCE | REDELIVERED_LATER)
    assert sum(a["accepted"] for a in sendgrid.answers) == events
    assert sum(a["duplicates"] for a in sendgrid.answers) == redelivered
    with database.sessions() as session:
        rows = session.execute(
            select(Response.lead_id, Response.duplicates, ScoreChange.lead_id)
            .outerjoin(ScoreChange, ScoreChange.id == Response.scored_in)
        ).all()  # fmt: skip
        scores = dict(session.execute(select(Lead.id, Lead.score)).all())
        stages = dict(session.execute(select(Lead.id, Lead.stage)).all())
        handoffs = session.execute(select(Handoff.id, Handoff.lead_id)).all()
        notified = session.execute(
            select(HandoffEvent.handoff_id, HandoffEvent.channel, HandoffEvent.status,
                   HandoffEvent.attempts).where(HandoffEvent.kind == "notified")
        ).all()  # fmt: skip
        messages = session.scalar(select(func.count()).select_from(Message))
    assert len(rows) == events and messages == len(leads)
    assert all(scored_by == lead_id for lead_id, _, scored_by in rows), "scored for another"
    assert sum(duplicates for _, duplicates, _ in rows) == redelivered
    assert scores == {lead_id: float(points) for lead_id, points in expected.items()}
    hot_ids = {leads[email] for email in hot}
    assert {lead for lead, stage in stages.items() if stage == "sql"} == hot_ids
    assert sorted(lead for _, lead in handoffs) == sorted(hot_ids), "one handoff per SQL lead"
    assert sorted(h for h, *_ in notified) == sorted(h for h, _ in handoffs)
    assert {(channel, status) for _, channel, status, _ in notified} == {("webhook", "sent")}
    check_notifications(sink, dict(handoffs), {h: n for h, *_, n in notified}, leads)


def check_notifications(sink: WebhookSink, lead_of: dict, attempts: dict, leads: dict) -> None:
    """One delivery per handoff at the sink, naming its lead; a repeat of the same delivery
    only where the activity was retried (a webhook is repeatable: it carries its ID)."""
    email_of = {lead_id: email for email, lead_id in leads.items()}
    by_handoff = Counter()
    for request in sink.requests():
        handoff_id = request.header("X-Nurture-Delivery").split(":")[0]
        assert email_of[lead_of[handoff_id]] in request.body.decode()
        by_handoff[handoff_id] += 1
    assert set(by_handoff) == set(lead_of)
    assert all(n == 1 or attempts[h] > 1 for h, n in by_handoff.items()), by_handoff
