"""The whole Nurture in one process: worker and API (and the Temporal dev server beside it).

`nurture dev` and `nurture demo` use this; production runs `worker.py` and the
API as separate services.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn

from api.app import create_app
from models.loader import Definitions
from nurture.intake import Intake
from nurture.runtime import (
    Database,
    build_activities,
    build_worker,
    connect_temporal,
    load_and_prepare,
)
from nurture.settings import Settings


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the stack owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        pass


@dataclass
class RunningStack:
    settings: Settings
    definitions: Definitions
    database: Database
    intake: Intake
    api_url: str


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[RunningStack]:
    """Worker and API against `settings.temporal_address`, until the block exits."""
    definitions, database = load_and_prepare(settings)
    client = await connect_temporal(settings)
    worker = build_worker(client, settings, build_activities(settings, database, definitions))
    intake = Intake(definitions, database.sessions, client, settings.task_queue)
    app = create_app(intake, settings)
    server = _EmbeddedServer(
        uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning",
                       log_config=None)  # fmt: skip
    )
    api_task = asyncio.create_task(server.serve())
    try:
        async with worker:
            while not server.started:
                if api_task.done():
                    api_task.result()  # raises why the API could not start
                    raise RuntimeError("the API stopped during start-up")
                await asyncio.sleep(0.05)
            yield RunningStack(
                settings, definitions, database, intake,
                f"http://{settings.api_host}:{settings.api_port}",
            )  # fmt: skip
            server.should_exit = True
            await api_task
    finally:
        server.should_exit = True
        if not api_task.done():
            await asyncio.wait_for(api_task, 10)
        database.engine.dispose()
