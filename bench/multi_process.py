"""Benchmark: one API and one worker against two of each, as real processes on PostgreSQL.

bench/saturation.py's full-path load (signed SendGrid event batches at an offered rate,
from load-generator processes of their own) against two deployments side by side on one
Temporal dev server, each on a fresh PostgreSQL database of its own and each run by
testkit/processes.py as production runs it (`nurture api`, `python worker.py`):

- 1+1: one API process and one worker process;
- 2+2: two API processes and two worker processes on one task queue.

Both get the same load generator: two sender processes each offering half the rate
(each over half the step's leads), both to the one API (1+1) or one to each API (2+2).
At each rate (--rates, each offered for --seconds) each deployment takes a step, in
turn (which goes first alternates), each step on a deployment started for it (nothing of
the other runs meanwhile) with fresh leads (a welcome email, then a 7-day wait). Per
step: the rate offered, what the senders kept up, completions per second inside the
window (--settle s after the first send to the end of the offering), p50/p99 from send
to the score change that counted the event (after a drain of at most --drain s), the
machine's busy cores, the deployment's peak PostgreSQL connections, and non-2xx answers
(a 503: the API could not reach the database, e.g. no connection left). Each
deployment connects as a role of its own allowed --connections connections (the server
is shared: a deployment past its limit gets errors, others keep theirs); --set
passes settings to every process (NURTURE_MAX_CONCURRENT_ACTIVITIES sizes each
process's pool: that many connections, and 10 more at peaks).

A deployment's saturation is its best completed/s over the ramp. The report sets 2+2
against 1+1 at each rate and at 1+1's saturation rate. Target: (2+2)/(1+1) >= 1.0 there.
On a machine with few cores both deployments share them with the dev server, PostgreSQL
and the senders: the ratio says whether a second API and worker cost throughput, not
how far more cores would take it.

    .venv/bin/python -m bench.multi_process --rates 40,80,120 --seconds 12
    .venv/bin/python -m bench.multi_process --set NURTURE_MAX_CONCURRENT_ACTIVITIES=8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.common import ms, pct, wait_until
from bench.response_throughput import Run, event_times
from bench.saturation import (
    CHILD_LABELS,
    LoadProcess,
    Step,
    cpu_between,
    cpu_snapshot,
    fresh_leads,
    fresh_postgres,
    window_figures,
)
from models.db import Response, as_utc
from services.runtime import Database
from testkit import FIXTURE_DEFINITIONS
from testkit.processes import Fleet, prepare, running_processes
from testkit.sendgrid_signer import Signer
from testkit.stack import temporal_dev_server

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SENDERS = 2  # load-generator processes per deployment, each offering half the rate


def deployment_env(database_url: str, address: str, state: Path, public_key: str) -> dict:
    """The settings every process of one deployment shares (email goes to the outbox)."""
    return os.environ.copy() | {
        "NURTURE_STATE_DIR": str(state), "NURTURE_DEFINITIONS": str(FIXTURE_DEFINITIONS),
        "DATABASE_URL": database_url, "TEMPORAL_ADDRESS": address,
        "NURTURE_TASK_QUEUE": f"bench-mp-{uuid.uuid4().hex[:8]}", "NURTURE_API_TOKEN": "bench",
        "NURTURE_SECRET_KEY": "bench-multi-process", "SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
        "NURTURE_LOG_LEVEL": "WARNING",  # no access log line per request
    }  # fmt: skip


@contextlib.contextmanager
def limited_role(server_url: str, limit: int):
    """A login role of the deployment's own allowed `limit` connections (a superuser's
    are not limited): past it its processes get errors, and the server, shared with
    others, keeps connections for everyone else. Dropped afterwards."""
    role = f"bench_mp_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT {int(limit)}'))
    try:
        yield role
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def owned_by(server_url: str, database_url: str, role: str) -> str:
    """The database given to `role` (it migrates it); its URL as that role."""
    url = make_url(database_url)
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{url.database}" OWNER TO "{role}"'))
    admin.dispose()
    return url.set(username=role).render_as_string(hide_password=False)


def label(fleet: Fleet, senders: list[LoadProcess]) -> None:
    """Name the processes for cpu_snapshot (by their PIDs: they are all Python)."""
    for process in fleet.apis:
        CHILD_LABELS[process.popen.pid] = "API"
    for process in fleet.workers:
        CHILD_LABELS[process.popen.pid] = "worker"
    for sender in senders:
        CHILD_LABELS[sender.process.pid] = "load"


COMPONENTS = {"API": "API", "worker": "worker", "dev server (Go)": "server",
              "PostgreSQL (all backends)": "pg", "load": "load"}  # fmt: skip


@dataclass
class Deployment:
    name: str
    fleet: Fleet
    database: Database
    http: httpx.AsyncClient  # to enroll the leads
    senders: list[LoadProcess]

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, size: int, address: str, server_url: str, signer: Signer,
                      batch: int, settings: dict, connections: int,
                      ) -> AsyncIterator[Deployment]:  # fmt: skip
        """`size` API and `size` worker processes on a fresh database, with SENDERS senders;
        `settings`: more environment for every process."""
        with (
            limited_role(server_url, connections) as role,
            fresh_postgres(server_url) as url,
            tempfile.TemporaryDirectory() as tmp,
        ):
            url = owned_by(server_url, url, role)
            env = deployment_env(url, address, Path(tmp) / "state", signer.public_key)
            env |= settings
            _definitions, database = prepare(env)
            logs = Path(tmp) / "logs"
            try:
                async with (
                    running_processes(env, apis=size, workers=size, logs=logs) as fleet,
                    httpx.AsyncClient(base_url=fleet.api_urls[0], timeout=60) as http,
                ):  # fmt: skip
                    urls = [fleet.api_urls[n % size] for n in range(SENDERS)]
                    senders = [LoadProcess(u, signer, batch) for u in urls]
                    label(fleet, senders)
                    try:
                        for sender in senders:
                            await sender.ready()
                        yield cls(f"{size}+{size}", fleet, database, http, senders)
                    finally:
                        for sender in senders:
                            sender.close()
            finally:
                database.engine.dispose()

    async def step(self, rate: float, seconds: float, settle: float, leads: int,
                   drain: float) -> tuple[Step, Counter]:  # fmt: skip
        """One offering of `rate` events/s; the step's figures and the answers' statuses."""
        emails, lead_ids = await fresh_leads(self.http, self.database, leads, uuid.uuid4().hex[:8])
        before, connections = cpu_snapshot(), []
        sampler = asyncio.create_task(self.sample_connections(connections))
        offers = await asyncio.gather(*(
            sender.offer(rate / SENDERS, seconds, emails[n::SENDERS], lead_ids[n::SENDERS])
            for n, sender in enumerate(self.senders)
        ))  # fmt: skip
        window = cpu_snapshot()
        loads = [load for _start, load, _lag in offers]
        sent = {event: at for load in loads for event, at in load.sent.items()}
        await wait_until(lambda: self.scored(loads) >= len(sent), drain, 0.5)
        sampler.cancel()
        after = cpu_snapshot()
        self.fleet.assert_running(except_killed=False)
        rows = [row for load in loads for row in event_times(self.database, load.event_ids)]
        done = {row[0]: as_utc(row[3]).timestamp() for row in rows if row[3] is not None}
        step = Step(self.name, rate, seconds, settle)
        window_figures(step, min(start for start, _, _ in offers), list(sent.values()),
                       list(done.values()))  # fmt: skip
        step.run = Run(self.name, int(rate * seconds))
        step.run.latencies = [done[event] - sent[event] for event in done]
        step.gauges = cpu_between(before, window)[1]
        step.gauges["connections"] = max(connections, default=0)
        step.cpu = cpu_between(before, after)[0]
        return step, sum((load.statuses for load in loads), Counter())

    async def sample_connections(self, peaks: list[int]) -> None:
        """The deployment's PostgreSQL connections, every 0.5 s, until cancelled."""
        count = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        while True:
            with self.database.sessions() as session:
                peaks.append(session.scalar(count))
            await asyncio.sleep(0.5)

    def scored(self, loads) -> int:
        with self.database.sessions() as session:
            return sum(session.scalar(
                select(func.count()).select_from(Response)
                .where(Response.event_id.like(load.event_ids), Response.scored_in.is_not(None))
            ) for load in loads)  # fmt: skip


HEADER = (f"{'deployment':12}{'offered':>8}{'sent/s':>8}{'done/s':>8}{'done':>11}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'cores':>7}{'pg conns':>9}"
          + "".join(f"{short:>7}" for short in COMPONENTS.values()) + "  not 2xx")  # fmt: skip


def step_line(step: Step, statuses: Counter) -> str:
    latencies = step.run.latencies
    bad = {k: n for k, n in statuses.items() if not (isinstance(k, int) and 200 <= k < 300)}
    return (f"{step.path:12}{step.offered:>8.0f}{step.sent_rate:>8.1f}{step.rate:>8.1f}"
            f"{f'{step.completed}/{step.sent}':>11}{ms(pct(latencies, 0.5)):>8}"
            f"{ms(pct(latencies, 0.99)):>8}{step.gauges['cores']:>7.2f}"
            f"{step.gauges['connections']:>9.0f}"
            + "".join(f"{1000 * step.cpu.get(c, 0.0) / (step.completed or 1):>7.2f}"
                      for c in COMPONENTS)
            + f"  {bad or '-'}")  # fmt: skip


def report(steps: dict[str, list[Step]]) -> None:
    one, two = steps["1+1"], steps["2+2"]
    print("\n=== 2+2 against 1+1 on PostgreSQL ===")
    for name, runs in steps.items():
        best = max(runs, key=lambda s: s.rate)
        print(f"{name}: saturates at {best.rate:.1f} completed/s (offered {best.offered:.0f}/s, "
              f"p50 {ms(pct(best.run.latencies, 0.5))} ms, "
              f"p99 {ms(pct(best.run.latencies, 0.99))} ms)")  # fmt: skip
    by_rate = {s.offered: s for s in two}
    for step in one:
        if (other := by_rate.get(step.offered)) is not None and step.rate:
            print(f"  at {step.offered:.0f}/s offered: 2+2 {other.rate:.1f} / 1+1 "
                  f"{step.rate:.1f} completed/s = {other.rate / step.rate:.2f}")  # fmt: skip
    peak = max(one, key=lambda s: s.rate)
    if (other := by_rate.get(peak.offered)) is not None:
        ratio = other.rate / peak.rate
        print(f"ratio (2+2)/(1+1) at 1+1's saturation rate ({peak.offered:.0f}/s offered): "
              f"{ratio:.2f} (target >= 1.0: {'met' if ratio >= 1.0 else 'MISSED'})")  # fmt: skip
    print(f"ratio of the peaks: {max(s.rate for s in two) / peak.rate:.2f}")


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    settings = dict(item.split("=", 1) for item in filter(None, args.set.split(",")))
    signer = Signer()
    print(f"{args.seconds:g} s per step, {args.leads} leads per step, {args.batch} "
          f"event(s) per SendGrid request, {SENDERS} senders per deployment, completions "
          f"counted from {args.settle:g} s in; {os.cpu_count()} cores; at most "
          f"{args.connections} connections per deployment; settings: "
          f"{settings or 'defaults'}\ncores: the machine's busy cores during the offering; "
          f"pg conns: the deployment's peak PostgreSQL connections; API ... load: CPU ms "
          f"per completed event (all API processes, all workers, the dev server, PostgreSQL "
          f"(the machine's), the senders)", flush=True)  # fmt: skip
    print(HEADER, flush=True)
    steps: dict[str, list[Step]] = {"1+1": [], "2+2": []}
    async with temporal_dev_server() as env:
        address = env.client.service_client.config.target_host
        for index, rate in enumerate(rates):
            for size in (1, 2) if index % 2 == 0 else (2, 1):
                # Each step on a deployment of its own: nothing of the other one runs (an
                # idle deployment's pools would hold PostgreSQL connections).
                async with Deployment.running(size, address, args.database_url, signer,
                                              args.batch, settings,
                                              args.connections) as deployment:  # fmt: skip
                    step, statuses = await deployment.step(rate, args.seconds, args.settle,
                                                           args.leads, args.drain)  # fmt: skip
                steps[deployment.name].append(step)
                print(step_line(step, statuses), flush=True)
    report(steps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="40,80,120", help="events/s, in steps")
    parser.add_argument("--seconds", type=float, default=12, help="each step's offering")
    parser.add_argument("--settle", type=float, default=2, help="seconds before counting")
    parser.add_argument("--leads", type=int, default=50, help="leads the events spread over")
    parser.add_argument("--drain", type=float, default=60, help="at most, after each step")
    parser.add_argument("--batch", type=int, default=1, help="SendGrid events per request")
    parser.add_argument("--database-url", default=SERVER, help="a PostgreSQL server (a "
                        "database to connect to); a fresh one per deployment")  # fmt: skip
    parser.add_argument("--connections", type=int, default=70, help="PostgreSQL connection "
                        "limit of each deployment's database (the server is shared)")  # fmt: skip
    parser.add_argument("--set", default="", help="settings for every process, e.g. "
                        "NURTURE_MAX_CONCURRENT_ACTIVITIES=8 (comma-separated)")  # fmt: skip
    asyncio.run(main(parser.parse_args()))
    # The report is out. Exit now: the Temporal core's threads can abort the interpreter's
    # finalization (PyGILState_Release), which would turn a finished run into exit 134.
    sys.stdout.flush()
    os._exit(0)
