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
from infra.settings import Settings
from models.definition_set import Definitions
from services.intake import Intake
from services.runtime import (
    Database,
    build_activities,
    build_worker,
    connect_temporal,
    load_and_prepare,
)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: whoever runs it owns SIGTERM and Ctrl-C.
    (uvicorn's own handling raises the signal again once it has stopped, so a process
    stopped with SIGTERM died of it instead of exiting 0.)"""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        pass

    async def shutdown(self, sockets=None) -> None:
        # Long-lived answers (the console's live feed) end first: uvicorn would otherwise
        # wait NURTURE_SHUTDOWN_TIMEOUT for them.
        console = getattr(getattr(self.config.app, "state", None), "console", None)
        if console is not None:
            console.closing.set()
        await super().shutdown(sockets)


def api_server(app, settings: Settings, **options) -> uvicorn.Server:
    """uvicorn serving `app` on NURTURE_API_HOST:NURTURE_API_PORT, with no signal handling
    of its own: set `should_exit` to stop it (requests in flight then get up to
    NURTURE_SHUTDOWN_TIMEOUT seconds), and `force_exit` to stop waiting for them.
    log_config=None: its records go through our handlers (and their masking)."""
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_config=None,
        timeout_graceful_shutdown=settings.shutdown_timeout, **options,
    )  # fmt: skip
    return _EmbeddedServer(config)


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
    server = api_server(app, settings, log_level="warning")
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


def console_sign_in(stack: RunningStack) -> str:
    """Where the console is and who to sign in as: on a database with no users, an admin
    is made, its password generated into the state directory (0600, like the API token)."""
    from infra.settings import generated_secret
    from services.accounts import first_admin

    url = f"{stack.api_url}/console/"
    password_file = stack.settings.state_dir / "console-admin-password"
    made = first_admin(stack.database.sessions,
                       generated_secret(password_file, "console-admin-password"))  # fmt: skip
    if made:
        return f"{url}  (sign in as {made}, password in {password_file})"
    return f"{url}  (`nurture users add EMAIL --role admin` makes an account)"
