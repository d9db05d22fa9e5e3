"""Outgoing webhooks (the rep's Slack-compatible and CRM hooks): signed JSON, one POST per call.

`post_json` makes one attempt and says whether another is worth it: it raises
`WebhookFailed(retryable=True)` on 429, 408, 5xx, timeouts and connection errors, and
`retryable=False` on any other answer that is not 2xx. Retrying, with back-off, is
the calling activity's retry policy; every attempt of one notification carries the
same delivery ID, so a receiver can drop duplicates.

Webhook URLs are secrets (a Slack URL *is* its credential): they never appear in
messages or logs in full, only as `redact_url(url)`: scheme://host/…

Headers
-------
    Content-Type:         application/json (the body: compact JSON, keys sorted, ASCII)
    User-Agent:           Nurture/<version>
    X-Nurture-Delivery:   one ID per notification, the same on every retry (idempotency key)
    X-Nurture-Timestamp:  Unix time, in whole seconds, when this attempt was signed
    X-Nurture-Signature:  v1=<hex>, only when a secret is configured for the webhook

Signature
---------
    signature = "v1=" + hex( HMAC-SHA256( key = secret as UTF-8,
                                          message = timestamp + "." + raw body ) )

The message is the X-Nurture-Timestamp header value (ASCII decimal digits), one dot,
then the request body exactly as received, byte for byte: verify before parsing
the JSON. The hex digest is lower case. While a secret is being rotated the header
holds one signature per secret, comma-separated ("v1=…,v1=…"): accept the request
if any of them matches. Compare in constant time, and reject timestamps more than
five minutes away from your clock (a captured request cannot be replayed later).

Verifying in Python (standard library only):

    import hashlib
    import hmac
    import time

    def verify_nurture(secret: str, headers, body: bytes, tolerance: int = 300) -> bool:
        timestamp = headers.get("X-Nurture-Timestamp", "")
        signatures = headers.get("X-Nurture-Signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
            return False
        message = timestamp.encode() + b"." + body
        expected = "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
        return any(
            hmac.compare_digest(expected.encode(), candidate.strip().encode())
            for candidate in signatures.split(",")
        )

With openssl (the body saved to body.json, TS = the timestamp header, SECRET = the secret):

    (printf %s. "$TS"; cat body.json) | openssl dgst -sha256 -hmac "$SECRET" | sed 's/.* /v1=/'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import httpx

SIGNATURE_HEADER = "X-Nurture-Signature"
TIMESTAMP_HEADER = "X-Nurture-Timestamp"
DELIVERY_HEADER = "X-Nurture-Delivery"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300

try:
    USER_AGENT = f"Nurture/{metadata.version('nurture')}"
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    USER_AGENT = "Nurture/0"

Secret = str | bytes


# --- signing -----------------------------------------------------------------------------


def _key(secret: Secret) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode("utf-8")


def sign(secret: Secret, timestamp: int, body: bytes) -> str:
    """'v1=' + hex(HMAC-SHA256(secret, f"{timestamp}.".encode() + body))."""
    message = f"{int(timestamp)}.".encode() + body
    return f"{SIGNATURE_VERSION}=" + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def verify(
    secret: Secret | Sequence[Secret],
    timestamp: str | int | None,
    body: bytes,
    signature: str | None,
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """Whether `signature` (the header: one or more comma-separated v1= values) signs
    `body` at `timestamp` with `secret` (or any of several secrets), and the timestamp is
    within `tolerance` seconds of `now`. Never raises on malformed input."""
    if not signature or timestamp is None or isinstance(timestamp, bool):
        return False
    stamp = str(timestamp).strip()
    if not stamp.isascii() or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    candidates = [c.strip().encode("utf-8", "replace") for c in signature.split(",")]
    candidates = [c for c in candidates if c.startswith(f"{SIGNATURE_VERSION}=".encode())]
    matched = False
    for key in _secrets(secret):
        expected = sign(key, int(stamp), body).encode()
        for candidate in candidates:  # no early exit: time does not depend on which matched
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def _secrets(secret: Secret | Sequence[Secret]) -> list[Secret]:
    if isinstance(secret, str | bytes):
        return [secret] if secret else []
    return [s for s in secret if s]


# --- posting -----------------------------------------------------------------------------


class WebhookFailed(Exception):
    """One attempt failed. `retryable`: worth another attempt later (429, 408, 5xx,
    timeouts, connection errors). `status`: the HTTP status, None when there was no
    answer. `retry_after`: seconds the receiver asked us to wait (Retry-After), if any.
    The message names the host only, never the full URL."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self):  # picklable despite keyword-only arguments
        return (_rebuild, (str(self), self.retryable, self.status, self.retry_after))


def _rebuild(message, retryable, status, retry_after) -> WebhookFailed:
    return WebhookFailed(message, retryable=retryable, status=status, retry_after=retry_after)


def redact_url(url: str | httpx.URL) -> str:
    """scheme://host[:port]/… : what may be logged of a webhook URL."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<invalid url>"
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{port}" if port else host
    rest = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{netloc}{'/…' if rest else ''}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _scrub(text: str, url: str) -> str:
    """`text` without the URL, its path or its query string."""
    parts = urlsplit(url)
    for secret in (url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.query):
        if secret and secret != "/":
            text = text.replace(secret, "…")
    if parts.path not in ("", "/"):
        text = text.replace(parts.path, "…")
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def _excerpt(text: str, url: str, limit: int = 200) -> str:
    text = _scrub(" ".join(text.split()), url)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes posted (and signed): compact JSON, keys sorted, ASCII only."""
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default
    ).encode("ascii")


# httpx logs every request's full URL at INFO: while post_json runs, that line shows
# only scheme://host/… (our webhook URLs carry secrets in their path).
_posting = threading.local()


class _RedactWebhookUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_posting, "active", False) and isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_RedactWebhookUrls())


@contextmanager
def _redacting() -> Iterator[None]:
    previous = getattr(_posting, "active", False)
    _posting.active = True
    try:
        yield
    finally:
        _posting.active = previous


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    delivery_id: str,
    secret: Secret | Sequence[Secret] | None = None,
    timeout: float = 5.0,
    now: Callable[[], float] = time.time,
    client: httpx.Client | None = None,
) -> int:
    """POST `payload` as JSON to `url`, signed when `secret` is set (several secrets while
    rotating: one signature each). Returns the 2xx status; raises WebhookFailed otherwise.
    Redirects are not followed. Pass a `client` to reuse connections."""
    body = encode(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: delivery_id,
    }
    secrets = _secrets(secret) if secret is not None else []
    if secrets:
        timestamp = int(now())
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = ",".join(sign(s, timestamp, body) for s in secrets)

    where = redact_url(url)
    http = client if client is not None else httpx.Client()
    try:
        with _redacting():
            response = http.post(
                url, content=body, headers=headers, timeout=timeout, follow_redirects=False
            )
    except httpx.TimeoutException:
        raise WebhookFailed(
            f"webhook {where} timed out after {timeout:g}s", retryable=True
        ) from None
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
        detail = _scrub(str(exc), url)
        raise WebhookFailed(
            f"webhook {where} cannot be called: {detail}", retryable=False
        ) from None
    except httpx.TransportError as exc:
        detail = f"{type(exc).__name__}: {_scrub(str(exc), url)}".rstrip(": ")
        raise WebhookFailed(f"webhook {where} unreachable ({detail})", retryable=True) from None
    finally:
        if client is None:
            http.close()

    status = response.status_code
    if 200 <= status < 300:
        return status
    retryable = status in (408, 429) or status >= 500
    excerpt = _excerpt(response.text, url)
    raise WebhookFailed(
        f"webhook {where} answered {status}" + (f": {excerpt}" if excerpt else ""),
        retryable=retryable,
        status=status,
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


__all__ = [
    "DELIVERY_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "USER_AGENT", "WebhookFailed",
    "encode", "post_json", "redact_url", "sign", "verify",
]  # fmt: skip
