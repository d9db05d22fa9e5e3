"""Benchmark: response throughput of the full path against bare Temporal, at the same load.

Both runs share one in-memory Temporal dev server, this machine and this process:

- bare Temporal: one tiny workflow per lead; each event is a signal and a no-op activity;
- full path: the real stack (worker + API on SQLite); each event is a signed SendGrid
  webhook request -> inbox row -> signal (the relay re-drives what did not get through)
  -> LeadWorkflow -> `record_score` activity -> `score_changes` row.

Events are offered at --rate per second for --seconds, round-robin over --leads, each at
its scheduled time (not in bursts): one in each 1/rate slot, at a random point in it (the
same seeded schedule for both runs). Strictly even spacing phase-locks with a periodic
delay of about 50 ms somewhere in Temporal (server or SDK), which makes the p50 of a run
at 20/s anything from 20 to 65 ms depending on luck.

Latency runs from sending an event to the end of its activity (the no-op returning; the
score_changes row being written). Events per second are events completed / (last
completion - first send). Target: ratio >= 0.8 and full path p99 < 500 ms at 20 events/s.

    .venv/bin/python -m bench.response_throughput --rate 20 --seconds 30 --leads 50
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():  # the sandbox need not re-import these
    import httpx
    from sqlalchemy import select
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Worker

    from bench.common import LogCounter, count_rows, ms, pct, wait_until
    from models.db import Message, Response, ScoreChange, as_utc
    from services.runtime import Database
    from testkit.sendgrid_signer import Signer
    from testkit.stack import api_client, local_stack, temporal_dev_server
    from workflows import sandbox_runner

SEED = 4  # of the send schedule
DRAIN_SECONDS = 20  # how long to wait after the last send for stragglers
SEQUENCE = "month"  # welcome email, then a 7-day wait: no sends while we measure
EVENT = "open"  # 1 point: 12 per lead never cross a stage, so no handoff in the way


# --- the bare Temporal baseline ------------------------------------------------------------

FINISHED: dict[str, float] = {}  # event id -> perf_counter when its no-op activity ran


@activity.defn
def noop(event_id: str) -> None:
    FINISHED[event_id] = time.perf_counter()


@workflow.defn
class Baseline:
    """LeadWorkflow's response loop with nothing in it: queue on signal, one activity each."""

    def __init__(self) -> None:
        self._queue: list[str] = []
        self._closed = False

    @workflow.signal
    def respond(self, event_id: str) -> None:
        self._queue.append(event_id)

    @workflow.signal
    def close(self) -> None:
        self._closed = True

    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._queue) or self._closed)
            if not self._queue:
                return
            await workflow.execute_activity(
                noop, self._queue.pop(0), start_to_close_timeout=timedelta(seconds=30)
            )


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    offered: int
    latencies: list[float] = field(default_factory=list)  # seconds, completed events only
    first_send: float = 0.0
    last_done: float = 0.0
    send_lag: list[float] = field(default_factory=list)  # actual send - scheduled send
    stages: dict[str, list[float]] = field(default_factory=dict)  # breakdown, seconds
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        span = self.last_done - self.first_send
        return self.completed / span if span > 0 else 0.0


async def offer_load(
    rate: float, seconds: float, send: Callable[[int], Awaitable[None]], run: Run
) -> None:
    """Fire send(i) for event i in its own 1/rate slot, each as its own task (open loop)."""
    jitter = random.Random(SEED)
    start = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        due = start + (i + jitter.random()) / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        run.send_lag.append(time.perf_counter() - due)  # > 0: the event loop was busy
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)


async def run_baseline(address: str, rate: float, seconds: float, leads: int) -> Run:
    """Signal + no-op activity per event, with the worker set up as the product's is
    (its own client, the same sandbox, activities in a thread pool)."""
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    task_queue = f"bench-baseline-{uuid.uuid4().hex[:8]}"
    run = Run("bare Temporal", int(rate * seconds))
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[Baseline],
        workflow_runner=sandbox_runner(),
        activities=[noop],
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=32),
    )
    async with worker:
        handles = [
            await client.start_workflow(Baseline.run, id=f"{task_queue}-{n}", task_queue=task_queue)
            for n in range(leads)
        ]
        # Warm up: one event per workflow, so every workflow is cached as the leads' are.
        for n, handle in enumerate(handles):
            await handle.signal(Baseline.respond, f"warm-{n}")
        await wait_until(lambda: all(f"warm-{n}" in FINISHED for n in range(leads)), 30)

        sent: dict[str, float] = {}
        signalled: dict[str, float] = {}

        async def send(i: int) -> None:
            event_id = f"event-{i}"
            sent[event_id] = time.perf_counter()
            await handles[i % leads].signal(Baseline.respond, event_id)
            signalled[event_id] = time.perf_counter()

        await offer_load(rate, seconds, send, run)
        await wait_until(lambda: all(e in FINISHED for e in sent), DRAIN_SECONDS)
        for handle in handles:  # end them while the worker still runs
            await handle.signal(Baseline.close)
        await asyncio.gather(*(handle.result() for handle in handles))

    done = [e for e in sent if e in FINISHED]
    run.latencies = [FINISHED[e] - sent[e] for e in done]
    run.first_send = min(sent.values())
    run.last_done = max((FINISHED[e] for e in done), default=run.first_send)
    run.stages = {
        "send -> signal accepted": [signalled[e] - sent[e] for e in signalled],
        "signal accepted -> activity ran": [FINISHED[e] - signalled[e] for e in done],
    }
    return run


# --- the full path -------------------------------------------------------------------------


@dataclass
class WebhookLoad:
    """The full path's events: signed SendGrid opens, round-robin over the leads."""

    http: httpx.AsyncClient
    signer: Signer
    emails: list[str]
    lead_ids: list[str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sent: dict[str, float] = field(default_factory=dict)  # event id -> time.time() at send
    answered: dict[str, float] = field(default_factory=dict)  # (DB times are wall clock)
    statuses: Counter[int | str] = field(default_factory=Counter)

    @property
    def event_ids(self) -> str:
        """The run's event IDs, as a LIKE pattern."""
        return f"sendgrid:bench-{self.run_id}-%"

    async def send(self, i: int) -> None:
        n = i % len(self.emails)
        sg_id = f"bench-{self.run_id}-{i}"
        body = json.dumps([{
            "event": EVENT, "email": self.emails[n], "lead_id": self.lead_ids[n],
            "sg_event_id": sg_id, "timestamp": int(time.time()),
        }]).encode()  # fmt: skip
        headers = self.signer.headers(body)
        event_id = f"sendgrid:{sg_id}"
        self.sent[event_id] = time.time()
        for _attempt in range(3):  # as SendGrid would, retry a dropped connection
            try:
                answer = await self.http.post(
                    "/webhooks/sendgrid/events", content=body, headers=headers
                )
            except httpx.TransportError as exc:
                self.statuses[type(exc).__name__] += 1
                continue
            self.answered[event_id] = time.time()
            self.statuses[answer.status_code] += 1
            return


async def welcomed_leads(
    http: httpx.AsyncClient, database: Database, leads: int
) -> tuple[list[str], list[str]]:
    """`leads` leads (their emails and IDs), each in a sequence that sends its welcome
    email and then waits; returned once every welcome email is sent."""
    emails = [f"bench{n}@example.com" for n in range(leads)]
    lead_ids = []
    for email in emails:
        answer = await http.post(
            "/leads",
            json={"email": email, "sequence": SEQUENCE},
            headers={"Authorization": "Bearer bench"},
        )
        answer.raise_for_status()
        lead_ids.append(answer.json()["lead_id"])
    welcomed = (Message.step_id == "welcome", Message.status == "sent")
    await wait_until(lambda: count_rows(database, Message, *welcomed) >= leads, 60, every=0.2)
    await asyncio.sleep(1)  # let the sequences reach their 7-day wait
    return emails, lead_ids


def event_times(database: Database, event_ids: str) -> list[tuple]:
    """(event id, inbox row received, delivered, score change that counted it created):
    a burst scored at once is counted by one change, found through `scored_in`."""
    with database.sessions() as session:
        return session.execute(
            select(Response.event_id, Response.received_at, Response.delivered_at,
                   ScoreChange.created_at)
            .outerjoin(ScoreChange, ScoreChange.id == Response.scored_in)
            .where(Response.event_id.like(event_ids))
        ).all()  # fmt: skip


async def run_full(address: str, rate: float, seconds: float, leads: int) -> Run:
    run = Run("full path", int(rate * seconds))
    signer = Signer()
    with LogCounter().attached() as counter:
        async with (
            local_stack(address, task_queue=f"bench-full-{uuid.uuid4().hex[:8]}", token="bench",
                        SENDGRID_WEBHOOK_PUBLIC_KEY=signer.public_key) as stack,
            api_client(stack) as http,
        ):  # fmt: skip
            emails, lead_ids = await welcomed_leads(http, stack.database, leads)
            load = WebhookLoad(http, signer, emails, lead_ids)
            await offer_load(rate, seconds, load.send, run)
            scored = ScoreChange.event_id.like(load.event_ids)
            await wait_until(
                lambda: count_rows(stack.database, ScoreChange, scored) >= len(load.sent),
                DRAIN_SECONDS,
                0.2,
            )
            rows = event_times(stack.database, load.event_ids)
    full_path_figures(run, rows, load, counter)
    return run


def full_path_figures(run: Run, rows: list[tuple], load: WebhookLoad, counter: LogCounter) -> None:
    """The full run's latencies, stages and notes, from the database's times."""
    sent, answered = load.sent, load.answered
    stored, signalled, scored_at = {}, {}, {}
    for event_id, received_at, delivered_at, created_at in rows:
        stored[event_id] = as_utc(received_at).timestamp()
        if delivered_at is not None:
            signalled[event_id] = as_utc(delivered_at).timestamp()
        if created_at is not None:
            scored_at[event_id] = as_utc(created_at).timestamp()
    run.latencies = [scored_at[e] - sent[e] for e in sent if e in scored_at]
    run.first_send = min(sent.values())
    run.last_done = max(scored_at.values(), default=run.first_send)
    both = [e for e in scored_at if e in signalled]
    run.stages = {
        "send -> inbox row committed": [stored[e] - sent[e] for e in stored],
        "inbox row -> signal accepted": [signalled[e] - stored[e] for e in signalled],
        "signal accepted -> score row": [scored_at[e] - signalled[e] for e in both],
        "send -> HTTP answer": [answered[e] - sent[e] for e in answered],
    }
    relayed = sum(1 for e in signalled if signalled[e] > answered.get(e, float("inf")))
    run.notes.append(f"HTTP answers (and errors, retried): {dict(load.statuses)}")
    run.notes.append(f"delivered after the HTTP answer (background or relay): {relayed}")
    run.notes += [f"{what}: {n}" for what, n in counter.counts.items()]


# --- report ----------------------------------------------------------------------------------


def report(rate: float, seconds: float, leads: int, base: Run, full: Run) -> None:
    print(f"\noffered: {rate:g} events/s for {seconds:g} s over {leads} leads "
          f"({base.offered} events per run)\n")  # fmt: skip
    print(f"{'':16}{'events/s':>10}{'done':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for run in (base, full):
        done = f"{run.completed}/{run.offered}"
        print(
            f"{run.name:16}{run.rate:>10.1f}{done:>11}{ms(pct(run.latencies, 0.5)):>9}"
            f"{ms(pct(run.latencies, 0.99)):>9}{ms(max(run.latencies, default=float('nan'))):>9}"
        )
    ratio = full.rate / base.rate if base.rate else 0.0
    print(f"{'ratio full/bare':16}{ratio:>10.2f}")

    for run in (base, full):
        print(f"\n{run.name}: where the time goes (p50 / p99 / max ms)")
        for stage, values in run.stages.items():
            figures = " / ".join(ms(v) for v in (pct(values, 0.5), pct(values, 0.99), max(values)))
            print(f"  {stage:34}{figures}")
        print(f"  {'sender lag behind schedule':34}{ms(pct(run.send_lag, 0.5))} / "
              f"{ms(pct(run.send_lag, 0.99))} / {ms(max(run.send_lag))}")  # fmt: skip
        for note in run.notes:
            print(f"  {note}")

    p99 = pct(full.latencies, 0.99)
    complete = full.completed == full.offered
    print(f"\ntargets: ratio >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'} ({ratio:.2f}); "
          f"full path p99 < 500 ms: {'met' if p99 < 0.5 and complete else 'MISSED'} "
          f"({ms(p99)} ms{'' if complete else ', not every event completed'})")  # fmt: skip


async def main(rate: float, seconds: float, leads: int) -> None:
    async with temporal_dev_server() as env:
        address = env.client.service_client.config.target_host
        print(f"bare Temporal: {rate:g} events/s for {seconds:g} s ...", flush=True)
        base = await run_baseline(address, rate, seconds, leads)
        print(f"full path: {rate:g} events/s for {seconds:g} s ...", flush=True)
        full = await run_full(address, rate, seconds, leads)
    report(rate, seconds, leads, base, full)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="events per second offered")
    parser.add_argument("--seconds", type=float, default=30, help="how long to offer them")
    parser.add_argument("--leads", type=int, default=50, help="leads the events spread over")
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.leads))
