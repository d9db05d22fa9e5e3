"""The worker's health endpoint (NURTURE_HEALTH_PORT): a tiny HTTP server on asyncio.

- `GET /health`: 200 `{"status": "ok", "task_queue": ..., "temporal": "connected"}`
  while the worker runs and Temporal answers (checked with GetSystemInfo, 2 s timeout,
  the answer kept 5 s); 503 while starting, once stopping (from the moment SIGTERM
  arrives) or when Temporal is unreachable (`"temporal": "unreachable"`, `"error"`).
- `GET /ready`: the same, and 503 too until the worker polls its task queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import timedelta

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

log = logging.getLogger("infra.health")

CHECK_TIMEOUT = 2.0  # seconds for Temporal to answer
CHECK_EVERY = 5.0  # seconds an answer is kept
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    def __init__(self, host: str, port: int, task_queue: str):
        self.host, self.port, self.task_queue = host, port, task_queue
        self.state = "starting"  # starting -> running -> stopping
        self.client: Client | None = None
        self._server: asyncio.Server | None = None
        self._checked_at = float("-inf")
        self._temporal: tuple[bool, str | None] = (False, "not connected yet")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Listen (raises OSError if the port is taken)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def running(self, client: Client) -> None:
        self.client, self.state = client, "running"

    def stopping(self) -> None:
        """From now on every probe answers 503 (called from the signal handler)."""
        self.state = "stopping"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def status(self, path: str) -> tuple[int, dict]:
        body: dict = {"status": self.state, "task_queue": self.task_queue}
        if self.state == "stopping":
            return 503, body
        if self.client is None:
            body["temporal"] = "not connected"
            return 503, body
        reachable, error = await self._check_temporal()
        body["temporal"] = "connected" if reachable else "unreachable"
        if error:
            body["error"] = error
        if self.state == "stopping":  # stopped while Temporal was being asked
            body["status"] = "stopping"
            return 503, body
        ok = reachable and (self.state == "running" or path == "/health")
        if ok:
            body["status"] = "ok"
        elif reachable:
            body["status"] = self.state
        else:
            body["status"] = "unavailable"
        return (200 if ok else 503), body

    async def _check_temporal(self) -> tuple[bool, str | None]:
        async with self._lock:  # probes at once share one check
            if time.monotonic() - self._checked_at < CHECK_EVERY:
                return self._temporal
            try:
                await self.client.workflow_service.get_system_info(
                    GetSystemInfoRequest(), timeout=timedelta(seconds=CHECK_TIMEOUT)
                )
                self._temporal = (True, None)
            except Exception as exc:
                self._temporal = (False, f"{type(exc).__name__}: {exc}"[:300])
                log.warning("health: Temporal unreachable: %s", self._temporal[1])
            self._checked_at = time.monotonic()
            return self._temporal

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + [""]
            path = path.split("?", 1)[0]
            if path not in ("/health", "/ready"):
                status, body = 404, {"error": "not found: GET /health or /ready"}
            elif method not in ("GET", "HEAD"):
                status, body = 405, {"error": "GET only"}
            else:
                status, body = await self.status(path)
            data = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else data))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):  # fmt: skip
            pass  # a half-open probe or a port scanner: nothing to answer
        except Exception:
            log.exception("health: answering a probe failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
