"""A local HTTP server that answers like SendGrid's and Twilio's APIs and records every request.

The official SDKs are pointed at it, so tests check the exact calls they make.
`fail_next` scripts provider errors (429, 5xx, 4xx) for the next requests; `delay` makes
every answer slow (the request is recorded at once, as the provider has it); `hold()`
keeps answers back after their message ID is issued (the provider has sent the message,
its callbacks may come, the caller has no answer yet) until `release()`.
`rate_limit` answers 429 (as both providers do) to a send beyond that many per second
per API, over any one-second window; `throttled` counts them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from testkit import FIXTURE_DEFINITIONS


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class ProviderServer:
    sendgrid_key: str = "SG.test-key"
    twilio_sid: str = "AC00000000000000000000000000000001"
    twilio_token: str = "twilio-test-token"
    requests: list[Recorded] = field(default_factory=list)
    failures: list[tuple[int, str, dict]] = field(default_factory=list)
    delay: float = 0.0  # seconds before each answer
    issued: list[str] = field(default_factory=list)  # the message IDs it answered with
    answering: threading.Event = field(default_factory=threading.Event)  # clear: held back
    rate_limit: float | None = None  # sends per second per API, then 429
    throttled: int = 0  # 429s answered for the rate limit
    _accepted: dict[str, list[float]] = field(default_factory=dict)  # per API: send times
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        server = self
        self.answering.set()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                recorded = Recorded("POST", self.path, dict(self.headers.items()), body)
                server.requests.append(recorded)
                time.sleep(server.delay)
                if server._over_the_rate(self.path):
                    self._answer(429, {"errors": [{"message": "too many requests"}]},
                                 {"Retry-After": "1"})  # fmt: skip
                elif self.path == "/v3/mail/send":
                    server._sendgrid(self, recorded)
                elif self.path == f"/2010-04-01/Accounts/{server.twilio_sid}/Messages.json":
                    server._twilio(self, recorded)
                else:
                    self._answer(404, {"message": "not found"})

            def _answer(self, status, payload, headers=None):
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller died (a killed worker): the request is recorded anyway

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hold(self) -> None:
        """Keep the next answers back, once their message ID is issued, until `release()`."""
        self.answering.clear()

    def release(self) -> None:
        self.answering.set()

    def _over_the_rate(self, path: str) -> bool:
        """Whether a send to `path` now goes over `rate_limit` in the last second."""
        if self.rate_limit is None:
            return False
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._accepted.get(path, []) if now - t < 1.0]
            if len(recent) >= self.rate_limit:
                self.throttled += 1
                return True
            self._accepted[path] = [*recent, now]
            return False

    def fail_next(self, status: int, message: str = "scripted failure", **extra) -> None:
        """Answer the next request with `status`. `extra`: Twilio's `code` (default 21211),
        or SendGrid's error `field` (default none)."""
        self.failures.append((status, message, extra))

    def _sendgrid(self, handler, recorded: Recorded) -> None:
        if recorded.headers.get("Authorization") != f"Bearer {self.sendgrid_key}":
            return handler._answer(401, {"errors": [{"message": "authorization required"}]})
        if self.failures:
            status, message, extra = self.failures.pop(0)
            error = {"message": message, "field": extra.get("field")}
            return handler._answer(status, {"errors": [error]})
        issued = f"sg-{uuid.uuid4().hex[:16]}"
        self.issued.append(issued)
        self.answering.wait(timeout=30)
        handler._answer(202, None, {"X-Message-Id": issued})

    def _twilio(self, handler, recorded: Recorded) -> None:
        expected = base64.b64encode(f"{self.twilio_sid}:{self.twilio_token}".encode()).decode()
        if recorded.headers.get("Authorization") != f"Basic {expected}":
            return handler._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if self.failures:
            status, message, extra = self.failures.pop(0)
            code = extra.get("code", 21211)
            return handler._answer(status, {"code": code, "message": message, "status": status})
        form = recorded.form()
        sid = f"SM{uuid.uuid4().hex}"
        self.issued.append(sid)
        self.answering.wait(timeout=30)
        handler._answer(201, {
            "sid": sid, "account_sid": self.twilio_sid, "to": form["To"], "body": form["Body"],
            "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
            "status": "queued", "num_segments": "1", "direction": "outbound-api",
            "uri": f"/2010-04-01/Accounts/{self.twilio_sid}/Messages/{sid}.json",
        })  # fmt: skip

    def for_lead(self, lead_id: str, phone: str | None = None) -> dict[str, int]:
        """How many sends reached each API for one lead: SendGrid by our custom_args,
        Twilio by the lead's number."""
        counts = {"email": 0, "sms": 0}
        for request in list(self.requests):
            if request.path == "/v3/mail/send":
                payload = request.json()
                args = payload["personalizations"][0].get("custom_args") or payload.get(
                    "custom_args", {}
                )
                counts["email"] += args.get("lead_id") == lead_id
            elif request.path.endswith("/Messages.json"):
                counts["sms"] += phone is not None and request.form().get("To") == phone
        return counts

    def close(self) -> None:
        self.httpd.shutdown()


def worker_process_env(
    providers: ProviderServer,
    definitions: str,
    database_url: str,
    temporal_address: str,
    task_queue: str,
    state_dir: str,
) -> dict[str, str]:
    """The environment of a `python worker.py` process sending through the imitation."""
    return os.environ.copy() | {
        "NURTURE_STATE_DIR": state_dir,
        "NURTURE_DEFINITIONS": definitions,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "NURTURE_TASK_QUEUE": task_queue,
        "NURTURE_API_TOKEN": "test-token",
        "NURTURE_METRICS_PORT": "0",  # off: workers on one host would share the ports
        "NURTURE_HEALTH_PORT": "0",
        "SENDGRID_API_KEY": providers.sendgrid_key,
        "SENDGRID_HOST": providers.url,
        "TWILIO_ACCOUNT_SID": providers.twilio_sid,
        "TWILIO_AUTH_TOKEN": providers.twilio_token,
        "TWILIO_FROM_NUMBER": "+14155550000",
        "TWILIO_API_BASE": providers.url,
        "PYTHONUNBUFFERED": "1",
    }


def sends_definitions(
    root: Path, sequence: str, name: str, sends: list[tuple[str, str, str]], waits: list[int]
) -> Path:
    """The fixture definitions plus a sequence of `sends` (step, channel, template) with
    `waits[i]` seconds after the i-th. Each SMS says its step: Twilio has no custom args."""
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    steps = []
    for index, (step_id, channel, template) in enumerate(sends):
        steps.append(f"  - {{id: {step_id}, type: {channel}, template: {template}}}")
        if index < len(sends) - 1:
            steps.append(f"  - {{id: pause_{index}, type: wait, duration: {waits[index]}s}}")
        if channel == "sms":
            (root / "templates" / "sms" / f"{template}.txt").write_text(
                f'Hi {{{{ lead.first_name or "there" }}}}, step {step_id}. STOP to opt out'
            )
    (root / "sequences" / f"{sequence}.yaml").write_text(
        f"id: {sequence}\nname: {name}\nsteps:\n" + "\n".join(steps) + "\n"
    )
    return root
