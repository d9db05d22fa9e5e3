"""A local HTTP server that stands in for reps' webhooks (Slack, CRM) and records every request.

    with WebhookSink() as sink:
        sink.fail_next(500, path="/crm", times=2)   # the next two POSTs to /crm get a 500
        post_json(sink.url_for("/crm"), ...)
        (request,) = sink.wait_for(1, path="/crm")

Every request is recorded as it arrives (before any scripted delay), with its wall-clock
and monotonic arrival times, so a benchmark can measure latency from an event to the
rep's notification. `fail_next` scripts answers (500, 429, 400, ...; status 0 drops the
connection without an answer); `delay` slows answers down. Unscripted requests get
200 "ok", like Slack's incoming webhooks. HTTP/1.1 keep-alive and a thread per
connection keep it fast.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # as sent; `header()` looks names up case-insensitively
    body: bytes
    received_at: float  # time.time()
    monotonic: float  # time.monotonic()

    def header(self, name: str, default: str | None = None) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Scripted:
    status: int  # 0: drop the connection
    body: bytes
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class WebhookSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Condition()
        self._requests: list[Received] = []
        self._failures: dict[str | None, deque[_Scripted]] = defaultdict(deque)
        self._delays: dict[str | None, float] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _handle(self):
                sink._serve(self)

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

        self.httpd = _Server((host, port), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # --- scripting ------------------------------------------------------------------------

    def url_for(self, path: str = "/") -> str:
        return self.url + (path if path.startswith("/") else f"/{path}")

    def fail_next(
        self,
        status: int,
        path: str | None = None,
        *,
        times: int = 1,
        body: str | bytes = "scripted failure",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests to `path` (any path: None) with `status`
        (0: close the connection without answering). `headers`: e.g. Retry-After."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            for _ in range(times):
                self._failures[path].append(_Scripted(status, data, dict(headers or {})))

    def delay(self, seconds: float, path: str | None = None) -> None:
        """Wait `seconds` before answering requests to `path` (all paths: None); 0 stops."""
        with self._lock:
            self._delays[path] = seconds

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._delays.clear()

    # --- inspecting -----------------------------------------------------------------------

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def wait_for(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[Received]:
        """The first `n` requests to `path` (any: None), waiting up to `timeout` seconds for
        them; raises TimeoutError saying how many came."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                matching = [r for r in self._requests if path is None or r.path == path]
                if len(matching) >= n:
                    return matching[:n]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(matching)} of {n} requests to {path or 'any path'} "
                        f"within {timeout:g}s"
                    )
                self._lock.wait(left)

    # --- serving --------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        received = Received(
            method=handler.command,
            path=parts.path,
            query={k: v[0] for k, v in parse_qs(parts.query).items()},
            headers=dict(handler.headers.items()),
            body=body,
            received_at=time.time(),
            monotonic=time.monotonic(),
        )
        with self._lock:
            self._requests.append(received)
            self._lock.notify_all()
            scripted = None
            for key in (parts.path, None):
                if self._failures.get(key):
                    scripted = self._failures[key].popleft()
                    break
            delay = self._delays.get(parts.path, self._delays.get(None, 0.0))
        if delay:
            time.sleep(delay)
        if scripted is not None and scripted.status == 0:
            handler.close_connection = True
            return  # no answer at all: the client sees the connection close
        status, data, headers = (
            (scripted.status, scripted.body, scripted.headers)
            if scripted is not None
            else (200, b"ok", {})
        )
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller gave up (a timeout): the request is recorded anyway

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
