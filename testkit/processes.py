"""Real OS processes of one deployment: N `nurture api` and M `python worker.py` on one
Temporal server and one database, as production runs them (testkit/stack.py runs the API
and a worker inside the caller's process instead).

    env = worker_process_env(providers, ...) | {"SENDGRID_WEBHOOK_PUBLIC_KEY": key}
    definitions, database = prepare(env)   # migrated and reps synced, before any process
    async with running_processes(env, apis=2, workers=2, logs=tmp_path) as fleet:
        fleet.api_urls                     # each API on a free port of its own
        fleet.kill_worker(0)               # SIGKILL: no graceful shutdown
    # on exit: SIGTERM to every process, SIGKILL to any still running after `grace` s

`prepare` migrates the database once in the caller: processes starting together on an
empty PostgreSQL database would race to migrate it. Every process logs to a file of its
own in `logs` (a pipe nobody reads would fill and block it); `Fleet.tail()` gives the
logs' ends for an assertion message. Workers get a health port each (their `/ready`
says when they poll) and no metrics port (processes on one host would share it).
Used by tests/test_multi_process.py and bench/multi_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack.temporal_server import free_port
from infra.settings import Settings
from models.definition_set import Definitions
from services.runtime import Database, load_and_prepare
from testkit import REPO

NURTURE = str(Path(sys.executable).parent / "nurture")


@dataclass
class Process:
    name: str  # api-0, worker-1, ...
    popen: subprocess.Popen
    log: Path
    probe: str  # the URL that answers 200 once it serves (API) or polls (worker)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Fleet:
    apis: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    @property
    def api_urls(self) -> list[str]:
        return [api.probe.removesuffix("/health") for api in self.apis]

    @property
    def everyone(self) -> list[Process]:
        return self.apis + self.workers

    def kill_worker(self, index: int) -> int:
        """SIGKILL a worker and wait for it; returns its exit status (-9)."""
        worker = self.workers[index]
        worker.popen.kill()
        return worker.popen.wait(timeout=10)

    def tail(self, chars: int = 2000) -> str:
        """The end of every process's log, for an assertion message."""
        return "\n".join(f"--- {p.name} (exit {p.popen.poll()}):\n{p.log.read_text()[-chars:]}"
                         for p in self.everyone)  # fmt: skip

    def assert_running(self, *, except_killed: bool = True) -> None:
        """Every process still runs (a worker killed on purpose aside)."""
        for process in self.everyone:
            killed = process.popen.returncode == -signal.SIGKILL
            assert process.running or (except_killed and killed), self.tail()


def prepare(env: dict[str, str]) -> tuple[Definitions, Database]:
    """The deployment's definitions, and its database migrated and with reps synced."""
    return load_and_prepare(Settings(**env))


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def start_api(env: dict[str, str], index: int, logs: Path) -> Process:
    """`nurture api` on a free port."""
    port = free_port()
    own = env | {"NURTURE_API_HOST": "127.0.0.1", "NURTURE_API_PORT": str(port)}
    log = logs / f"api-{index}.log"
    return Process(f"api-{index}", _spawn([NURTURE, "api"], own, log), log,
                   f"http://127.0.0.1:{port}/health")  # fmt: skip


def start_worker(env: dict[str, str], index: int, logs: Path) -> Process:
    """`python worker.py` with its health endpoint on a free port and no metrics."""
    port = free_port()
    own = env | {"NURTURE_HEALTH_PORT": str(port), "NURTURE_METRICS_PORT": "0"}
    log = logs / f"worker-{index}.log"
    return Process(f"worker-{index}", _spawn([sys.executable, "worker.py"], own, log), log,
                   f"http://127.0.0.1:{port}/ready")  # fmt: skip


async def until_ready(fleet: Fleet, timeout: float) -> None:
    """Wait until every process's probe answers 200 (an overall limit against hanging)."""
    deadline = time.monotonic() + timeout
    waiting = list(fleet.everyone)
    async with httpx.AsyncClient(timeout=2) as http:
        while waiting:
            fleet.assert_running(except_killed=False)
            assert time.monotonic() < deadline, f"not ready in {timeout:g} s\n{fleet.tail()}"
            for process in list(waiting):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(process.probe)).status_code == 200:
                        waiting.remove(process)
            await asyncio.sleep(0.2)


async def stop(processes: list[Process], grace: float) -> None:
    """SIGTERM to each, then SIGKILL to whatever still runs after `grace` seconds."""
    for process in processes:
        if process.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.popen.pid, signal.SIGCONT)  # in case a test froze it
                process.popen.terminate()
    deadline = time.monotonic() + grace
    while any(p.running for p in processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for process in processes:
        if process.running:
            process.popen.kill()
        process.popen.wait(timeout=10)


@contextlib.asynccontextmanager
async def running_processes(
    env: dict[str, str], *, apis: int, workers: int, logs: Path, ready_timeout: float = 120,
    grace: float = 15,
) -> AsyncIterator[Fleet]:  # fmt: skip
    """`apis` API and `workers` worker processes on `env` (call `prepare(env)` first),
    yielded once each serves or polls; stopped, and waited for, when the block exits."""
    logs.mkdir(parents=True, exist_ok=True)
    # Running activities get a few seconds on SIGTERM, not the default 30.
    env = {"NURTURE_SHUTDOWN_TIMEOUT": "5", "PYTHONUNBUFFERED": "1"} | env
    fleet = Fleet()
    try:
        fleet.workers = [start_worker(env, n, logs) for n in range(workers)]
        fleet.apis = [start_api(env, n, logs) for n in range(apis)]
        await until_ready(fleet, ready_timeout)
        yield fleet
    finally:
        await stop(fleet.everyone, grace)
