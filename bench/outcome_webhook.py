"""Benchmark: outcomes through the signed CRM webhook (`POST /webhooks/crm`), open loop.

Nurture as production runs it: one `nurture api` process and one `python worker.py`
(testkit/processes.py) on an in-memory Temporal dev server and a SQLite file (or a
PostgreSQL database, --database-url), with the test definitions; the load comes from
this process, over a lean HTTP client (the machine's 2 cores are shared by all of it).
Setup: --leads leads via `POST /leads` in the `month` sequence (a welcome email, then a
7-day wait), so each has a running workflow for the opportunities' news. Then, at
--rate requests per second for --seconds, each in its own 1/rate slot: one signed
opportunity event a request (HMAC-SHA256 over timestamp + body, as a CRM sends them),
cycling through each opportunity's created, stage_changed and won or lost, spread over
the leads. Latency runs from sending to the answer: the event is stored, and its news
goes on to the lead's workflow in the background. Printed too: the CPU each process
used while the load was offered.

Baseline, in the same run and at the same rate: `GET /health`, the HTTP floor of the same
API process. Afterwards every event must be stored exactly once, and each opportunity's
news (a response per state it reached; two events close together may skip `open`)
delivered to its lead's workflow. Target: p99 under 200 ms at 50 requests/s.

    .venv/bin/python -m bench.outcome_webhook --rate 50 --seconds 20
    .venv/bin/python -m bench.outcome_webhook \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select

from bench.common import count_rows, ms, pct, wait_until
from bench.saturation import (
    CHILD_LABELS,
    RawHttp,
    cpu_between,
    cpu_snapshot,
    fresh_postgres,
)
from models.db import Message, Opportunity, OutcomeEvent, Response
from sales.outbound_webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from testkit import FIXTURE_DEFINITIONS
from testkit.processes import prepare, running_processes
from testkit.stack import temporal_dev_server

SEED = 7
SEQUENCE = "month"
TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "bench-crm-secret"
TARGET_P99 = 0.200
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


async def offer(rate: float, total: int, send: Callable[[int], Awaitable[float]]) -> list[float]:
    """send(i) in its own 1/rate slot, each its own task; the latencies it returns."""
    jitter = random.Random(SEED)
    start, tasks = time.perf_counter(), []
    for i in range(total):
        due = start + (i + jitter.random()) / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    return list(await asyncio.gather(*tasks))


def event(i: int, emails: list[str]) -> dict:
    """Event i: opportunity i // 3, for lead (i // 3) mod leads; created, stage_changed,
    then won (two in three) or lost."""
    opportunity, step = divmod(i, 3)
    closing = "won" if opportunity % 3 else "lost"
    kind = ("created", "stage_changed", closing)[step]
    body = {"opportunity_id": f"bench-{opportunity}", "kind": kind,
            "email": emails[opportunity % len(emails)], "event_id": f"bench-event-{i}",
            "occurred_at": (START + timedelta(minutes=i)).isoformat(),
            "amount": str(1000 + opportunity % 50 * 100), "currency": "USD"}  # fmt: skip
    if kind == "lost":
        body["lost_reason"] = "budget"
    return body


async def post_signed(http: RawHttp, payload: dict) -> float:
    body = json.dumps({"events": [payload]}).encode()
    stamp = int(time.time())
    headers = {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: sign(SECRET, stamp, body),
               "Content-Type": "application/json"}  # fmt: skip
    started = time.perf_counter()
    status = await http.post("/webhooks/crm", body, headers)
    if status != 200:
        raise RuntimeError(f"POST /webhooks/crm answered {status}")
    return time.perf_counter() - started


async def health(http: RawHttp) -> float:
    started = time.perf_counter()
    if (status := await http.post("/health", b"", {}, method="GET")) != 200:
        raise RuntimeError(f"GET /health answered {status}")
    return time.perf_counter() - started


async def run(address: str, args: argparse.Namespace) -> dict:
    total = int(args.rate * args.seconds)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-outcomes-"))
        url = (stack.enter_context(fresh_postgres(args.database_url)) if args.database_url
               else f"sqlite:///{tmp}/nurture.db")  # fmt: skip
        env = os.environ.copy() | {
            "NURTURE_STATE_DIR": f"{tmp}/state", "NURTURE_DEFINITIONS": str(FIXTURE_DEFINITIONS),
            "DATABASE_URL": url, "TEMPORAL_ADDRESS": address,
            "NURTURE_TASK_QUEUE": "bench-outcomes", "NURTURE_API_TOKEN": TOKEN,
            "NURTURE_CRM_WEBHOOK_SECRETS": SECRET,
        }  # fmt: skip
        _definitions, database = prepare(env)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with (
            running_processes(env, apis=1, workers=1, logs=Path(tmp) / "logs") as fleet,
            httpx.AsyncClient(base_url=fleet.api_urls[0], limits=limits, timeout=60) as http,
        ):  # fmt: skip
            CHILD_LABELS[fleet.apis[0].popen.pid] = "API process"
            CHILD_LABELS[fleet.workers[0].popen.pid] = "worker process"
            emails = await enrolled(http, database, args.leads)
            raw = RawHttp(fleet.api_urls[0])  # lean: the load shares the machine's 2 cores
            baseline = await offer(args.rate, total, lambda i: health(raw))
            began, cpu_before = time.perf_counter(), cpu_snapshot()
            outcomes = await offer(args.rate, total, lambda i: post_signed(raw, event(i, emails)))
            offered = time.perf_counter() - began
            cpu, gauges = cpu_between(cpu_before, cpu_snapshot())
            await wait_until(lambda: _news(database)[1] == _news(database)[0], 120, 0.2)
            delivered_after = time.perf_counter() - began
            news, delivered = _news(database)
            database.engine.dispose()
            return {"total": total, "baseline": baseline, "outcomes": outcomes,
                    "offered": offered, "events": count_rows(database, OutcomeEvent),
                    "opportunities": count_rows(database, Opportunity), "news": news,
                    "delivered": delivered, "closed_news": _closed_news(database),
                    "cpu": cpu, "wall": gauges["wall"], "cores": gauges["cores"],
                    "delivered_after": delivered_after}  # fmt: skip


async def enrolled(http: httpx.AsyncClient, database, leads: int) -> list[str]:
    """The leads' emails, once each lead's welcome email is sent."""
    emails = [f"buyer-{n:04d}@example.com" for n in range(leads)]
    for email in emails:
        answer = await http.post("/leads", json={"email": email, "sequence": SEQUENCE},
                                 headers=AUTH)  # fmt: skip
        answer.raise_for_status()
    welcomed = (Message.step_id == "welcome", Message.status == "sent")
    await wait_until(lambda: count_rows(database, Message, *welcomed) >= leads, 120, 0.2)
    return emails


def _news(database) -> tuple[int, int]:
    """The CRM's news responses, and how many of them the leads' workflows have."""
    with database.sessions() as session:
        crm = select(func.count()).select_from(Response).where(Response.source == "crm")
        return (session.scalar(crm),
                session.scalar(crm.where(Response.delivered_at.is_not(None))))  # fmt: skip


def _closed_news(database) -> bool:
    """Every closed opportunity's lead has the news of that close."""
    with database.sessions() as session:
        closed = session.scalars(select(Opportunity.crm_id).where(
            Opportunity.status.in_(("won", "lost")))).all()  # fmt: skip
        told = session.scalars(select(Response.data).where(Response.source == "crm")).all()
        closes = {(d["opportunity_id"]) for d in told if d.get("status") in ("won", "lost")}
        return set(closed) <= closes


def report(args: argparse.Namespace, result: dict) -> bool:
    print(f"\n{result['total']} requests at {args.rate:g}/s over {args.seconds:g} s "
          f"(offered in {result['offered']:.1f} s), {args.leads} leads")  # fmt: skip
    print(f"{'':28}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    for name, values in (("baseline: GET /health", result["baseline"]),
                         ("POST /webhooks/crm", result["outcomes"])):  # fmt: skip
        print(f"{name:28}{ms(pct(values, 0.5)):>8}{ms(pct(values, 0.99)):>8}"
              f"{ms(max(values)):>8}")  # fmt: skip
    exact = (result["events"] == result["total"] and result["closed_news"]
             and result["delivered"] == result["news"])  # fmt: skip
    print(f"events stored {result['events']} of {result['total']}; opportunities "
          f"{result['opportunities']}; news {result['news']}, {result['delivered']} delivered "
          f"{result['delivered_after']:.1f} s after the first request; every close told: "
          f"{result['closed_news']}")  # fmt: skip
    print(f"while offered: {result['cores']:.2f} of {os.cpu_count()} cores busy; CPU "
          "seconds a second by component:")  # fmt: skip
    for component, seconds in sorted(result["cpu"].items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {component:30}{seconds / result['wall']:6.2f}")
    p99 = pct(result["outcomes"], 0.99)
    met = exact and p99 < TARGET_P99
    print(f"target p99 < {ms(TARGET_P99)} ms, each event once: {'met' if met else 'MISSED'}")
    return met


async def main(args: argparse.Namespace) -> bool:
    async with temporal_dev_server() as env:
        address = env.client.service_client.config.target_host
        print(f"outcome webhook: {args.rate:g}/s for {args.seconds:g} s ...", flush=True)
        return report(args, await run(address, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20, help="how long to offer them")
    parser.add_argument("--leads", type=int, default=100, help="leads the outcomes are for")
    parser.add_argument("--database-url", help="a PostgreSQL server (a fresh database on it, "
                        "dropped after); SQLite otherwise")  # fmt: skip
    raise SystemExit(0 if asyncio.run(main(parser.parse_args())) else 1)
