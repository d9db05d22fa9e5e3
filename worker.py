"""Run a Nurture worker against TEMPORAL_ADDRESS: `python worker.py` or `nurture worker`.

Observable and safe to stop:
- Prometheus metrics (the Temporal SDK's and ours, `infra/metrics.py`) on
  NURTURE_METRICS_HOST:NURTURE_METRICS_PORT/metrics, a health endpoint on
  NURTURE_METRICS_HOST:NURTURE_HEALTH_PORT (`infra/health.py`); either is off with
  port 0. The host is 127.0.0.1 unless set (0.0.0.0 to be scraped from elsewhere).
- On SIGTERM (or SIGINT): the health endpoint answers 503 at once, no new tasks are
  polled, running activities get NURTURE_SHUTDOWN_TIMEOUT seconds to finish (then they
  are cancelled), and the process exits 0. Each phase is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from infra.health import HealthServer
from infra.logs import setup as setup_logging
from infra.metrics import address, worker_runtime
from infra.settings import Settings, SettingsError, get_settings
from services import backlog, crm_sync, retrain_schedule, stuck
from services.runtime import build_activities, build_worker, connect_temporal, load_and_prepare

log = logging.getLogger("nurture.worker")


class RunningActivities(Interceptor):
    """Counts the activities running in this worker, to say what a shutdown waits for."""

    def __init__(self) -> None:
        self.count = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Counting(next, self)


class _Counting(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, running: RunningActivities) -> None:
        super().__init__(next)
        self.running = running

    async def execute_activity(self, input: ExecuteActivityInput):
        self.running.count += 1
        try:
            return await self.next.execute_activity(input)
        finally:
            self.running.count -= 1


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    health = None
    if settings.health_port:
        health = HealthServer(settings.metrics_host, settings.health_port, settings.task_queue)
        try:
            await health.start()  # answers 503 "starting" until the worker polls
        except OSError as exc:
            raise SettingsError(
                f"NURTURE_HEALTH_PORT: cannot listen on "
                f"{address(settings.metrics_host, settings.health_port)}: {exc.strerror or exc}"
            ) from None
    try:
        await _run(settings, health)
    finally:
        if health is not None:
            await health.close()


async def _run(settings: Settings, health: HealthServer | None) -> None:
    runtime = worker_runtime(settings)
    definitions, database = load_and_prepare(settings)
    client = await connect_temporal(settings, runtime)
    await crm_sync.ensure_schedule(client, settings)  # with a HubSpot token only
    await retrain_schedule.ensure_schedule(client, settings, definitions)  # predictive.retrain
    running = RunningActivities()
    worker = build_worker(
        client, settings, build_activities(settings, database, definitions),
        interceptors=[running],
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s again: already stopping", signum.name)
            return
        if health is not None:
            health.stopping()  # 503 at once: the load balancer stops sending work here
        log.info("%s received: stopping; health now answers 503", signum.name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info(
        "worker on %s namespace=%s queue=%s metrics=%s health=%s",
        settings.temporal_address, settings.temporal_namespace, settings.task_queue,
        f"{address(settings.metrics_host, settings.metrics_port)}/metrics"
        if settings.metrics_port else "off",
        f"{address(settings.metrics_host, health.port)}/health" if health else "off",
    )  # fmt: skip
    overdue = None
    async with worker:  # leaving the block shuts down gracefully
        if health is not None:
            health.running(client)
        meter = runtime.metric_meter if settings.metrics_port else None
        watching = [asyncio.create_task(stuck.watch(database.sessions, client, meter))]
        if meter is not None:
            watching.append(asyncio.create_task(backlog.watch(database.sessions, meter)))
        await stop.wait()
        for task in watching:
            task.cancel()
        log.info(
            "polling stops; running activities (%d now) get up to %gs to finish",
            running.count, settings.shutdown_timeout,
        )  # fmt: skip
        overdue = loop.call_later(settings.shutdown_timeout, _overdue, running)
    if overdue is not None:
        overdue.cancel()
    log.info("worker stopped: every task finished or handed back; exiting")


def _overdue(running: RunningActivities) -> None:
    if running.count:
        log.warning(
            "shutdown timeout passed: cancelling %d running activit%s (Temporal retries them)",
            running.count, "y" if running.count == 1 else "ies",
        )  # fmt: skip


def main() -> None:
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    setup_logging(settings.log_level, settings.log_format)
    code = 0
    try:
        asyncio.run(run_worker(settings))
    except SettingsError as exc:  # a port taken
        print(exc, file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # Ctrl-C while starting
        code = 130
    except Exception as exc:
        from models.schema import SchemaError
        from models.yaml_source import DefinitionError

        if isinstance(exc, SchemaError):  # e.g. behind head: "run `nurture db upgrade`"
            print(exc, file=sys.stderr)
        elif isinstance(exc, DefinitionError):
            for problem in exc.problems:
                print(f"error {problem}", file=sys.stderr)
            print("fix the definitions above (see `nurture validate`)", file=sys.stderr)
        elif isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
            log.error("cannot reach Temporal at %s: %s", settings.temporal_address, exc)
        else:
            log.exception("worker failed")
        code = 1
    # The worker has shut down gracefully (tasks finished or handed back). Leave without
    # interpreter finalisation: tearing down the SDK's native threads there has been seen
    # to abort the process (SIGABRT) after a clean stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
