"""Run a Nurture worker against TEMPORAL_ADDRESS: `python worker.py` or `nurture worker`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from nurture.runtime import (
    build_activities,
    build_worker,
    configure_logging,
    connect_temporal,
    load_and_prepare,
)
from nurture.settings import get_settings


async def run_worker() -> None:
    settings = get_settings()
    definitions, database = load_and_prepare(settings)
    client = await connect_temporal(settings)
    worker = build_worker(client, settings, build_activities(settings, database, definitions))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logging.getLogger("nurture").info(
        "worker on %s namespace=%s queue=%s",
        settings.temporal_address, settings.temporal_namespace, settings.task_queue,
    )  # fmt: skip
    async with worker:
        await stop.wait()  # leaving the block shuts down gracefully


def main() -> None:
    configure_logging()
    asyncio.run(run_worker())
    # The worker has shut down gracefully (tasks finished or handed back). Leave without
    # interpreter finalisation: tearing down the SDK's native threads there has been seen
    # to abort the process (SIGABRT) after a clean stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
