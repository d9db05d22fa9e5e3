"""Commands that run Nurture: `worker`, `api`, `dev` and `demo`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import typer

from cli.common import console, fail_on_definition_errors, setup_logging
from infra.settings import get_settings


def worker(verbose: bool = typer.Option(True, help="log activity")) -> None:
    """Run a worker against TEMPORAL_ADDRESS (same as `python worker.py`).

    Example: TEMPORAL_ADDRESS=temporal.internal:7233 nurture worker
    """
    import os

    import worker as worker_module

    if not verbose:
        os.environ["NURTURE_LOG_LEVEL"] = "WARNING"
    worker_module.main()  # the same process as `python worker.py`: stops, exits alike


def api() -> None:
    """Run the HTTP API alone (uvicorn) against TEMPORAL_ADDRESS.

    On SIGTERM (or Ctrl-C) it stops accepting connections, lets requests in flight finish
    (up to NURTURE_SHUTDOWN_TIMEOUT seconds; a second signal stops waiting) and exits 0,
    like the worker.

    Example: NURTURE_API_PORT=8080 nurture api
    """
    setup_logging(True)
    settings = get_settings()
    started = fail_on_definition_errors(lambda: asyncio.run(_serve_api(settings)))
    if not started:
        # Stopped while connecting to Temporal: the SDK's core runtime keeps that connect
        # attempt on a thread of its own, which would hold the process until it times out.
        logging.shutdown()
        os._exit(0)


async def _serve_api(settings) -> bool:
    """Start the API, then serve until SIGTERM or SIGINT. A signal while starting (the
    database, Temporal) stops the start; either way this returns, and the process exits 0."""
    from api.app import create_app
    from devstack.stack import api_server
    from services.intake import Intake
    from services.runtime import connect_temporal, load_and_prepare

    signals = _ApiSignals(settings.shutdown_timeout)
    try:
        definitions, database = load_and_prepare(settings)
        client = await connect_temporal(settings)
    except asyncio.CancelledError:
        signals.log.info("API stopped before it started")
        return False
    intake = Intake(definitions, database.sessions, client, settings.task_queue)
    signals.server = api_server(create_app(intake, settings), settings)
    try:
        await signals.server.serve()
    finally:
        database.engine.dispose()
    signals.log.info("API stopped; exiting")
    return True


class _ApiSignals:
    """SIGTERM and SIGINT in `nurture api`, handled here rather than by uvicorn (which
    raises the signal again once stopped, so the process died of it: exit -15, not 0).
    While starting: cancel the start. Then: stop uvicorn gracefully (no new connections,
    requests in flight finish). A second signal: stop waiting for them."""

    def __init__(self, shutdown_timeout: float) -> None:
        import logging

        self.log = logging.getLogger("nurture.api")
        self.starting, self.server = asyncio.current_task(), None
        self.shutdown_timeout = shutdown_timeout
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, self.received, signum)

    def received(self, signum: signal.Signals) -> None:
        if self.server is None:
            self.log.info("%s received while starting: stopping", signum.name)
            self.starting.cancel()  # lands at the start's next await (Temporal's connect)
        elif not self.server.should_exit:
            self.log.info("%s received: stopping; requests in flight get up to %gs",
                          signum.name, self.shutdown_timeout)  # fmt: skip
            self.server.should_exit = True
        else:
            self.log.info("%s again: no longer waiting for requests in flight", signum.name)
            self.server.force_exit = True


def dev() -> None:
    """Start the Temporal dev server, a worker and the API together; Ctrl-C stops them all.

    The dev server keeps its state in NURTURE_STATE_DIR/temporal.db, so leads in
    flight resume after a restart.

    Example: nurture dev
    """
    from devstack.stack import console_sign_in, running_stack
    from devstack.temporal_server import TemporalDevServer

    setup_logging(True)
    settings = get_settings()
    settings.ensure_state_dir()  # 0700 before the dev server writes temporal.db in it
    server = TemporalDevServer(
        port=int(settings.temporal_address.rsplit(":", 1)[1]),
        ui_port=settings.temporal_ui_port,
        db_file=settings.state_dir / "temporal.db",
        log_file=settings.state_dir / "temporal.log",
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running_stack(settings) as stack:
            console.print(f"Temporal:  {settings.temporal_address}  (web UI {server.ui_url})")
            console.print(f"API:       {stack.api_url}  (docs {stack.api_url}/docs)")
            console.print(f"API token: in {settings.state_dir / 'api-token'} or NURTURE_API_TOKEN")
            console.print(f"Console:   {console_sign_in(stack)}")
            console.print(f"Outbox:    {settings.outbox_dir}/")
            console.print("Press Ctrl-C to stop.")
            await stop.wait()
            console.print("stopping...")

    with server:
        fail_on_definition_errors(lambda: asyncio.run(run()))


def demo(
    timeout: float = typer.Option(170, help="give up after this many seconds"),
) -> None:
    """Run a self-contained demo: 24 leads nurtured, scored and handed off.

    Starts its own Temporal dev server, worker and API on free ports with a fresh
    database under NURTURE_STATE_DIR/demo; exits 0 only if a handoff happened.

    Example: nurture demo
    """
    from devstack.demo import run_demo

    setup_logging(False)
    ok = fail_on_definition_errors(lambda: run_demo(console, timeout))
    raise typer.Exit(0 if ok else 1)
