"""Benchmark: speed to lead, from the response that makes a lead sales-qualified to the
rep's Slack-compatible webhook, under a steady background load.

The real stack (worker + API on SQLite, or on a fresh PostgreSQL database with
--database-url; the worker in a process of its own with --split) on an in-memory Temporal
dev server, with the test definitions (engagement-only scoring: page.view 10 points,
email open 1, click 5; MQL at 20, SQL at 50) and a sales.yaml of three reps who work
around the clock, are notified by webhook and email (the outbox), and whose `webhook_url`
is a WebhookSink: a local HTTP server that records when each request arrives.

- Setup: --edge-leads and --background-leads leads via `POST /leads`, in the `month`
  sequence (a welcome email, then a 7-day wait: no sends while we measure). Each edge
  lead is brought to the edge of SQL, 40 points, with four page views (`POST /events`).
- Load: --rate events per second for --seconds, one in each 1/rate slot at a random point
  in it (as bench/response_throughput.py offers its load), sent by a process of its own
  (as bench/saturation.py's), so that its signing and HTTP client do not take the API's
  GIL. The crossings are part of that rate, not on top of it: one slot in every
  (rate x seconds / edge leads) carries one edge lead's crossing response, the other
  slots a background `open` (1 point; a background lead never gets near SQL) posted to
  the signed SendGrid events webhook
  (`/webhooks/sendgrid/events`).
- The crossing: a `page.view` (+10) posted to our events endpoint (`POST /events`),
  since SendGrid's events webhook carries no page views; with `--crossing click` it is a
  SendGrid `click` (+5) on the signed events webhook instead, the edge leads then set up
  at 45 points (one click more).

Latency runs from sending the crossing response to the arrival, at the sink, of the rep's
webhook notification for that lead (`X-Nurture-Delivery` names the handoff; the payload
must name the lead's email). The breakdown follows the crossing through the database:
inbox row, signal, score row, handoff stored, webhook notification started. Every edge
lead must get exactly one webhook notification and no background lead a handoff.
Target: p99 under 1 s at 20 events/s.

    .venv/bin/python -m bench.speed_to_lead --rate 20 --seconds 30
    .venv/bin/python -m bench.speed_to_lead --rate 70 --split \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from sqlalchemy import select

from bench.common import LogCounter, count_rows, ms, pct, wait_until
from bench.saturation import RawHttp, database_for, product_stack
from devstack.stack import RunningStack
from models.db import Handoff, HandoffEvent, Lead, Message, Response, ScoreChange, as_utc
from services.runtime import Database
from testkit import FIXTURE_DEFINITIONS
from testkit.sendgrid_signer import Signer
from testkit.stack import api_client, temporal_dev_server
from testkit.webhook_sink import Received, WebhookSink

SEED = 7  # of the send schedule
SEQUENCE = "month"  # welcome email, then a 7-day wait: no sends while we measure
REPS = ("ana", "ben", "cho")
SQL_AT = 50  # the fixture model's SQL threshold (scoring.yaml)
BACKGROUND_POINTS = 1  # an email open
SETUP_TIMEOUT = 120.0
DRAIN_SECONDS = 20.0  # how long to wait after the last send for the last notifications
SETTLE_SECONDS = 2.0  # and then for any duplicate to show up
TARGET_P99 = 1.0
SHOW_SLOWEST = 3
TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The crossing response: type, points, how it is posted.
CROSSINGS = {
    "page.view": ("page.view", 10, "POST /events"),
    "click": ("email.click", 5, "POST /webhooks/sendgrid/events (signed)"),
}


@dataclass
class Sent:
    kind: str  # crossing | background
    event_id: str  # as stored in responses.event_id
    lead: int  # index into the edge or background leads
    due: float  # perf_counter: the scheduled send
    at: float  # perf_counter: actually sent
    wall: float  # time.time() at send (database times are wall clock)
    monotonic: float  # time.monotonic() at send (the sink's clock)
    answered: float | None = None  # time.time() of the HTTP answer
    status: int | str | None = None


@dataclass
class Results:
    sent: list[Sent] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # crossing -> webhook, seconds
    stages: dict[str, list[float]] = field(default_factory=dict)
    slowest: list[tuple[float, list[tuple[str, float]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    handoffs: int = 0
    background_handoffs: int = 0
    scored: int = 0  # events of the run with their score row
    scored_span: float = 0.0  # first send -> last score row, seconds
    one_each: int = 0  # edge leads with exactly one webhook notification
    duplicates: int = 0  # webhook notifications beyond the first, over every edge lead
    missing: int = 0  # edge leads with none
    unmatched: int = 0  # notifications whose payload does not name their lead


def sales_yaml(sink: WebhookSink) -> dict:
    return {
        "reps": [
            {"id": rep, "name": f"{rep.capitalize()} Rep", "email": f"{rep}@example.com",
             "webhook_url": sink.url_for(f"/slack/{rep}"), "working_hours": "always",
             "capacity": 10_000, "notify": ["webhook", "email"]}
            for rep in REPS
        ],
    }  # fmt: skip


def definitions_with_reps(root: Path, sink: WebhookSink) -> Path:
    """The test definitions, copied to `root`, with REPS notified through `sink`."""
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sales.yaml").write_text(yaml.safe_dump(sales_yaml(sink), sort_keys=False))
    return root


def schedule(total: int, crossings: int) -> set[int]:
    """The slots (of `total`) that carry a crossing: evenly spread over the run."""
    return {int((k + 0.5) * total / crossings) for k in range(crossings)}


def slot_order(total: int, crossings: int, background_leads: int) -> dict[int, tuple[str, int]]:
    """What each slot carries: ("crossing", edge lead) or ("background", background lead),
    each by its index; the crossings as `schedule` spreads them, one per edge lead."""
    slots = schedule(total, crossings)
    background_n = 0
    crossing_n = 0
    order: dict[int, tuple[str, int]] = {}
    for i in range(total):
        if i in slots:
            order[i] = ("crossing", crossing_n)
            crossing_n += 1
        else:
            order[i] = ("background", background_n % background_leads)
            background_n += 1
    return order


async def offer(rate: float, total: int, send: Callable[[int, float], Awaitable[None]]) -> None:
    """Fire send(i, due) for event i in its own 1/rate slot, each as its own task."""
    jitter = random.Random(SEED)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        due = start + (i + jitter.random()) / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, due)))
    await asyncio.gather(*tasks)


@dataclass
class Leads:
    edge: list[str]  # emails
    background: list[str]
    ids: dict[str, str]  # email -> lead id

    @property
    def edge_ids(self) -> list[str]:
        return [self.ids[email] for email in self.edge]


async def enrolled_leads(http: httpx.AsyncClient, database: Database, args) -> Leads:
    """The edge and background leads via `POST /leads` in SEQUENCE, returned once every
    welcome email is sent."""
    edge = [f"edge-{n:04d}@example.com" for n in range(args.edge_leads)]
    background = [f"background-{n:04d}@example.com" for n in range(args.background_leads)]
    ids: dict[str, str] = {}
    for email in edge + background:
        answer = await http.post(
            "/leads", json={"email": email, "sequence": SEQUENCE}, headers=AUTH
        )
        answer.raise_for_status()
        ids[email] = answer.json()["lead_id"]
    leads = len(ids)
    welcomed = (Message.step_id == "welcome", Message.status == "sent")
    await wait_until(lambda: count_rows(database, Message, *welcomed) >= leads, SETUP_TIMEOUT, 0.2)
    return Leads(edge, background, ids)


async def bring_to_the_edge(
    http: httpx.AsyncClient, database: Database, leads: Leads, crossing: str, run_id: str
) -> None:
    """Score each edge lead to SQL_AT less the crossing's points, and wait until all are."""
    _type, crossing_points, _how = CROSSINGS[crossing]
    edge_points = SQL_AT - crossing_points
    warm = ["page.view"] * 4 + (["email.click"] if crossing == "click" else [])
    for email in leads.edge:
        answer = await http.post("/events", headers=AUTH, json=[
            {"lead_id": leads.ids[email], "type": kind, "event_id": f"setup-{run_id}-{email}-{k}",
             "data": {"url": "/docs"} if kind == "page.view" else {}}
            for k, kind in enumerate(warm)
        ])  # fmt: skip
        answer.raise_for_status()
    at_edge = (Lead.id.in_(leads.edge_ids), Lead.score == edge_points)
    edge = len(leads.edge)
    await wait_until(lambda: count_rows(database, Lead, *at_edge) >= edge, SETUP_TIMEOUT, 0.2)
    if (ready := count_rows(database, Lead, *at_edge)) < edge:
        raise SystemExit(f"only {ready} of {edge} edge leads reached {edge_points}")
    await asyncio.sleep(1)  # let the last score activities' workflow tasks finish


@dataclass
class Load:
    """The measured run's events: each slot's crossing or background open, as `order` says."""

    http: RawHttp
    signer: Signer
    crossing: str  # a key of CROSSINGS
    run_id: str
    leads: Leads
    order: dict[int, tuple[str, int]]
    results: Results
    statuses: Counter[int | str] = field(default_factory=Counter)

    def sendgrid(self, kind: str, email: str, sg_id: str, **extra) -> tuple[bytes, dict]:
        body = json.dumps([{
            "event": kind, "email": email, "lead_id": self.leads.ids[email], "sg_event_id": sg_id,
            "timestamp": int(time.time()), **extra,
        }]).encode()  # fmt: skip
        return body, self.signer.headers(body)

    def request(self, i: int) -> tuple[str, str, bytes, dict]:
        """Slot i's path, event ID (as stored), body and headers."""
        kind, n = self.order[i]
        sg_id = f"bench-{self.run_id}-{i}"
        if kind == "background":
            body, headers = self.sendgrid("open", self.leads.background[n], sg_id)
            return "/webhooks/sendgrid/events", f"sendgrid:{sg_id}", body, headers
        if self.crossing == "click":
            body, headers = self.sendgrid("click", self.leads.edge[n], sg_id,
                                          url="https://x.test/price")  # fmt: skip
            return "/webhooks/sendgrid/events", f"sendgrid:{sg_id}", body, headers
        event_id = f"bench-{self.run_id}-{i}"
        body = json.dumps({
            "lead_id": self.leads.ids[self.leads.edge[n]], "type": "page.view",
            "event_id": event_id, "data": {"url": "/pricing"},
        }).encode()  # fmt: skip
        return "/events", event_id, body, {**AUTH, "Content-Type": "application/json"}

    async def send(self, i: int, due: float) -> None:
        kind, n = self.order[i]
        path, event_id, body, headers = self.request(i)
        record = Sent(kind, event_id, n, due, time.perf_counter(), time.time(),
                      time.monotonic())  # fmt: skip
        self.results.sent.append(record)
        for _attempt in range(3):  # as a provider would, retry a dropped connection
            try:
                status = await self.http.post(path, body, headers)
            except (OSError, IndexError, asyncio.IncompleteReadError) as exc:
                self.statuses[type(exc).__name__] += 1
                continue
            record.answered, record.status = time.time(), status
            self.statuses[status] += 1
            return


def offered_by_a_process_of_its_own(
    api_url: str, signer: Signer, job: tuple, results: Results
) -> Counter:
    """Load.send at the job's rate from a process of its own (as bench/saturation.py's
    LoadProcess), so that neither signing nor the HTTP client takes the API's GIL; its
    sends go into `results`, its answers' statuses are returned. The clocks (`time.time`,
    `perf_counter`, `monotonic`) are the machine's, the same in both processes."""
    context = multiprocessing.get_context("spawn")  # never fork the Temporal core
    conn, child = context.Pipe()
    process = context.Process(target=_load_child, args=(child, api_url, signer.private_pem(), job))
    process.start()
    sent, statuses = conn.recv()
    process.join(30)
    results.sent += sent
    return Counter(statuses)


def _load_child(conn, api_url: str, key_pem: bytes, job: tuple) -> None:
    crossing, run_id, leads, order, rate, total = job
    signer = Signer.from_pem(key_pem)
    load = Load(RawHttp(api_url), signer, crossing, run_id, leads, order, Results())
    asyncio.run(offer(rate, total, load.send))
    conn.send((load.results.sent, dict(load.statuses)))


async def drained(
    stack: RunningStack, sink: WebhookSink, results: Results, leads: Leads
) -> Snapshot:
    """Once every edge lead's notification has come (or DRAIN_SECONDS have passed) and
    every event is scored, what the database holds of the run."""
    await wait_until(
        lambda: len({r.header("X-Nurture-Delivery") for r in slack(sink)}) >= len(leads.edge),
        DRAIN_SECONDS,
        0.1,
    )
    await asyncio.sleep(SETTLE_SECONDS)  # room for a duplicate to arrive
    scored_ids = [s.event_id for s in results.sent]
    scored = ScoreChange.event_id.in_(scored_ids)
    await wait_until(
        lambda: count_rows(stack.database, ScoreChange, scored) >= len(results.sent),
        DRAIN_SECONDS,
        0.2,
    )
    return database_snapshot(stack, scored_ids, leads.edge_ids)


async def run(address: str, database_url: str | None, args: argparse.Namespace) -> Results:
    results = Results()
    signer = Signer()
    total = int(args.rate * args.seconds)
    run_id = uuid.uuid4().hex[:8]
    with (
        LogCounter().attached() as counter,
        tempfile.TemporaryDirectory() as tmp,
        WebhookSink() as sink,
    ):
        definitions = definitions_with_reps(Path(tmp) / "definitions", sink)
        async with (
            product_stack(address, database_url, args.split, definitions,
                          SENDGRID_WEBHOOK_PUBLIC_KEY=signer.public_key) as stack,
            api_client(stack) as http,
        ):  # fmt: skip
            leads = await enrolled_leads(http, stack.database, args)
            await bring_to_the_edge(http, stack.database, leads, args.crossing, run_id)
            order = slot_order(total, args.edge_leads, len(leads.background))
            job = (args.crossing, run_id, leads, order, args.rate, total)
            statuses = await asyncio.to_thread(
                offered_by_a_process_of_its_own, stack.api_url, signer, job, results
            )
            snapshot = await drained(stack, sink, results, leads)
            background_ids = [leads.ids[email] for email in leads.background]
            results.background_handoffs = count_rows(
                stack.database, Handoff, Handoff.lead_id.in_(background_ids)
            )
        received = slack(sink)

    analyse(results, snapshot, received, leads.edge, leads.ids)
    results.notes.append(f"HTTP answers (and errors, retried): {dict(statuses)}")
    results.notes += [f"{what}: {n}" for what, n in counter.counts.items()]
    if not counter.counts:
        results.notes.append("log: no warnings (no failed notification), no relay re-delivery")
    return results


def slack(sink: WebhookSink) -> list[Received]:
    return [r for r in sink.requests() if r.path.startswith("/slack/")]


@dataclass
class Snapshot:
    responses: dict[str, tuple[float, float | None]]  # event id -> received, delivered
    scored: dict[str, float]  # event id -> score row created
    handoffs: dict[str, tuple[str, str]]  # handoff id -> lead id, rep id
    assigned: dict[str, float]  # lead id -> the handoff's `assigned` event created
    notify_started: dict[str, float]  # lead id -> the webhook notification's event created
    notify_status: Counter[str]


def database_snapshot(stack, event_ids: list[str], edge_ids: list[str]) -> Snapshot:
    def wall(moment) -> float:
        return as_utc(moment).timestamp()

    with stack.database.sessions() as session:
        responses = {
            event_id: (wall(received), wall(delivered) if delivered else None)
            for event_id, received, delivered in session.execute(
                select(Response.event_id, Response.received_at, Response.delivered_at)
                .where(Response.event_id.in_(event_ids))
            )
        }  # fmt: skip
        scored = {
            event_id: wall(created)
            for event_id, created in session.execute(
                select(ScoreChange.event_id, ScoreChange.created_at)
                .where(ScoreChange.event_id.in_(event_ids))
            )
        }  # fmt: skip
        handoffs = {
            handoff_id: (lead_id, rep_id)
            for handoff_id, lead_id, rep_id in session.execute(
                select(Handoff.id, Handoff.lead_id, Handoff.rep_id)
                .where(Handoff.lead_id.in_(edge_ids))
            )
        }  # fmt: skip
        assigned, notify_started, notify_status = {}, {}, Counter()
        for handoff_id, key, channel, status, created in session.execute(
            select(HandoffEvent.handoff_id, HandoffEvent.key, HandoffEvent.channel,
                   HandoffEvent.status, HandoffEvent.created_at)
            .where(HandoffEvent.handoff_id.in_(list(handoffs)))
        ):  # fmt: skip
            lead_id = handoffs[handoff_id][0]
            if key == "assigned:0":
                assigned[lead_id] = wall(created)
            elif key.startswith("new:0:") and channel == "webhook":
                notify_started[lead_id] = wall(created)
            if channel:
                notify_status[f"{channel} {status}"] += 1
    return Snapshot(responses, scored, handoffs, assigned, notify_started, notify_status)


def analyse(
    results: Results, snap: Snapshot, received: list[Received], edge: list[str],
    ids: dict[str, str],
) -> None:  # fmt: skip
    crossings = [s for s in results.sent if s.kind == "crossing"]
    by_lead: dict[str, list[Received]] = defaultdict(list)
    for request in received:
        handoff_id = (request.header("X-Nurture-Delivery") or "").split(":")[0]
        if handoff_id in snap.handoffs:
            by_lead[snap.handoffs[handoff_id][0]].append(request)
        else:
            results.unmatched += 1

    first_send = min(s.wall for s in results.sent)
    done = [snap.scored[s.event_id] for s in results.sent if s.event_id in snap.scored]
    results.scored = len(done)
    results.scored_span = (max(done) - first_send) if done else 0.0
    results.handoffs = len(snap.handoffs)

    stages: dict[str, list[float]] = defaultdict(list)
    for s in crossings:
        email = edge[s.lead]
        lead_id = ids[email]
        notes = by_lead.get(lead_id, [])
        if not notes:
            results.missing += 1
            continue
        results.one_each += len(notes) == 1
        results.duplicates += len(notes) - 1
        first = min(notes, key=lambda r: r.monotonic)
        if email not in first.body.decode("utf-8", "replace"):
            results.unmatched += 1
        results.latencies.append(first.monotonic - s.monotonic)

        marks = [("send", s.wall)]
        splits = []
        stored, delivered = snap.responses.get(s.event_id, (None, None))
        for name, moment in (
            ("inbox row committed", stored),
            ("signal accepted", delivered),
            ("crossing scored", snap.scored.get(s.event_id)),
            ("handoff stored", snap.assigned.get(lead_id)),
            ("webhook notify started", snap.notify_started.get(lead_id)),
            ("webhook arrived", first.received_at),
        ):
            if moment is not None:
                stages[f"{marks[-1][0]} -> {name}"].append(moment - marks[-1][1])
                splits.append((name, moment - marks[-1][1]))
                marks.append((name, moment))
        results.slowest.append((results.latencies[-1], splits))
        if s.answered is not None:
            stages["(send -> HTTP answer)"].append(s.answered - s.wall)
    background = [s for s in results.sent if s.kind == "background" and s.answered is not None]
    stages["(background: send -> HTTP answer)"] = [s.answered - s.wall for s in background]
    stages["(background: send -> score row)"] = [
        snap.scored[s.event_id] - s.wall for s in background if s.event_id in snap.scored
    ]
    lags = [s.at - s.due for s in results.sent]
    stages["(sender lag behind schedule)"] = lags
    results.stages = dict(stages)
    results.notes.append(f"handoff notifications: {dict(snap.notify_status)}")


def report(args: argparse.Namespace, results: Results) -> bool:
    _type, points, how = CROSSINGS[args.crossing]
    total = len(results.sent)
    crossings = sum(1 for s in results.sent if s.kind == "crossing")
    sends = [s.at for s in results.sent]
    sent_rate = (total - 1) / (max(sends) - min(sends)) if total > 1 else 0.0
    scored_rate = results.scored / results.scored_span if results.scored_span else 0.0
    print(
        f"\nsettings: {args.rate:g} events/s for {args.seconds:g} s = {total} events: "
        f"{crossings} crossings ({args.crossing} +{points}, {how}) on {args.edge_leads} edge "
        f"leads at {SQL_AT - points} points, {total - crossings} background opens "
        f"(signed SendGrid events webhook) over {args.background_leads} leads; "
        f"3 reps notified by webhook + email"
    )
    print(f"rate: offered {args.rate:g}/s, sent {sent_rate:.1f}/s, scored {scored_rate:.1f}/s "
          f"({results.scored}/{total} events scored)")  # fmt: skip
    print(f"handoffs: {results.handoffs}/{args.edge_leads} edge leads; background leads "
          f"handed off: {results.background_handoffs}")  # fmt: skip
    exact = results.one_each == args.edge_leads and not results.unmatched
    print(f"webhook notifications: exactly one for {results.one_each}/{args.edge_leads} edge "
          f"leads; duplicates {results.duplicates}, missing {results.missing}, "
          f"unmatched {results.unmatched}: {'OK' if exact else 'NOT OK'}")  # fmt: skip

    lat = results.latencies
    p50, p99, worst = pct(lat, 0.5), pct(lat, 0.99), max(lat, default=float("nan"))
    print(f"\ncrossing response -> rep's webhook ({len(lat)} notifications): "
          f"p50 {ms(p50)} ms, p99 {ms(p99)} ms, max {ms(worst)} ms")  # fmt: skip
    print("\nwhere the time goes (p50 / p99 / max ms)")
    for stage, values in results.stages.items():
        if values:
            figures = " / ".join(ms(v) for v in (pct(values, 0.5), pct(values, 0.99), max(values)))
            print(f"  {stage:48}{figures}")
    for note in results.notes:
        print(f"  {note}")
    print("\nthe slowest crossings (ms from the step before)")
    for latency, splits in sorted(results.slowest, key=lambda x: -x[0])[:SHOW_SLOWEST]:
        steps = ", ".join(f"{name} +{ms(seconds)}" for name, seconds in splits)
        print(f"  {ms(latency):>6} ms: {steps}")
    met = p99 < TARGET_P99 and results.missing == 0 and exact
    short = f", {results.missing} notifications missing" if results.missing else ""
    print(f"\ntarget p99 < {TARGET_P99 * 1000:.0f} ms at {args.rate:g} events/s: "
          f"{'met' if met else 'MISSED'} ({ms(p99)} ms{short})")  # fmt: skip
    return met


async def main(args: argparse.Namespace) -> bool:
    total = int(args.rate * args.seconds)
    if not 0 < args.edge_leads < total:
        raise SystemExit(f"--edge-leads must be between 1 and {total - 1} (rate x seconds)")
    opens = -(-(total - args.edge_leads) // args.background_leads) * BACKGROUND_POINTS
    if opens >= SQL_AT:
        raise SystemExit(f"{opens} opens per background lead would reach SQL: more "
                         "--background-leads or fewer --seconds")  # fmt: skip
    async with temporal_dev_server() as env:
        address = env.client.service_client.config.target_host
        where = "PostgreSQL" if args.database_url else "SQLite"
        print(f"speed to lead: {args.rate:g} events/s for {args.seconds:g} s on {where} ...",
              flush=True)  # fmt: skip
        with database_for(args.database_url) as database_url:
            results = await run(address, database_url, args)
    return report(args, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="events per second, in all")
    parser.add_argument("--seconds", type=float, default=30, help="how long to offer them")
    parser.add_argument("--edge-leads", type=int, default=100, help="leads that cross SQL")
    parser.add_argument("--background-leads", type=int, default=50, help="background leads")
    parser.add_argument("--crossing", choices=sorted(CROSSINGS), default="page.view",
                        help="page.view via POST /events, or a SendGrid click")  # fmt: skip
    parser.add_argument("--database-url", help="PostgreSQL server (a fresh database, dropped "
                        "after); default SQLite")  # fmt: skip
    parser.add_argument("--split", action="store_true",
                        help="the worker in a process of its own, as in production")  # fmt: skip
    met = asyncio.run(main(parser.parse_args()))
    raise SystemExit(0 if met else 1)
