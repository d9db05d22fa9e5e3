"""Benchmark: many leads in flight on one on-disk dev server and one worker, then a mass
wake-up against bare Temporal's.

One Temporal dev server on a SQLite file in WAL mode (devstack.temporal_server, as
`nurture dev` runs it), one `python worker.py` process, Nurture's database on SQLite (or
PostgreSQL: --database-url, a fresh database made there and dropped afterwards), sends
going to the SendGrid imitation (testkit.providers), which records every request:

1. enrollment: --leads leads through the importer `nurture import` runs (a CSV, 50
   enrollments in flight), in two files: the leads that stay in flight (sequence `hold`:
   a welcome email, then a 30-day wait), then --wake leads in sequence `wake`, whose one
   email is held back by its send window until a chosen minute (bench/definitions_in_flight;
   the window's hours are written for this run). Leads/s, with progress as it goes;
2. the worker's RSS (/proc/<pid>/status VmRSS): before any lead, while enrolling, with
   every lead waiting (the workflow cache full: NURTURE_MAX_CACHED_WORKFLOWS, exceeded
   many times over), after a worker restart (everything evicted), after the wake-up;
3. history size per lead: events and bytes, over a sample of `hold` leads waiting and of
   `wake` leads after their send;
4. the mass wake-up: the --wake leads' window opens at the same second; sends/s from the
   first to the last request the imitation records, and each lead sent exactly once (the
   imitation's requests and the `messages` rows). Then, on the same server, bare Temporal:
   --wake minimal workflows (their own worker process, set up as the product's: sandbox,
   the same cache size, 32 activity threads) sleep until one moment and run one no-op
   activity that notes the time; measured the same way. Target: full/bare >= 0.8.

The worker's send rate limit (NURTURE_EMAIL_SENDS_PER_SECOND, 100 by default) is raised
to --sends-per-second: what is measured is the engine, not a provider's quota.

    .venv/bin/python -m bench.in_flight --leads 2000 --wake 500
    .venv/bin/python -m bench.in_flight          # 100,000 leads, 10,000 woken
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import csv
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.common import count_rows
from bench.saturation import fresh_postgres
from bench.sleeper import Sleeper, note_woken
from devstack.temporal_server import TemporalDevServer, free_port
from infra.settings import Settings
from models.db import Lead, Message
from models.workflow_io import lead_workflow_id
from services.definitions import load_definitions
from services.importer import LeadImporter, open_csv, plan_columns
from services.intake import Intake
from services.runtime import open_database, sync_sales_reps
from testkit import FIXTURE_DEFINITIONS
from testkit.providers import ProviderServer, worker_process_env
from workflows import sandbox_runner

ROOT = Path(__file__).parent.parent
OWN_DEFINITIONS = Path(__file__).parent / "definitions_in_flight"
WAKE_WINDOW = 'hours: "12:00-24:00"'  # in sequences/wake.yaml, rewritten per run
NUDGE_SUBJECT = "Following up"  # the `followup` template's subject: the woken send
SAMPLE = 20  # histories fetched per kind of lead


# --- the bare Temporal baseline: sleep until a moment, then one no-op activity -------------


async def bare_worker(address: str, task_queue: str, cache: int) -> None:
    """The baseline's worker process (--bare-worker), set up as the product's worker."""
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[Sleeper],
        workflow_runner=sandbox_runner(),
        activities=[note_woken],
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=32),
        max_concurrent_activities=32,
        max_concurrent_workflow_tasks=100,
        max_cached_workflows=cache,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        await stop.wait()


# --- processes and their memory ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def start_process(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, *args, env=env, cwd=ROOT)


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


class TimedRequests(list):
    """The imitation's request list, noting when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item) -> None:
        self.times.append(time.time())
        super().append(item)


# --- the run's state -----------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    server: TemporalDevServer
    providers: ProviderServer
    database_url: str
    task_queue: str = field(default_factory=lambda: f"in-flight-{uuid.uuid4().hex[:8]}")
    worker: asyncio.subprocess.Process | None = None
    client: Client | None = None
    database = None
    figures: dict[str, str] = field(default_factory=dict)
    rss: list[tuple[str, float]] = field(default_factory=list)

    @property
    def definitions_dir(self) -> Path:
        return self.tmp / "definitions"

    def settings(self) -> Settings:
        return Settings(NURTURE_STATE_DIR=self.tmp / "state",
                        NURTURE_DEFINITIONS=self.definitions_dir,
                        DATABASE_URL=self.database_url,
                        TEMPORAL_ADDRESS=self.server.address,
                        NURTURE_TASK_QUEUE=self.task_queue)  # fmt: skip

    def worker_env(self) -> dict[str, str]:
        env = worker_process_env(
            self.providers,
            str(self.definitions_dir),
            self.database_url,
            self.server.address,
            self.task_queue,
            str(self.tmp / "state"),
        )
        return env | {
            "NURTURE_LOG_LEVEL": "WARNING",
            "NURTURE_MAX_CACHED_WORKFLOWS": str(self.args.cache),
            "NURTURE_EMAIL_SENDS_PER_SECOND": str(self.args.sends_per_second),
        }

    async def start_worker(self) -> None:
        self.worker = await start_process([str(ROOT / "worker.py")], self.worker_env())
        await asyncio.sleep(3)  # connected and polling

    def note_rss(self, moment: str) -> float:
        value = rss_mb(self.worker.pid)
        self.rss.append((moment, value))
        print(f"  worker RSS {moment}: {value:.0f} MB", flush=True)
        return value

    def say(self, name: str, value: str) -> None:
        self.figures[name] = value
        print(f"{name}: {value}", flush=True)


# --- 1. enrollment ---------------------------------------------------------------------------


def write_leads(path: Path, prefix: str, count: int, zone: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Email", "First Name", "Time Zone"])
        for n in range(count):
            writer.writerow([f"{prefix}{n}@example.com", f"Lead{n}", zone])


async def import_leads(bench: Bench, path: Path, sequence: str, definitions) -> float:
    """Import the file's leads into `sequence`, printing progress; returns the seconds."""
    intake = Intake(definitions, bench.database.sessions, bench.client, bench.task_queue)
    source = open_csv(path)
    enrolled = Counter()
    importer = LeadImporter(source, plan_columns(source.headers), intake, sequence=sequence,
                            progress=lambda kind, n: enrolled.update({kind: n}))  # fmt: skip
    started = time.perf_counter()

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            seconds = time.perf_counter() - started
            done, sent = enrolled["enrolled"], len(bench.providers.requests)
            print(f"  {sequence}: {done:,} enrolled in {seconds:.0f} s ({done / seconds:.0f}/s), "
                  f"{sent:,} emails sent, worker RSS {rss_mb(bench.worker.pid):.0f} MB",
                  flush=True)  # fmt: skip

    printer = asyncio.create_task(progress())
    try:
        report = await importer.run()
    finally:
        printer.cancel()
    seconds = time.perf_counter() - started
    problems = len(report.rejected) + len(report.enroll_failed)
    if problems or report.enrolled != report.read:
        raise RuntimeError(f"{sequence}: {report.enrolled} of {report.read} enrolled, "
                           f"{problems} problems: {report.enroll_failed[:3]}")  # fmt: skip
    return seconds


async def wait_for(what: str, done, timeout: float) -> float:
    """Wait until done() (checked each second); returns the seconds it took."""
    started = time.perf_counter()
    while not await asyncio.to_thread(done):
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{what}: not done after {timeout:.0f} s")
        await asyncio.sleep(1)
    return time.perf_counter() - started


def whole_minute_after(seconds: float) -> datetime:
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return at.replace(second=0, microsecond=0) + timedelta(minutes=1)


def window_opening_at(moment: datetime) -> tuple[str, str]:
    """(time zone, hours) of a send window that opens at `moment` (UTC) and stays open at
    least 3 hours: a zone west of UTC if `moment` is late in the UTC day."""
    shift = moment.hour - 12 if moment.hour >= 20 else 0
    local = moment - timedelta(hours=shift)
    return (f"Etc/GMT+{shift}" if shift else "UTC"), f"{local:%H:%M}-24:00"


async def enroll_all(bench: Bench) -> datetime:
    """Enroll the held leads, let the worker catch up, then the woken ones with a window
    opening at a minute chosen from the rates so far. Returns that minute."""
    args, requests = bench.args, bench.providers.requests
    held = args.leads - args.wake
    hold_csv, wake_csv = bench.tmp / "hold.csv", bench.tmp / "wake.csv"
    write_leads(hold_csv, "hold", held, "UTC")
    definitions = load_definitions(bench.definitions_dir)
    started = time.perf_counter()
    hold_seconds = await import_leads(bench, hold_csv, "hold", definitions)
    caught_up = await wait_for("welcome emails", lambda: len(requests) >= held, 3600)
    print(f"  {held:,} held leads enrolled in {hold_seconds:.0f} s; every welcome sent "
          f"{caught_up:.0f} s later", flush=True)  # fmt: skip
    slowest = held / (time.perf_counter() - started)  # enrolled and processed, per second
    moment = whole_minute_after(args.wake / slowest * 1.5 + 90)
    zone, hours = window_opening_at(moment)
    wake_yaml = bench.definitions_dir / "sequences" / "wake.yaml"
    wake_yaml.write_text(wake_yaml.read_text().replace(WAKE_WINDOW, f'hours: "{hours}"'))
    write_leads(wake_csv, "wake", args.wake, zone)
    print(f"  the woken leads' window opens at {moment:%H:%M} UTC ({hours} in {zone})",
          flush=True)  # fmt: skip
    wake_seconds = await import_leads(
        bench, wake_csv, "wake", load_definitions(wake_yaml.parent.parent)
    )
    # Held back (or, if the worker could not keep up, already sent: counted as late below).
    waiting = (Message.step_id == "nudge", Message.status.in_(("deferred", "sent")))
    settled = await wait_for("woken leads waiting",
                             lambda: count_rows(bench.database, Message, *waiting) >= args.wake,
                             3600)  # fmt: skip
    seconds = hold_seconds + wake_seconds
    bench.say("enrollment", f"{args.leads:,} leads in {seconds:.0f} s of import: "
              f"{args.leads / seconds:.1f} leads/s ({held:,} held at {held / hold_seconds:.1f}/s, "
              f"{args.wake:,} to wake at {args.wake / wake_seconds:.1f}/s)")  # fmt: skip
    bench.say("every lead waiting", f"{time.perf_counter() - started:.0f} s after the first "
              f"enrollment ({settled:.0f} s after the last)")  # fmt: skip
    return moment


# --- 3. history sizes ------------------------------------------------------------------------


def lead_ids(bench: Bench, prefix: str, limit: int | None = None) -> list[str]:
    with bench.database.sessions() as session:
        query = select(Lead.id).where(Lead.email.like(f"{prefix}%")).order_by(Lead.email)
        return list(session.scalars(query.limit(limit) if limit else query))


async def history_sizes(
    bench: Bench, kind: str, workflow_ids: list[str], since: datetime | None = None
) -> None:
    """Events and bytes per history; with `since`, the events from then on by type (what
    a wake-up costs Temporal)."""
    events, sizes, kinds = [], [], Counter()
    for workflow_id in workflow_ids:
        history = await bench.client.get_workflow_handle(workflow_id).fetch_history()
        events.append(len(history.events))
        sizes.append(sum(event.ByteSize() for event in history.events))
        for event in history.events:
            if since is not None and event.event_time.seconds >= since.timestamp():
                kinds[EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")] += 1
    n = len(workflow_ids) or 1
    bench.say(f"history per lead, {kind}", f"{sum(events) / n:.1f} events, "
              f"{sum(sizes) / n / 1024:.1f} KB (mean of {len(workflow_ids)}; "
              f"{min(events)}-{max(events)} events, max {max(sizes) / 1024:.1f} KB)")  # fmt: skip
    if kinds:
        bench.say(f"history events per lead from the wake-up on, {kind}",
                  ", ".join(f"{name.lower()} {count / n:.1f}" for name, count in
                            kinds.most_common()))  # fmt: skip


# --- 4. the mass wake-up ---------------------------------------------------------------------


@dataclass
class Wake:
    name: str
    moment: datetime  # when the timers were due
    expected: set[str]  # leads (workflows) that must act exactly once
    times: list[float] = field(default_factory=list)  # when each send (activity) happened
    per_key: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds, due second to last

    def count_cpu(self, before: dict[str, float], after: dict[str, float]) -> None:
        self.cpu = {name: after[name] - before[name] for name in before}

    @property
    def rate(self) -> float:
        """Sends per second from the first to the last."""
        span = max(self.times) - min(self.times) if len(self.times) > 1 else 0
        return len(self.times) / span if span > 0 else 0.0

    @property
    def exactly_once(self) -> bool:
        return set(self.per_key) == self.expected and set(self.per_key.values()) == {1}

    def line(self) -> str:
        moment = self.moment.timestamp()
        early = sum(t < moment for t in self.times)
        twice = sum(n > 1 for n in self.per_key.values())
        missing = len(self.expected - set(self.per_key))
        return (f"{len(self.times):,} sends in {max(self.times) - min(self.times):.1f} s: "
                f"{self.rate:.1f}/s first to last; first {min(self.times) - moment:+.2f} s, "
                f"last {max(self.times) - moment:+.1f} s after the due second; "
                f"exactly once: {'yes' if self.exactly_once else 'NO'} "
                f"({missing} missing, {twice} twice, {early} early)\n    CPU ms per send, from "
                f"the due second until all were sent: " + ", ".join(
                    f"{name} {seconds * 1000 / max(len(self.times), 1):.1f}"
                    for name, seconds in self.cpu.items()))  # fmt: skip


def full_sends(bench: Bench, since: int, wake: Wake) -> None:
    """The woken sends among the imitation's requests from index `since` on."""
    requests = bench.providers.requests
    for index in range(since, len(requests)):
        request = requests[index]
        if request.path != "/v3/mail/send" or NUDGE_SUBJECT.encode() not in request.body:
            continue
        payload = request.json()
        tags = payload["personalizations"][0].get("custom_args") or payload.get("custom_args")
        wake.per_key[(tags or {}).get("lead_id")] += 1
        wake.times.append(requests.times[index])


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, moment.timestamp() - time.time()))


async def full_wake(bench: Bench, moment: datetime) -> Wake:
    """Restart the worker (evicting everything), then wait for the window to open and
    every woken lead's send."""
    args = bench.args
    wake = Wake("full", moment, set(lead_ids(bench, "wake")))
    if moment.timestamp() - time.time() > 20:
        await stop_process(bench.worker)
        await bench.start_worker()
        bench.note_rss("after a restart (cache emptied)")
    else:
        print("  no time left to restart the worker before the wake-up", flush=True)
    since = len(bench.providers.requests)
    pids = {"worker": bench.worker.pid, "dev server": bench.server.process.pid,
            "imitation (bench process)": os.getpid()}  # fmt: skip
    await sleep_until(moment)
    before = cpu_of(pids)
    sent = (Message.step_id == "nudge", Message.status == "sent")
    await wait_for("woken sends", lambda: count_rows(bench.database, Message, *sent) >= args.wake,
                   max(600, args.wake / 5))  # fmt: skip
    wake.count_cpu(before, cpu_of(pids))
    await asyncio.sleep(5)  # a duplicate would come now
    full_sends(bench, since, wake)
    bench.note_rss("after the wake-up")
    with bench.database.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(Message)
                              .where(Message.step_id == "nudge"))  # fmt: skip
    bench.say("messages rows of the woken step", f"{rows:,} (expected {args.wake:,})")
    return wake


async def bare_wake(bench: Bench, starts_per_second: float) -> Wake:
    """--wake Sleeper workflows on their own worker process, due at one whole minute; the
    worker restarted once they wait (as the full path's was); their no-ops noted."""
    count, notes = bench.args.wake, bench.tmp / "bare-notes.txt"
    queue = f"bare-{uuid.uuid4().hex[:8]}"
    env = os.environ | {"BENCH_IN_FLIGHT_NOTES": str(notes)}
    command = ["-m", "bench.in_flight", "--bare-worker", bench.server.address, queue,
               str(bench.args.cache)]  # fmt: skip
    worker = await start_process(command, env)
    moment = whole_minute_after(count / starts_per_second * 1.5 + 30)
    ids = [f"{queue}-{n}" for n in range(count)]
    remaining = iter(ids)

    async def starter() -> None:
        for workflow_id in remaining:
            await bench.client.start_workflow(Sleeper.run, moment.timestamp(), id=workflow_id,
                                              task_queue=queue)  # fmt: skip

    await asyncio.gather(*(starter() for _ in range(50)))
    if time.time() > moment.timestamp() - 20:
        print("  the bare workflows were started too late to restart their worker", flush=True)
    else:
        await asyncio.sleep(3)  # every first workflow task done
        await stop_process(worker)
        worker = await start_process(command, env)
    print(f"  bare: {count:,} workflows due at {moment:%H:%M} UTC", flush=True)
    pids = {"worker": worker.pid, "dev server": bench.server.process.pid}
    await sleep_until(moment)
    before = cpu_of(pids)

    def lines() -> int:
        return notes.read_text().count("\n") if notes.exists() else 0

    try:
        await wait_for("bare no-ops", lambda: lines() >= count, max(600, count / 5))
        after = cpu_of(pids)
        await asyncio.sleep(5)  # a duplicate would come now
        bench.say("bare worker RSS after its wake-up", f"{rss_mb(worker.pid):.0f} MB")
    finally:
        await stop_process(worker)
    wake = Wake("bare", moment, set(ids))
    wake.count_cpu(before, after)
    for line in notes.read_text().splitlines():
        workflow_id, at = line.split()
        wake.per_key[workflow_id] += 1
        wake.times.append(float(at))
    return wake


# --- the run -------------------------------------------------------------------------------


async def phases(bench: Bench) -> None:
    args = bench.args
    started = time.perf_counter()
    moment = await enroll_all(bench)
    bench.note_rss(f"with every lead waiting (cache of {args.cache:,} full)")
    held = [lead_workflow_id(i) for i in lead_ids(bench, "hold", SAMPLE)]
    await history_sizes(bench, "held (welcome sent, waiting 30 days)", held)
    full = await full_wake(bench, moment)
    woken = [lead_workflow_id(i) for i in lead_ids(bench, "wake", SAMPLE)]
    await history_sizes(bench, "woken (deferred, then sent)", woken, since=moment)
    rate = args.leads / (time.perf_counter() - started)
    bare = await bare_wake(bench, max(rate, 20))
    print(f"\n=== {args.leads:,} leads in flight, {args.wake:,} woken together; "
          f"{'PostgreSQL' if args.database_url else 'SQLite'}, on-disk dev server (WAL), "
          f"one worker (cache {args.cache:,}) ===")  # fmt: skip
    for name, value in bench.figures.items():
        print(f"{name}: {value}")
    for moment_name, value in bench.rss:
        print(f"worker RSS {moment_name}: {value:.0f} MB")
    print(f"full path wake-up: {full.line()}")
    print(f"bare Temporal wake-up: {bare.line()}")
    ratio = full.rate / bare.rate if bare.rate else float("nan")
    print(f"ratio full/bare, sends/s first to last: {ratio:.2f} (target >= 0.8: "
          f"{'met' if ratio >= 0.8 else 'MISSED'})")  # fmt: skip
    print(f"wall time: {time.perf_counter() - started:.0f} s")


async def main(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="in-flight-")))
        shutil.copytree(FIXTURE_DEFINITIONS, tmp / "definitions")
        shutil.copytree(OWN_DEFINITIONS, tmp / "definitions", dirs_exist_ok=True)
        (tmp / "state").mkdir(mode=0o700)
        url = (stack.enter_context(fresh_postgres(args.database_url)) if args.database_url
               else f"sqlite:///{tmp / 'state' / 'nurture.db'}")  # fmt: skip
        server = stack.enter_context(
            TemporalDevServer(free_port(), None, tmp / "temporal.db", tmp / "temporal.log")
        )
        providers = ProviderServer()
        providers.requests = TimedRequests()
        stack.callback(providers.close)
        bench = Bench(args, tmp, server, providers, url)
        bench.database = open_database(bench.settings())
        stack.callback(bench.database.engine.dispose)
        sync_sales_reps(bench.database, load_definitions(bench.definitions_dir))
        bench.client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        await bench.start_worker()
        try:
            bench.note_rss("before any lead")
            await phases(bench)
        finally:
            await stop_process(bench.worker)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--bare-worker":
        asyncio.run(bare_worker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000, help="leads in flight")
    parser.add_argument("--wake", type=int, default=10_000, help="of them, woken together")
    parser.add_argument("--cache", type=int, default=Settings.model_fields[
        "max_cached_workflows"].default, help="NURTURE_MAX_CACHED_WORKFLOWS")  # fmt: skip
    parser.add_argument("--sends-per-second", type=float, default=10_000,
                        help="NURTURE_EMAIL_SENDS_PER_SECOND")  # fmt: skip
    parser.add_argument("--database-url", help="a PostgreSQL server (a database to connect "
                        "to); default: SQLite")  # fmt: skip
    asyncio.run(main(parser.parse_args()))
