"""What protects the API beyond its credentials: security headers on every answer, a
limit on failed authentications per client.

- Headers: the HTML pages (unsubscribe, handoff answers) carry signed tokens and act on
  a click, so they may not be framed (clickjacking: `frame-ancestors 'none'`), run no
  script, post forms only to us, and send no Referer (the handoff page's URL holds its
  token). JSON answers get the same: harmless there, and a browser then never sniffs one
  into something else. /docs and /redoc (FastAPI's pages, scripts from a CDN) are left out.
  The console's pages (/console) may run the console's own scripts, and are never cached.
- Failed authentications: a client whose requests were refused 401 or 403 `limit` times
  (`limits` notation, e.g. "10/minute", a moving window) gets 429 with Retry-After on
  every request until its oldest failure leaves the window, so a token or a secret
  cannot be guessed at speed. Counted per client address, in this process's memory.
  /health is never refused: a load balancer's probe must not fail because a client
  behind the same address guessed tokens.
"""

from __future__ import annotations

import json
import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

AUTH_FAILURE_LIMIT = "10/minute"
AUTH_FAILURE_STATUSES = frozenset({401, 403})
NEVER_LIMITED = frozenset({"/health"})
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# The console's pages run our own scripts and styles (api/console/static), never another
# site's; a message preview's sandboxed frame (srcdoc) gets the same policy.
CONSOLE_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),  # frame-ancestors, for browsers without CSP level 2
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


CONSOLE_HEADERS = [
    (b"content-security-policy", CONSOLE_SECURITY_POLICY.encode()),
    *SECURITY_HEADERS[1:],
    # A page of the console holds leads' personal data: never kept by a shared cache.
    (b"cache-control", b"no-store"),
]


def _headers_for(path: str) -> list[tuple[bytes, bytes]]:
    console_page = path.startswith("/console") and not path.startswith("/console/static/")
    return CONSOLE_HEADERS if console_page else SECURITY_HEADERS


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every answer but those of `skip` paths."""

    def __init__(self, app: ASGIApp, skip: frozenset[str] = frozenset()):
        self.app, self.skip = app, skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _value in message.get("headers", [])}
                headers = _headers_for(scope["path"])
                added = [(n, v) for n, v in headers if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, with_headers)


class AuthFailureLimit:
    """ASGI middleware: a client refused 401/403 `limit` times gets 429 for a while."""

    def __init__(self, app: ASGIApp, limit: str = AUTH_FAILURE_LIMIT):
        self.app = app
        self.item = parse(limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in NEVER_LIMITED:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        if not self.limiter.test(self.item, client):
            return await self._refuse(send, client)

        async def counting_send(message: Message) -> None:
            start = message["type"] == "http.response.start"
            if start and message["status"] in AUTH_FAILURE_STATUSES:
                self.limiter.hit(self.item, client)
            await send(message)

        await self.app(scope, receive, counting_send)

    async def _refuse(self, send: Send, client: str) -> None:
        reset = self.limiter.get_window_stats(self.item, client).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        detail = f"too many failed authentications from this address: try again in {wait} s"
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(wait).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
