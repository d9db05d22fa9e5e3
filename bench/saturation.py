"""Benchmark: saturation of bare Temporal and of the full response path, side by side.

The offered load is ramped in steps (--rates, each offered for --seconds) through the two
paths of bench/response_throughput.py, alternating at each rate on one in-memory dev
server:

- bare Temporal: a signal and a no-op activity per event (its `Baseline` workflow), the
  worker and the signalling client in this process;
- full path: signed SendGrid webhook requests (--batch events each) -> inbox rows ->
  signals -> LeadWorkflow -> `score_lead` activity -> score rows, API and worker in this
  process as `nurture dev` runs them (--split: the worker in its own, `python worker.py`,
  as in production); on SQLite, or on PostgreSQL (--database-url: a database of the
  server to connect to; a fresh one is created there and dropped afterwards). SendGrid
  is played by a process of its own with a lean HTTP client, so that neither its
  signing nor its client takes this process's GIL.

Each full-path step gets fresh leads (one welcome email, then a 7-day wait), so scoring
never reads a longer history than the step's own. Per step: the rate offered and the rate
the sender kept up, completions per second inside the step's window (from --settle
seconds after the first send to the last scheduled send), p50/p99 from send to
completion (after a drain of at most --drain seconds), the machine's busy cores, how much
Python (GIL) work this process did, how much its event loop ran, waited for a core and
lagged; then, per completed event: CPU by component (threads by their names, the worker
process, the dev server, PostgreSQL's backends: the machine's, whoever runs them), the
Temporal history events and the tasks' queue and run times (from the histories), GC time,
and SQL statements and their time by thread. `--tune` tries experiments on this process.

A path's saturation is its highest completed/s over the ramp. Then each path is offered
twice that (--overload-seconds) and its completed/s there is set against its peak.
Targets: full/bare >= 0.9 at saturation; the full path at 2x >= 0.9 x its own peak.

A full-path event counts as complete when its response row points at the score change
that counted it (`scored_in`): a burst of one lead's responses is scored once, with one
row keyed by the last event (bench/response_throughput.py joins on the event ID, so it
misses the others of a burst; at its 20 events/s over 50 leads there are none).

--profile DIR: py-spy (`pip install py-spy`) records this process during the full path's
overload step (--profile-args, e.g. "--gil" or "--native"); the report sums its samples
by where they were taken.

    .venv/bin/python -m bench.saturation --rates 20,40,60,90,120,160 --seconds 12
    .venv/bin/python -m bench.saturation --split \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
import httpx
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from api.app import create_app
from bench.common import LogCounter, count_rows, ms, pct, wait_until
from bench.response_throughput import (
    EVENT,
    FINISHED,
    SEQUENCE,
    Baseline,
    Run,
    WebhookLoad,
    event_times,
    full_path_figures,
    noop,
    offer_load,
)
from devstack.stack import RunningStack, api_server, running_stack
from devstack.temporal_server import free_port
from infra.settings import Settings
from models.db import Message, Response, as_utc
from models.workflow_io import lead_workflow_id
from services.intake import Intake
from services.runtime import Database, connect_temporal, load_and_prepare
from testkit import FIXTURE_DEFINITIONS
from testkit.sendgrid_signer import Signer
from testkit.stack import api_client, temporal_dev_server
from workflows import sandbox_runner

# --- where the CPU goes: this process's threads, the dev server, PostgreSQL ---------------

TICK = os.sysconf("SC_CLK_TCK")
CHILDREN = {"tempor": "dev server (Go)", "python": "load generator (own process)"}
CHILD_LABELS: dict[int, str] = {}  # pid -> component, for children named like others
ROOT = Path(__file__).resolve().parent.parent


def _component(python_name: str | None, os_name: str) -> str:
    """A thread's component, by its Python name (or its OS name: the Temporal core's)."""
    if python_name is None:
        return "Temporal core (Rust)" if os_name.startswith("tokio") else f"thread {os_name}"
    for prefix, component in (
        ("MainThread", "event loop (API, SDK, load)"),
        ("temporal_workflow_", "workflow activations"),
        ("ThreadPoolExecutor", "activity threads"),
        ("AnyIO worker", "API threads (inbox commits)"),
        ("asyncio_", "to_thread (deliver's reads, marks)"),
    ):
        if python_name.startswith(prefix):
            return component
    return "other Python threads"


PYTHON_THREADS = {"event loop (API, SDK, load)", "workflow activations", "activity threads",
                  "API threads (inbox commits)", "to_thread (deliver's reads, marks)",
                  "other Python threads"}  # fmt: skip


def _stat(path: Path) -> tuple[str, list[str]]:
    """(command name, fields after it) of a /proc stat file."""
    raw = path.read_text()
    return raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds so far: by thread (keyed "tid:component"), child process, PostgreSQL;
    and the machine's busy and total jiffies."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    snap: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            comm, f = _stat(task / "stat")
            snap[f"{task.name}:{_component(names.get(int(task.name)), comm)}"] = (
                int(f[11]) + int(f[12])) / TICK  # fmt: skip
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == me:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            comm, f = _stat(proc / "stat")
            if f[1] == me and comm != "py-spy":
                key = CHILD_LABELS.get(int(proc.name)) or CHILDREN.get(comm[:6], f"child {comm}")
            elif comm in ("postgres", "postmaster"):
                key = "PostgreSQL (all backends)"
            else:
                continue
            snap[f"{proc.name}:{key}"] = (int(f[11]) + int(f[12])) / TICK
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    snap["machine:busy"], snap["machine:total"] = sum(cpu) - cpu[3] - cpu[4], sum(cpu)
    # The event loop's thread: time on a core, and time runnable but waiting for one.
    run, wait, _slices = Path(f"/proc/self/task/{me}/schedstat").read_text().split()
    snap["machine:loop run"], snap["machine:loop wait"] = int(run) / 1e9, int(wait) / 1e9
    snap["machine:wall"] = time.monotonic()
    return snap


def cpu_between(before: dict[str, float], after: dict[str, float]) -> tuple[dict, dict]:
    """CPU seconds by component between two snapshots (threads and processes that ended
    in between are lost); and gauges: the machine's busy cores, the share of the time the
    event loop's thread ran, and the share it was runnable but waited for a core."""
    spent: Counter[str] = Counter()
    for key, value in after.items():
        if not key.startswith("machine:"):
            spent[key.split(":", 1)[1]] += value - before.get(key, 0.0)
    delta = {k: after[k] - before[k] for k in after if k.startswith("machine:")}
    wall = delta["machine:wall"] or 1.0
    busy = delta["machine:busy"] / (delta["machine:total"] or 1)
    python = sum(v for k, v in spent.items() if k in PYTHON_THREADS)
    return dict(spent), {
        "cores": (os.cpu_count() or 1) * busy,
        "python": python / wall,  # near 1: the GIL is the limit
        "loop": delta["machine:loop run"] / wall,
        "loop waits": delta["machine:loop wait"] / wall,
        "wall": wall,
    }


# --- where the database and the GC time go; Temporal's history per event ------------------

STATEMENT = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b.*?(?:FROM\s+)?\"?(\w+)",
                       re.IGNORECASE | re.DOTALL)  # fmt: skip


def _statement(sql: str) -> str:
    """`SELECT leads`, `INSERT INTO responses`, ...: the verb and its first table."""
    if sql.lstrip().upper().startswith("SELECT"):
        table = re.search(r"\bFROM\s+\"?(\w+)", sql, re.IGNORECASE)
        return f"SELECT {table.group(1) if table else '?'}"
    found = STATEMENT.match(sql)
    return f"{found.group(1).upper()} {found.group(2)}" if found else sql.split()[0].upper()


class SqlCounter:
    """Statements and commits on an engine, by the component (thread) that ran them, with
    the time from sending each statement to its answer (lock waits included)."""

    def __init__(self, engine) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.seconds: Counter[tuple[str, str]] = Counter()
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._commit)

    @staticmethod
    def _who() -> str:
        return _component(threading.current_thread().name, "")

    def _before(self, conn, _cursor, _sql, _params, _context, _many) -> None:
        conn.info["bench_sent"] = time.perf_counter()

    def _after(self, conn, _cursor, sql, _params, _context, _many) -> None:
        key = (self._who(), _statement(sql))
        spent = time.perf_counter() - conn.info.pop("bench_sent", time.perf_counter())
        with self.lock:
            self.counts[key] += 1
            self.seconds[key] += spent

    def _commit(self, _conn) -> None:
        with self.lock:
            self.counts[(self._who(), "COMMIT")] += 1

    def snapshot(self) -> tuple[Counter, Counter]:
        with self.lock:
            return Counter(self.counts), Counter(self.seconds)


class GcTimer:
    """Time spent in the cyclic garbage collector, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds: Counter[int] = Counter()
        self.runs: Counter[int] = Counter()
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._began
            self.runs[info["generation"]] += 1

    def snapshot(self) -> tuple[Counter, Counter]:
        return Counter(self.seconds), Counter(self.runs)


GC = GcTimer()


async def histories(client: Client, workflow_ids: list[str]) -> dict[str, list]:
    """Each workflow's history events so far."""
    found: dict[str, list] = {}
    for workflow_id in workflow_ids:
        handle = client.get_workflow_handle(workflow_id)
        found[workflow_id] = [item async for item in handle.fetch_history_events()]
    return found


def _at(item) -> float:
    return item.event_time.seconds + item.event_time.nanos / 1e9


def task_latencies(events: list) -> dict[str, list[float]]:
    """How long Temporal's tasks waited and ran, from one workflow's history events:
    a signal until the workflow task that sees it starts, each task's queue wait
    (scheduled -> started: the server and our pollers) and its run (started ->
    completed: our worker, with its completion RPC)."""
    out: dict[str, list[float]] = {name: [] for name in TASK_STAGES}
    at: dict[int, float] = {}
    signals: list[float] = []
    for item in events:
        kind = EventType.Name(item.event_type).removeprefix("EVENT_TYPE_")
        at[item.event_id] = _at(item)
        if kind == "WORKFLOW_EXECUTION_SIGNALED":
            signals.append(_at(item))
        elif kind == "WORKFLOW_TASK_STARTED":
            out[TASK_STAGES[0]] += [_at(item) - t for t in signals]
            signals.clear()
            scheduled = item.workflow_task_started_event_attributes.scheduled_event_id
            out[TASK_STAGES[1]].append(_at(item) - at.get(scheduled, _at(item)))
        elif kind == "WORKFLOW_TASK_COMPLETED":
            started = item.workflow_task_completed_event_attributes.started_event_id
            out[TASK_STAGES[2]].append(_at(item) - at.get(started, _at(item)))
        elif kind == "ACTIVITY_TASK_STARTED":
            scheduled = item.activity_task_started_event_attributes.scheduled_event_id
            out[TASK_STAGES[3]].append(_at(item) - at.get(scheduled, _at(item)))
        elif kind == "ACTIVITY_TASK_COMPLETED":
            started = item.activity_task_completed_event_attributes.started_event_id
            out[TASK_STAGES[4]].append(_at(item) - at.get(started, _at(item)))
    return out


TASK_STAGES = [
    "signal -> workflow task started",
    "workflow task queued",
    "workflow task ran (worker)",
    "activity task queued",
    "activity task ran (worker)",
]


def history_growth(before: dict[str, list], after: dict[str, list]) -> tuple[Counter, dict]:
    """The history events added between two fetches, by type, and their task latencies."""
    counts: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {name: [] for name in TASK_STAGES}
    for workflow_id, events in after.items():
        old = len(before.get(workflow_id, []))
        for item in events[old:]:
            counts[EventType.Name(item.event_type).removeprefix("EVENT_TYPE_")] += 1
        # From the step's first event on (a task scheduled before it is left out).
        for name, values in task_latencies(events[old:]).items():
            latencies[name] += values
    return counts, latencies


# --- one step --------------------------------------------------------------------------------


@dataclass
class Step:
    path: str
    offered: float
    seconds: float
    settle: float
    sent: int = 0
    sent_rate: float = 0.0  # what the sender kept up with
    in_window: int = 0  # completions inside [settle, seconds] after the first send
    run: Run | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)  # see cpu_between
    profile: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)  # the full path's event times
    sql: Counter = field(default_factory=Counter)  # (component, statement) -> count
    sql_seconds: Counter = field(default_factory=Counter)
    gc_seconds: Counter = field(default_factory=Counter)  # generation -> seconds
    gc_runs: Counter = field(default_factory=Counter)
    history: Counter = field(default_factory=Counter)  # history event type -> count
    tasks: dict[str, list[float]] = field(default_factory=dict)  # see task_latencies

    @property
    def rate(self) -> float:
        return self.in_window / (self.seconds - self.settle)

    @property
    def completed(self) -> int:
        return self.run.completed if self.run else 0


def window_figures(step: Step, start: float, sends: list[float], done: list[float]) -> None:
    """The sender's rate and the completions inside the step's window (one clock)."""
    step.sent = len(sends)
    span = max(sends, default=start) - start
    step.sent_rate = len(sends) / span if span > 0 else 0.0
    low, high = start + step.settle, start + step.seconds
    step.in_window = sum(1 for t in done if low <= t <= high)


async def loop_lag(lags: list[float], seconds: float, every: float = 0.01) -> None:
    """How late the event loop wakes a 10 ms sleep, for `seconds`: its queue of work."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (asked := loop.time()) < end:
        await asyncio.sleep(every)
        lags.append(loop.time() - asked - every)


async def measured(
    step: Step, body: Callable[[], Awaitable[None]], profiler, watched: tuple, sql=None
) -> Step:
    """Run the step's body with its CPU, GC time, SQL statements and the `watched`
    (client, workflow IDs) histories' growth measured (and, if asked, a py-spy profile)."""
    history = await histories(*watched)
    spy = await profiler.start(step.seconds) if profiler is not None else None
    before, gc_before, sql_before = cpu_snapshot(), GC.snapshot(), sql and sql.snapshot()
    window: dict[str, float] = {}  # the gauges are taken over the offering only
    asyncio.get_running_loop().call_later(step.seconds, lambda: window.update(cpu_snapshot()))
    lags: list[float] = []
    probe = asyncio.create_task(loop_lag(lags, step.seconds))
    await body()
    after = cpu_snapshot()
    step.cpu, step.gauges = cpu_between(before, after)[0], cpu_between(before, window or after)[1]
    step.gauges["lag p50"], step.gauges["lag p99"] = pct(lags, 0.5), pct(lags, 0.99)
    probe.cancel()
    step.gc_seconds, step.gc_runs = (a - b for a, b in zip(GC.snapshot(), gc_before, strict=True))
    if sql is not None:
        step.sql, step.sql_seconds = (
            a - b for a, b in zip(sql.snapshot(), sql_before, strict=True)
        )
    step.history, step.tasks = history_growth(history, await histories(*watched))
    if spy is not None:
        await spy.wait()
        step.profile = profiler.summary()
    return step


# --- bare Temporal -----------------------------------------------------------------------


@dataclass
class BarePath:
    name = "bare Temporal"
    client: Client
    handles: list[WorkflowHandle]
    drain: float

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, address: str, leads: int, drain: float) -> AsyncIterator[BarePath]:
        """Baseline workflows (one per lead), each warmed by one event, on a worker set up
        as the product's is (bench/response_throughput.py's run_baseline)."""
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        task_queue = f"bench-sat-bare-{uuid.uuid4().hex[:8]}"
        worker = Worker(
            client, task_queue=task_queue, workflows=[Baseline], activities=[noop],
            workflow_runner=sandbox_runner(),
            activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=32),
        )  # fmt: skip
        async with worker:
            handles = [
                await client.start_workflow(
                    Baseline.run, id=f"{task_queue}-{n}", task_queue=task_queue
                )  # fmt: skip
                for n in range(leads)
            ]
            for n, handle in enumerate(handles):
                await handle.signal(Baseline.respond, f"{task_queue}-warm-{n}")
            warm = [f"{task_queue}-warm-{n}" for n in range(leads)]
            await wait_until(lambda: all(e in FINISHED for e in warm), 30)
            yield cls(client, handles, drain)
            for handle in handles:
                await handle.signal(Baseline.close)
            await asyncio.gather(*(handle.result() for handle in handles))

    async def step(self, rate: float, seconds: float, settle: float, profiler=None) -> Step:
        step = Step(self.name, rate, seconds, settle)
        tag = uuid.uuid4().hex[:8]
        run = step.run = Run(self.name, int(rate * seconds))
        sent: dict[str, float] = {}
        signalled: dict[str, float] = {}

        async def send(i: int) -> None:
            event_id = f"{tag}-{i}"
            sent[event_id] = time.perf_counter()
            await self.handles[i % len(self.handles)].signal(Baseline.respond, event_id)
            signalled[event_id] = time.perf_counter()

        async def body() -> None:
            start = time.perf_counter()
            await offer_load(rate, seconds, send, run)
            await wait_until(lambda: all(e in FINISHED for e in sent), self.drain, 0.2)
            done = [FINISHED[e] for e in sent if e in FINISHED]
            window_figures(step, start, list(sent.values()), done)

        await measured(step, body, profiler, (self.client, [h.id for h in self.handles]))
        done = [e for e in sent if e in FINISHED]
        run.latencies = [FINISHED[e] - sent[e] for e in done]
        run.stages = {
            "send -> signal accepted": [signalled[e] - sent[e] for e in signalled],
            "signal accepted -> activity ran": [FINISHED[e] - signalled[e] for e in done],
        }
        return step


# --- the full path -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def product_stack(
    address: str,
    database_url: str | None,
    split: bool = False,
    definitions: Path = FIXTURE_DEFINITIONS,
    **settings,
) -> AsyncIterator[RunningStack]:
    """testkit.stack.local_stack, with the database a choice (it always takes SQLite);
    `split`: the worker in a process of its own (`python worker.py`), as in production."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        values = dict(
            NURTURE_STATE_DIR=state, NURTURE_DEFINITIONS=definitions,
            DATABASE_URL=database_url or f"sqlite:///{state / 'nurture.db'}",
            TEMPORAL_ADDRESS=address, NURTURE_TASK_QUEUE=f"bench-sat-{uuid.uuid4().hex[:8]}",
            NURTURE_API_PORT=free_port(), NURTURE_API_TOKEN="bench", **settings,
        )  # fmt: skip
        if not split:
            async with running_stack(Settings(**values)) as stack:
                yield stack
            return
        async with api_alone(Settings(**values)) as stack, worker_process(values):
            yield stack


@contextlib.asynccontextmanager
async def api_alone(settings: Settings) -> AsyncIterator[RunningStack]:
    """devstack.stack.running_stack without its worker."""
    definitions, database = load_and_prepare(settings)
    intake = Intake(definitions, database.sessions, await connect_temporal(settings),
                    settings.task_queue)  # fmt: skip
    server = api_server(create_app(intake, settings), settings, log_level="warning")
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        url = f"http://{settings.api_host}:{settings.api_port}"
        yield RunningStack(settings, definitions, database, intake, url)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        database.engine.dispose()


@contextlib.asynccontextmanager
async def worker_process(values: dict) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python worker.py` on the same settings (no metrics or health ports)."""
    quiet = {"NURTURE_METRICS_PORT": "0", "NURTURE_HEALTH_PORT": "0"}
    quiet["NURTURE_LOG_LEVEL"] = "WARNING"
    env = {**os.environ, **{k: str(v) for k, v in values.items()}, **quiet}
    process = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "worker.py"), env=env)
    CHILD_LABELS[process.pid] = "worker process"
    try:
        yield process
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 60)


@contextlib.contextmanager
def fresh_postgres(server_url: str):
    """A new, empty database on the server of `server_url`, dropped afterwards."""
    name = f"bench_sat_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def fresh_leads(http: httpx.AsyncClient, database: Database, leads: int, tag: str):
    """bench/response_throughput.py's welcomed_leads, with new addresses each time."""
    emails = [f"sat-{tag}-{n}@example.com" for n in range(leads)]
    lead_ids = []
    for email in emails:
        answer = await http.post("/leads", json={"email": email, "sequence": SEQUENCE},
                                 headers={"Authorization": "Bearer bench"})  # fmt: skip
        answer.raise_for_status()
        lead_ids.append(answer.json()["lead_id"])
    welcomed = (Message.step_id == "welcome", Message.status == "sent",
                Message.lead_id.in_(lead_ids))  # fmt: skip
    await wait_until(lambda: count_rows(database, Message, *welcomed) >= leads, 60, every=0.2)
    await asyncio.sleep(1)  # let the sequences reach their 7-day wait
    return emails, lead_ids


class RawHttp:
    """A lean HTTP/1.1 client for the load generator: a keep-alive connection per request
    in flight, reused when free. (httpx's pool costs more per request the more are in
    flight: at overload the sender fell behind, and in the product's process it took half
    the GIL's samples.)"""

    KEEP = 3.0  # seconds a free connection is kept (uvicorn closes them after 5)

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self, fresh: bool):
        while self.idle and not fresh:
            reader, writer, freed = self.idle.pop()
            if time.monotonic() - freed < self.KEEP:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str], fresh=False,
                   method: str = "POST") -> int:  # fmt: skip
        """The status of a POST (or `method`); a free connection the server closed is
        replaced once."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: "
                   f"{len(body)}\r\n{head}\r\n").encode() + body  # fmt: skip
        reader, writer = await self._connection(fresh)
        try:
            writer.write(request)
            status, length = (await reader.readline()).split(b" ", 2)[1], 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (OSError, IndexError, asyncio.IncompleteReadError):
            writer.close()
            if not fresh:
                return await self.post(path, body, headers, fresh=True, method=method)
            raise
        self.idle.append((reader, writer, time.monotonic()))
        return int(status)


@dataclass
class BatchLoad:
    """WebhookLoad's signed SendGrid opens, `batch` to a request (SendGrid batches its
    events: a request every few seconds or per 768 KB at volume)."""

    http: RawHttp
    signer: Signer
    emails: list[str]
    lead_ids: list[str]
    batch: int = 1
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sent: dict[str, float] = field(default_factory=dict)  # event id -> time.time() at send
    answered: dict[str, float] = field(default_factory=dict)
    statuses: Counter[int | str] = field(default_factory=Counter)

    async def send(self, i: int) -> None:
        events, ids = [], []
        for j in range(i * self.batch, (i + 1) * self.batch):
            n, sg_id = j % len(self.emails), f"bench-{self.run_id}-{j}"
            events.append({"event": EVENT, "email": self.emails[n], "lead_id": self.lead_ids[n],
                           "sg_event_id": sg_id, "timestamp": int(time.time())})  # fmt: skip
            ids.append(f"sendgrid:{sg_id}")
        body = json.dumps(events).encode()
        headers = {**self.signer.headers(body), "Content-Type": "application/json"}
        self.sent |= dict.fromkeys(ids, time.time())
        for _attempt in range(3):  # as SendGrid would, retry a dropped connection
            try:
                status = await self.http.post("/webhooks/sendgrid/events", body, headers)
            except (OSError, IndexError, asyncio.IncompleteReadError) as exc:
                self.statuses[type(exc).__name__] += 1
                continue
            self.answered |= dict.fromkeys(ids, time.time())
            self.statuses[status] += 1
            return


class LoadProcess:
    """The SendGrid side in a process of its own, so neither signing nor the HTTP client
    take the product's GIL. Offers one step's load at a time (BatchLoad.send through
    offer_load) and answers what was sent and answered when."""

    def __init__(self, api_url: str, signer: Signer, batch: int) -> None:
        context = multiprocessing.get_context("spawn")  # never fork the Temporal core
        self.signer, self.batch = signer, batch
        self.conn, child = context.Pipe()
        key = signer.private_pem()
        self.process = context.Process(target=_load_child, args=(child, api_url, key))
        self.process.start()
        # Its own thread to wait in: not one of the product's to_thread workers.
        self.waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench")

    async def ready(self) -> None:
        """Once the process has imported what it needs (not during a step)."""
        await asyncio.get_running_loop().run_in_executor(self.waiter, self.conn.recv)

    async def offer(self, rate: float, seconds: float, emails: list[str], lead_ids: list[str]):
        """(wall-clock start, the load with its send and answer times, the sender's lag)."""
        self.conn.send((rate, seconds, emails, lead_ids, self.batch))
        answer = await asyncio.get_running_loop().run_in_executor(self.waiter, self.conn.recv)
        start, run_id, sent, answered, statuses, lag = answer
        load = WebhookLoad(None, self.signer, emails, lead_ids, run_id, sent, answered,
                           Counter(statuses))  # fmt: skip
        return start, load, lag

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(30)
        self.waiter.shutdown()


def _load_child(conn, api_url: str, key_pem: bytes) -> None:
    asyncio.run(_offer_when_asked(conn, api_url, key_pem))


async def _offer_when_asked(conn, api_url: str, key_pem: bytes) -> None:
    signer = Signer.from_pem(key_pem)
    http = RawHttp(api_url)
    conn.send("ready")
    while (job := await asyncio.to_thread(conn.recv)) is not None:
        rate, seconds, emails, lead_ids, batch = job
        load, run = BatchLoad(http, signer, emails, lead_ids, batch), Run("", 0)
        start = time.time()
        await offer_load(rate / batch, seconds, load.send, run)
        conn.send((start, load.run_id, load.sent, load.answered, dict(load.statuses),
                   run.send_lag))  # fmt: skip


@dataclass
class FullPath:
    name = "full path"
    stack: RunningStack
    http: httpx.AsyncClient  # to enroll the leads
    loader: LoadProcess
    leads: int
    drain: float
    sql: SqlCounter

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, address: str, database_url: str | None, leads: int, drain: float,
                      batch: int = 1, split: bool = False):  # fmt: skip
        signer = Signer()
        async with (
            product_stack(address, database_url, split,
                          SENDGRID_WEBHOOK_PUBLIC_KEY=signer.public_key) as stack,
            api_client(stack, connections=1000) as http,
        ):  # fmt: skip
            loader = LoadProcess(stack.api_url, signer, batch)
            try:
                await loader.ready()
                yield cls(stack, http, loader, leads, drain, SqlCounter(stack.database.engine))
            finally:
                loader.close()

    async def step(self, rate: float, seconds: float, settle: float, profiler=None) -> Step:
        step = Step(self.name, rate, seconds, settle)
        emails, lead_ids = await fresh_leads(
            self.http, self.stack.database, self.leads, uuid.uuid4().hex[:8]
        )
        counter = LogCounter()
        loaded: list = []

        async def body() -> None:
            start, load, lag = await self.loader.offer(rate, seconds, emails, lead_ids)
            loaded.append(load)
            scored = (Response.event_id.like(load.event_ids), Response.scored_in.is_not(None))
            await wait_until(
                lambda: count_rows(self.stack.database, Response, *scored) >= len(load.sent),
                self.drain, 0.5,
            )  # fmt: skip
            step.rows = event_times(self.stack.database, load.event_ids)
            done = [as_utc(r[3]).timestamp() for r in step.rows if r[3] is not None]
            window_figures(step, start, list(load.sent.values()), done)
            step.run = Run(self.name, int(rate * seconds), send_lag=lag)

        watched = (self.stack.intake.client, [lead_workflow_id(lead) for lead in lead_ids])
        with counted(counter):
            await measured(step, body, profiler, watched, self.sql)
        full_path_figures(step.run, step.rows, loaded[0], counter)
        return step


@contextlib.contextmanager
def counted(counter: LogCounter):
    """LogCounter on the `nurture` logger and on the intake's (`services.intake`), which
    says when an inline delivery ran out of time and left events to the relay."""
    intake_log = logging.getLogger("services.intake")
    intake_log.addHandler(counter)
    try:
        with counter.attached():
            yield counter
    finally:
        intake_log.removeHandler(counter)


# --- profiling -------------------------------------------------------------------------------

# Where a sample was taken: the first rule with a frame containing one of its words wins.
PROFILE_RULES = [
    ("load generator (httpx client, signing)", ["(bench/response_throughput.py", "httpx/"]),
    ("API: inbox commit (store_events)", ["store_events ("]),
    ("API: deliver's lead read + mark", ["_leads_of (", "_mark_delivered ("]),
    ("API: signal-with-start", ["deliver (services/intake.py", "lead_client.py"]),
    ("API: signature check", ["_verify_sendgrid ("]),
    ("API: relay", ["redeliver (", "_relay_loop ("]),
    ("API: HTTP server, FastAPI", ["uvicorn/", "starlette/", "fastapi/", "h11/"]),
    ("activity: score_lead", ["score_lead ("]),
    ("activity: send_message", ["send_message ("]),
    ("workflow activations", ["temporalio/worker/_workflow", "workflow_sandbox/"]),
    ("SDK: activity worker", ["temporalio/worker/_activity"]),
    ("SDK: client, converter", ["temporalio/client", "temporalio/converter", "contrib/pydantic"]),
    ("bench: drain polling", ["count_rows (", "wait_until ("]),
    ("event loop (select, callbacks)", ["asyncio/"]),
    ("other", [""]),
]


@dataclass
class Profiler:
    """py-spy recording this process (collapsed stacks), and the samples summed."""

    directory: Path
    args: list[str]

    @property
    def path(self) -> Path:
        return self.directory / "full-overload.txt"

    async def start(self, seconds: float) -> asyncio.subprocess.Process:
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        return await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(os.getpid()), "--format", "raw", "-o", str(self.path),
            "--duration", str(max(1, int(seconds))), "--nolineno", *self.args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    def summary(self) -> list[str]:
        """The samples' shares by PROFILE_RULES (and how much of each is in SQLAlchemy or
        a database driver), then the functions with the most samples of their own."""
        if not self.path.exists():
            return ["(py-spy wrote no profile: is it installed, may it ptrace this process?)"]
        shares: Counter[str] = Counter()
        in_sql: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames, samples = stack.split(";"), int(count)
            label = next(lab for lab, words in PROFILE_RULES
                         if any(w in f for f in frames for w in words))  # fmt: skip
            shares[label] += samples
            if any("sqlalchemy/" in f or "psycopg" in f or "sqlite3" in f for f in frames):
                in_sql[label] += samples
            own[frames[-1]] += samples
        total = sum(shares.values()) or 1
        lines = [f"{n / total:6.1%}  {label} (in SQLAlchemy/driver: {in_sql[label] / total:.1%})"
                 for label, n in shares.most_common()]  # fmt: skip
        lines.append(f"{sum(in_sql.values()) / total:6.1%}  all samples in SQLAlchemy/driver")
        lines += [f"  own {n / total:5.1%}  {frame[:100]}" for frame, n in own.most_common(15)]
        return lines


# --- the ramp, the overload, the report --------------------------------------------------


def cpu_ms_per_event(step: Step) -> dict[str, float]:
    """CPU milliseconds per completed event by component."""
    done = step.completed or 1
    return {k: 1000 * v / done for k, v in step.cpu.items()}


def step_line(step: Step) -> str:
    run = step.run
    per_event = cpu_ms_per_event(step)
    elsewhere = ("dev server", "PostgreSQL", "load generator")  # the worker process counts
    ours = sum(v for k, v in per_event.items() if not k.startswith(elsewhere))
    server = per_event.get("dev server (Go)", 0.0)
    postgres = per_event.get("PostgreSQL (all backends)", 0.0)
    load = per_event.get("load generator (own process)", 0.0)
    return (
        f"{step.path:14}{step.offered:>8.0f}{step.sent_rate:>8.1f}{step.rate:>8.1f}"
        f"{f'{step.completed}/{step.sent}':>11}{ms(pct(run.latencies, 0.5)):>8}"
        f"{ms(pct(run.latencies, 0.99)):>8}{step.gauges['cores']:>7.2f}"
        f"{step.gauges['python']:>5.2f}{step.gauges['loop']:>6.0%}{step.gauges['loop waits']:>6.0%}"
        f"{ms(step.gauges['lag p50']):>5}/{ms(step.gauges['lag p99']):<4}"
        f"{ours:>8.1f}{server:>7.1f}{postgres:>7.1f}{load:>7.1f}"
    )


HEADER = (f"{'path':14}{'offered':>8}{'sent/s':>8}{'done/s':>8}{'done':>11}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'cores':>7}{'py':>5}{'loop':>6}{'waits':>6}{'lag ms':>10}"
          f"{'cpu/ev':>8}{'server':>7}{'pg':>7}{'load':>7}")  # fmt: skip


async def ramp(paths: list, rates: list[float], seconds: float, settle: float) -> dict:
    """Each rate through each path in turn; each step printed as it ends."""
    steps: dict[str, list[Step]] = {path.name: [] for path in paths}
    print(HEADER, flush=True)
    for rate in rates:
        for path in paths:
            if (step := await attempt(path.step(rate, seconds, settle))) is not None:
                steps[path.name].append(step)
                print(step_line(step), flush=True)
    return steps


async def attempt(step: Awaitable[Step]) -> Step | None:
    """A step, or None (said why) if it failed: the other steps' figures still count."""
    try:
        return await step
    except Exception as exc:
        print(f"a step failed: {type(exc).__name__}: {exc}", flush=True)
        return None


async def overload(paths: list, steps: dict, seconds: float, settle: float, profiler) -> dict:
    """Each path offered twice its saturation (its best completed/s over the ramp)."""
    over: dict[str, Step] = {}
    for path in paths:
        peak = max(s.rate for s in steps[path.name])
        spy = profiler if path.name == FullPath.name else None
        if (step := await attempt(path.step(2 * peak, seconds, settle, spy))) is not None:
            over[path.name] = step
            print(step_line(step) + "   <- 2x saturation", flush=True)
    return over


def report_stages(steps: list[Step]) -> None:
    """Each step's stages, p50/p99 in ms, side by side."""
    print(f"\n{steps[0].path}: where the time goes, per step (p50/p99 ms)")
    stages = list(steps[0].run.stages)
    print(f"  {'offered/s':>10}" + "".join(f"{stage[:30]:>32}" for stage in stages))
    for step in steps:
        cells = [f"{ms(pct(step.run.stages[s], 0.5))}/{ms(pct(step.run.stages[s], 0.99))}"
                 for s in stages]  # fmt: skip
        print(f"  {step.offered:>10.0f}" + "".join(f"{c:>32}" for c in cells))
    print(f"  Temporal's tasks, from the histories (p50/p99 ms)\n  {'offered/s':>10}"
          + "".join(f"{stage[:24]:>26}" for stage in TASK_STAGES))  # fmt: skip
    for step in steps:
        cells = [f"{ms(pct(step.tasks[s], 0.5))}/{ms(pct(step.tasks[s], 0.99))}"
                 for s in TASK_STAGES]  # fmt: skip
        print(f"  {step.offered:>10.0f}" + "".join(f"{c:>26}" for c in cells))
    for step in steps:
        if step.run.notes:
            print(f"  at {step.offered:.0f}/s: " + "; ".join(step.run.notes))


def report_cpu(steps: list[Step]) -> None:
    print(f"\n{steps[0].path}: CPU ms per completed event, by component")
    components = sorted(
        {k for s in steps for k in cpu_ms_per_event(s)},
        key=lambda k: -max(cpu_ms_per_event(s).get(k, 0) for s in steps),
    )
    print(f"  {'offered/s':36}" + "".join(f"{s.offered:>8.0f}" for s in steps))
    for component in components:
        values = [cpu_ms_per_event(s).get(component, 0.0) for s in steps]
        if max(values) >= 0.05:
            print(f"  {component[:36]:36}" + "".join(f"{v:>8.2f}" for v in values))


def per_event_rows(steps: list[Step], values: Callable[[Step], Counter], scale: float = 1.0):
    """(label, [value per completed event of each step]) for labels that matter."""
    labels = Counter()
    for step in steps:
        for label, value in values(step).items():
            labels[label] = max(labels[label], scale * value / (step.completed or 1))
    return [(label, [scale * values(s).get(label, 0) / (s.completed or 1) for s in steps])
            for label, peak in labels.most_common() if peak >= 0.05]  # fmt: skip


def _gc_by_generation(step: Step) -> Counter:
    return Counter({f"gen {g}": v for g, v in step.gc_seconds.items()})


def _sql_by_statement(step: Step, counts: Counter | None = None) -> Counter:
    counts = step.sql if counts is None else counts
    return Counter({f"{who[:18]}: {what}": n for (who, what), n in counts.items()})


def _sql_time_by_thread(step: Step) -> Counter:
    spent: Counter[str] = Counter()
    for (who, _what), seconds in step.sql_seconds.items():
        spent[who] += seconds
    return spent


def report_internals(steps: list[Step]) -> None:
    """History events, GC time and (the full path's) SQL, each per completed event."""
    print(f"\n{steps[0].path}: per completed event")
    print(f"  {'offered/s':48}" + "".join(f"{s.offered:>8.0f}" for s in steps))
    tables = [
        ("Temporal history events", lambda s: Counter(total=s.history.total()), 1),
        ("  of them", lambda s: s.history, 1),
        ("GC ms, by generation", _gc_by_generation, 1000),
        ("SQL statements, by thread", _sql_by_statement, 1),
        ("SQL ms (sent to answered: lock waits too), by thread", _sql_time_by_thread, 1000),
        ("  by statement", lambda s: _sql_by_statement(s, s.sql_seconds), 1000),
    ]
    for title, values, scale in tables:
        rows = per_event_rows(steps, values, scale)
        if rows:
            print(f"  {title}")
        for label, cells in rows:
            print(f"    {label[:46]:46}" + "".join(f"{v:>8.2f}" for v in cells))


def report(steps: dict, over: dict, database: str) -> None:
    print(f"\n=== saturation on {database} ===")
    peaks = {name: max(runs, key=lambda s: s.rate) for name, runs in steps.items()}
    for name, best in peaks.items():
        latencies = best.run.latencies
        print(f"{name}: saturates at {best.rate:.1f} completed/s (offered {best.offered:.0f}/s, "
              f"p50 {ms(pct(latencies, 0.5))} ms, p99 {ms(pct(latencies, 0.99))} ms)")  # fmt: skip
    if len(peaks) == 2:
        ratio = peaks[FullPath.name].rate / peaks[BarePath.name].rate
        print(f"ratio full/bare at saturation: {ratio:.2f} (target >= 0.9: "
              f"{'met' if ratio >= 0.9 else 'MISSED'})")  # fmt: skip
    for name, step in over.items():
        kept = step.rate / peaks[name].rate
        target = f" (target >= 0.9: {'met' if kept >= 0.9 else 'MISSED'})"
        target = target if name == FullPath.name else ""
        print(f"{name} at 2x saturation ({step.offered:.0f}/s offered): {step.rate:.1f} "
              f"completed/s, {kept:.2f} of its peak{target}")  # fmt: skip
    for name, runs in steps.items():
        every = runs + ([over[name]] if name in over else [])
        report_stages(every)
        report_cpu(every)
        report_internals(every)
    for step in over.values():
        if step.profile:
            print(f"\n{step.path} at 2x saturation, py-spy samples of this process:")
            print("\n".join(f"  {line}" for line in step.profile))


def tune(spec: str) -> list[str]:
    """Experiments on this process (not the product's settings), to test where the time
    goes: "switch=0.001" (sys.setswitchinterval: the GIL's hand-over interval),
    "gc-freeze" (gc.freeze() once the stack is up), "gc-gen0=50000" (gen-0 threshold),
    "api-threads=8" (AnyIO's thread limiter: the API's inbox commits), "to-thread=16"
    (the loop's default executor: deliver's reads and marks), "no-fastapi-telemetry"
    (FastAPI's per-request OpenTelemetry check). Returns what it did."""
    done = []
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name == "switch":
            sys.setswitchinterval(float(value))
        elif name == "gc-freeze":
            gc.collect()
            gc.freeze()
        elif name == "gc-gen0":
            gc.set_threshold(int(value), *gc.get_threshold()[1:])
        elif name == "api-threads":
            anyio.to_thread.current_default_thread_limiter().total_tokens = int(value)
        elif name == "to-thread":
            pool = concurrent.futures.ThreadPoolExecutor(int(value), thread_name_prefix="asyncio")
            asyncio.get_running_loop().set_default_executor(pool)
        elif name == "no-fastapi-telemetry":
            from fastapi.telemetry._asgi import NativeTelemetry

            NativeTelemetry.enabled = lambda _self: False
        else:
            raise SystemExit(f"--tune: no experiment {name!r}")
        done.append(item)
    return done


@contextlib.contextmanager
def database_for(server_url: str | None):
    """None (SQLite, a file per stack) or a fresh PostgreSQL database's URL."""
    if server_url is None:
        yield None
    else:
        with fresh_postgres(server_url) as url:
            yield url


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    wanted = set(args.paths.split(","))
    profiler = (
        Profiler(Path(args.profile), shlex.split(args.profile_args)) if args.profile else None
    )
    async with temporal_dev_server() as env, contextlib.AsyncExitStack() as stack:
        address = env.client.service_client.config.target_host
        url = stack.enter_context(database_for(args.database_url))
        paths = []
        if "bare" in wanted:
            paths.append(await stack.enter_async_context(
                BarePath.running(address, args.leads, args.drain)))  # fmt: skip
        if "full" in wanted:
            paths.append(await stack.enter_async_context(
                FullPath.running(address, url, args.leads, args.drain, args.batch,
                                 args.split)))  # fmt: skip
        print(
            f"{args.seconds:g} s per step, {args.leads} leads, {args.batch} event(s) per "
            f"SendGrid request, completions counted from "
            f"{args.settle:g} s in; database: {'PostgreSQL' if url else 'SQLite'}\n"
            "cores: the machine's busy cores; py: cores of Python (GIL) work in this process; "
            "loop, waits: the share of the step the event "
            "loop's thread ran, and waited for a core; lag: how late it wakes a 10 ms sleep "
            "(p50/p99);\ncpu/ev, server, pg, load: CPU ms per completed event in the product "
            "(this process, and the worker's with --split), the dev server, PostgreSQL, the "
            "load generator",
            flush=True,
        )
        if args.tune:
            print(f"experiments on this process: {', '.join(tune(args.tune))}", flush=True)
        steps = await ramp(paths, rates, args.seconds, args.settle)
        over = {}
        if not args.no_overload:
            over = await overload(paths, steps, args.overload_seconds or args.seconds,
                                  args.settle, profiler)  # fmt: skip
    report(steps, over, "PostgreSQL" if url else "SQLite")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20,40,60,90,120,160", help="events/s, in steps")
    parser.add_argument("--seconds", type=float, default=12, help="each step's offering")
    parser.add_argument("--settle", type=float, default=2, help="seconds before counting")
    parser.add_argument("--leads", type=int, default=50, help="leads the events spread over")
    parser.add_argument("--drain", type=float, default=90, help="at most, after each step")
    parser.add_argument("--paths", default="bare,full", help="bare, full or both")
    parser.add_argument("--overload-seconds", type=float, help="default: --seconds")
    parser.add_argument("--batch", type=int, default=1, help="SendGrid events per request")
    parser.add_argument("--no-overload", action="store_true", help="the ramp only")
    parser.add_argument("--database-url", help="a PostgreSQL server (a database to connect "
                        "to); default: SQLite")  # fmt: skip
    parser.add_argument("--profile", help="directory for py-spy's profile of the full path "
                        "at 2x saturation")  # fmt: skip
    parser.add_argument("--split", action="store_true", help="the full path's worker in a "
                        "process of its own (`python worker.py`), as in production")  # fmt: skip
    parser.add_argument("--tune", default="", help="experiments on this process: see tune()")
    parser.add_argument("--profile-args", default="", help='more py-spy options, e.g. "--gil"')
    asyncio.run(main(parser.parse_args()))
