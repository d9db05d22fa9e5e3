"""Web tracking's routes (docs/tracking.md): `GET /t.js`, the snippet a website's pages load,
and `POST /collect`, where it sends their views.

Public, like the forms: a web page sends them, with no token. `/collect` takes a view
from the API's own origin (a proxy serving Nurture on the site's domain) or one of
NURTURE_TRACKING_ORIGINS (a page elsewhere: 403 for any other `Origin`), each client
address NURTURE_TRACKING_RATE_LIMIT times (429). A browser asking not to be tracked (DNT,
GPC) or a bot (by User-Agent) is answered 204 as any other, and nothing is stored. The
view is stored (services/tracking.py), then what it makes a lead's is delivered.

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)
"""

import json
import logging
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from api.database import HandlerDatabase
from api.errors import error_responses
from api.forms import FormRateLimit
from channels.links import Links
from infra.settings import Settings
from services import tracking
from services.intake import EXPIRY_INTERVAL, Intake

log = logging.getLogger("nurture.api.tracking")
SNIPPET = (Path(__file__).parent / "static" / "tracking.js").read_bytes()
SNIPPET_MAX_AGE = 3600  # seconds browsers and proxies may keep the snippet
COLLECT_BODY_LIMIT = 16_384  # bytes: a view is a few hundred

SNIPPET_DOC = {
    200: {
        "description": "the snippet (JavaScript, a few KB)",
        "content": {"text/javascript": {"schema": {"type": "string"}}},
    },
    **error_responses(413, 429),
}
COLLECT_DOC = {
    "requestBody": {
        "required": True,
        "description": "a view, as JSON; sent as `text/plain` too (what `sendBeacon` sends "
        "a string as, which needs no CORS preflight)",
        "content": {"application/json": {"schema": tracking.ViewIn.model_json_schema()}},
    },
}
COLLECT_RESPONSES = {
    204: {
        "description": "taken: stored, or left unstored (the browser asks not to be "
        "tracked, or is a bot)",
        "headers": {
            "Access-Control-Allow-Origin": {
                "description": "the page's origin, when it is one of NURTURE_TRACKING_ORIGINS",
                "schema": {"type": "string"},
            }
        },
    },
    **error_responses(400, 403, 413, 422, 429, 503),
}
COLLECT_RESPONSES[429] = {
    **COLLECT_RESPONSES[429],
    "description": "too many page views from this address (NURTURE_TRACKING_RATE_LIMIT), or "
    "too many failed authentications: wait `Retry-After` seconds",
}
COLLECT_403 = "POST /collect from {origin!r}: add it to NURTURE_TRACKING_ORIGINS to take its views"


def tracking_router(
    intake: Intake, settings: Settings, links: Links, db: HandlerDatabase
) -> APIRouter:
    router = APIRouter(tags=["tracking"])
    limit = FormRateLimit(settings.tracking_rate_limit)
    origins = {*settings.tracking_origin_list(), _origin(settings.public_url)}
    expiry = _Expiry(timedelta(days=settings.tracking_retention_days))

    @router.get("/t.js", response_class=Response, responses=SNIPPET_DOC)
    async def snippet() -> Response:
        """The tracking snippet: `<script src="<this URL>" defer></script>` on each page.
        It sends the page's view to `/collect` beside it and adds the visitor to forms
        posting to `/forms/` there; nothing with Do-Not-Track or Global Privacy Control."""
        cache = {"Cache-Control": f"public, max-age={SNIPPET_MAX_AGE}"}
        return Response(SNIPPET, media_type="text/javascript", headers=cache)

    @router.post("/collect", status_code=204, response_class=Response,
                 openapi_extra=COLLECT_DOC, responses=COLLECT_RESPONSES)  # fmt: skip
    async def collect(request: Request) -> Response:
        """A page view from the snippet. A visitor joined to a lead (by a form post or a
        tracked link's `nt`) has it as a `page.view`, scored at once; another's waits for
        a join. 403: from an origin not in NURTURE_TRACKING_ORIGINS."""
        cors = _allowed(request, origins)
        client = request.client.host if request.client else "unknown"
        wait = limit.wait(client, "collect")
        if wait is not None:
            raise HTTPException(429, f"too many page views: try again in {wait} s",
                                headers={"Retry-After": str(wait)})  # fmt: skip
        view = _view(await request.body())
        if tracking.tracking_refused(request.headers):
            return Response(status_code=204, headers=cors)
        if tracking.is_bot(request.headers.get("user-agent")):
            return Response(status_code=204, headers=cors)
        rows = await db.run(tracking.record_view, intake, links, view)
        await intake.deliver_now(rows)
        await expiry.maybe(db, intake)
        return Response(status_code=204, headers=cors)

    return router


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


def _allowed(request: Request, origins: set[str]) -> dict[str, str]:
    """The CORS headers of the answer; 403 for a page of another site. A request without
    `Origin` (not a browser's) or from the API's own host is taken."""
    origin = request.headers.get("origin")
    if origin is None:
        return {}
    origin = origin.strip().lower().rstrip("/")
    if origin in origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if urlsplit(origin).netloc == request.headers.get("host", "").lower():
        return {}  # same origin: the API on the site's own domain
    raise HTTPException(403, COLLECT_403.format(origin=origin))


def _view(body: bytes) -> tracking.ViewIn:
    """The body as a view: 400 if it is not a JSON object, 422 naming each bad field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HTTPException(400, "the body is not JSON: send the view as a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body is not a JSON object (a view)")
    try:
        return tracking.ViewIn.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(_errors(exc)) from None


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]


class _Expiry:
    """Views never joined are deleted after the retention, checked every EXPIRY_INTERVAL
    by the next view (as the relay expires the events waiting for their lead)."""

    def __init__(self, retention: timedelta):
        self.retention = retention
        self.last = -math.inf

    async def maybe(self, db: HandlerDatabase, intake: Intake) -> None:
        if time.monotonic() - self.last < EXPIRY_INTERVAL:
            return
        self.last = time.monotonic()
        try:
            await db.run(tracking.expire_views, intake, self.retention)
        except Exception as exc:  # the view is stored: expire next time
            log.warning("could not expire old page views: %s", type(exc).__name__)
