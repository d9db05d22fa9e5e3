"""The HTTP API: leads, our own events, provider webhooks and unsubscribe links.

A request is answered 2xx only after what it carries is committed to the database;
signalling the lead's workflow comes after, and a relay re-drives anything that did
not get through. Handlers never touch the database on the event loop (api/database.py),
every JSON error is an `ErrorOut` and every route documents each status it answers
(api/errors.py), and answers carry security headers; repeated authentication failures
from one client are answered 429 (api/security.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

from api.confirm import confirm_router
from api.console.app import add_console, invalid_page
from api.console.web import Console
from api.database import DATABASE_WAIT, HandlerDatabase
from api.errors import error_responses
from api.forms import form_router
from api.handoffs import handoff_router
from api.limits import BodySizeLimit
from api.openapi import finished
from api.outcomes import outcome_router
from api.provider_webhooks import webhook_router
from api.security import AuthFailureLimit, SecurityHeaders
from api.tokens import BearerTokens
from api.tracking import COLLECT_BODY_LIMIT, tracking_router
from api.unsubscribe import unsubscribe_router
from infra.settings import Settings
from models.db import Response
from models.definition_set import Definitions
from services import intake as intake_module
from services import lead_client
from services.intake import EventIn, Intake, UnknownLead, UnknownSequence
from services.runtime import build_links

log = logging.getLogger("nurture.api")
RELAY_INTERVAL_SECONDS = 2.0
ENROLL_TIMEOUT = 5.0  # seconds POST /leads waits for Temporal before answering 503
MAX_BATCH = 1000
RETRY_AFTER = {"Retry-After": "10"}  # seconds, on every 503


class LeadIn(intake_module.LeadIn):
    """A lead in JSON: its number is a JSON number (`true` or `"12"` is refused, not read
    as 1 or 12; an import's CSV cells are text, and intake's LeadIn reads those)."""

    @field_validator("company_size", mode="before")
    @classmethod
    def _json_number(cls, value: Any) -> Any:
        if isinstance(value, bool | str):
            raise ValueError("should be a number, not text or true/false")
        return value


class LeadOut(BaseModel):
    lead_id: str
    created: bool
    segment: str | None
    sequence: str
    enrollment_id: str
    workflow_id: str


class EventsOut(BaseModel):
    accepted: int
    duplicates: int  # event IDs seen before: counted, not stored again
    pending: int  # for an email or phone no lead has yet: kept, matched when it arrives
    delivered: int
    event_ids: list[str]


# One event, or a batch of 1 to MAX_BATCH (the bounds are in the schema, and checked there).
EventBatch = Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]

# Inbound Parse posts whole emails, attachments included.
INBOUND_BODY_LIMIT = 20_000_000
DOC_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})  # FastAPI's, CDN scripts


def create_app(
    intake: Intake,
    settings: Settings,
    relay: bool = True,
    *,
    auth_failure_limit: str | None = None,
    database_wait: float = DATABASE_WAIT,
) -> FastAPI:
    """The API. `auth_failure_limit`: failed authentications a client may have (e.g.
    "10/minute") before it is answered 429 (default: NURTURE_AUTH_FAILURE_LIMIT);
    `database_wait`: seconds a request waits for a
    SQLite lock before its 503."""
    api_token = settings.resolved_api_token()
    links = build_links(settings)
    db = HandlerDatabase(intake.sessions, database_wait)

    app = FastAPI(title="Nurture", version="0.1.0", lifespan=_lifespan(intake, relay))
    # Added innermost first: the headers go on every answer, 429s and 413s included.
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_body_bytes,
        overrides={
            "/webhooks/sendgrid/inbound": max(INBOUND_BODY_LIMIT, settings.max_body_bytes),
            "/collect": min(COLLECT_BODY_LIMIT, settings.max_body_bytes),
        },
    )
    app.add_middleware(AuthFailureLimit, limit=auth_failure_limit or settings.auth_failure_limit)
    app.add_middleware(SecurityHeaders, skip=DOC_PAGES)
    app.include_router(webhook_router(intake, settings, links))
    app.include_router(unsubscribe_router(intake, links, settings.sender_company, db))
    app.include_router(confirm_router(intake, links, settings.sender_company, db))
    tokens = BearerTokens(api_token, db, intake.sessions)
    app.include_router(handoff_router(intake, links, tokens, db))
    console = app.state.console = add_console(app, intake, settings, db)
    _add_error_handlers(app, console)
    _document(app, intake.definitions)

    # 413: the body limit holds for any request, even one that sends /health a body.
    @app.get("/health", responses=error_responses(413))
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # Registered in this order: the OpenAPI document lists the paths in it.
    _add_lead_route(app, intake, db, tokens.requiring("leads:write"))
    _add_events_route(app, intake, db, tokens.requiring("events:write"))
    app.include_router(outcome_router(settings, db, intake, tokens.requiring("outcomes:write")))
    app.include_router(form_router(intake, settings, db))
    app.include_router(tracking_router(intake, settings, links, db))
    return app


# What a stopping API waits for deliveries in flight (the relay signals whatever is left).
SHUTDOWN_DELIVERY_SECONDS = 2.0


def _lifespan(intake: Intake, relay: bool) -> Callable[[FastAPI], AbstractAsyncContextManager]:
    """The app's lifespan: the relay runs while the app does (unless `relay` is False);
    deliveries still in flight get a moment to finish when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_relay_loop(intake)) if relay else None
        yield
        if task:
            task.cancel()
        await intake.finish_deliveries(timeout=SHUTDOWN_DELIVERY_SECONDS)

    return lifespan


def _add_lead_route(
    app: FastAPI, intake: Intake, db: HandlerDatabase, authenticated: Callable[..., Any]
) -> None:
    @app.post("/leads", dependencies=[Depends(authenticated)], status_code=201,
              responses=error_responses(400, 401, 403, 413, 422, 429, 503))  # fmt: skip
    async def create_lead(lead_in: LeadIn) -> LeadOut:
        """Create or update a lead (by email) and enroll it. 503: the lead may be stored but
        not enrolled: send it again (enrolling twice is harmless)."""
        if lead_in.sequence and lead_in.sequence not in intake.definitions.sequences:
            raise _invalid("sequence", f"no sequence {lead_in.sequence!r}")
        lead, created = await db.run(intake.upsert_lead, lead_in)
        try:
            enrollment = await asyncio.wait_for(
                intake.enroll(lead, lead_in.sequence, new_lead=created), timeout=ENROLL_TIMEOUT
            )
        except UnknownSequence as exc:
            raise _invalid("sequence", str(exc)) from None
        except (TimeoutError, RPCError) as exc:
            # The lead is stored; enrolling again is harmless, so the caller can retry.
            raise HTTPException(
                503, f"lead {lead.id} is stored but could not be enrolled now (Temporal: "
                f"{type(exc).__name__}); send it again", headers=RETRY_AFTER,
            ) from None  # fmt: skip
        # Events that arrived before the lead did (the relay goes on if this falls short).
        await intake.deliver_now(await db.run(_undelivered, intake.sessions, lead.id))
        return LeadOut(
            lead_id=lead.id,
            created=created,
            segment=enrollment.segment,
            sequence=enrollment.sequence.id,
            enrollment_id=enrollment.enrollment_id,
            workflow_id=lead_client.lead_workflow_id(lead.id),
        )


def _add_events_route(
    app: FastAPI, intake: Intake, db: HandlerDatabase, authenticated: Callable[..., Any]
) -> None:
    @app.post("/events", dependencies=[Depends(authenticated)], status_code=202,
              responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503))  # fmt: skip
    async def post_events(body: EventIn | EventBatch) -> EventsOut:
        """Our own events (page views, downloads, webinars, trial and product actions),
        one or a batch of up to 1,000. Each may carry an idempotency key (`event_id`).
        404: an event names a `lead_id` we do not have (nothing of the batch is stored)."""
        events = body if isinstance(body, list) else [body]
        try:
            result = await db.run(intake.store_events, events)
        except UnknownLead as exc:
            raise HTTPException(404, str(exc)) from None
        delivered = await intake.deliver_now(result.stored)
        rows = result.stored + result.pending
        return EventsOut(
            accepted=len(rows),
            duplicates=result.duplicates,
            pending=len(result.pending),
            delivered=delivered,
            event_ids=[row.event_id for row in rows],
        )


def _undelivered(sessions: sessionmaker, lead_id: str) -> list[Response]:
    with sessions() as session:
        return list(session.scalars(
            select(Response).where(Response.lead_id == lead_id, Response.delivered_at.is_(None))
        ))  # fmt: skip


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 naming `field`, in the same body as pydantic's (`_problems`)."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def _add_error_handlers(app: FastAPI, console: Console) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Any:
        if request.url.path.startswith("/console/"):
            return invalid_page(console, request, exc)
        return JSONResponse(
            {"detail": "invalid request", "problems": _problems(exc)}, status_code=422
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_away(_request: Request, exc: Exception) -> JSONResponse:
        # Nothing was committed: the caller (a provider's webhook retries) sends it again.
        # Also a SQLite lock held past the wait (api/database.py): "database is locked".
        log.warning("database unreachable: %s", type(exc).__name__)
        return JSONResponse(
            {"detail": "the database is unreachable; nothing was stored, send it again"},
            status_code=503,
            headers=RETRY_AFTER,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 405:  # Starlette's Allow names one route's methods
            allowed = _allowed_methods(app.openapi(), request.url.path)
            exc.headers = {**(exc.headers or {}), **({"Allow": allowed} if allowed else {})}
        return await http_exception_handler(request, exc)


def _allowed_methods(document: dict[str, Any], path: str) -> str:
    """Every method the document gives the path: a path may be served by several routes
    (GET and POST /unsubscribe/{token}), and Starlette's 405 lists the first one's only."""
    segments = path.split("/")
    methods: set[str] = set()
    for template, operations in document["paths"].items():
        parts = template.split("/")  # a {parameter} takes any one non-empty segment
        if len(parts) == len(segments) and all(
            part == segment or (part.startswith("{") and segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever GET is
    return ", ".join(sorted(methods))


def _document(app: FastAPI, definitions: Definitions) -> None:
    """/openapi.json: FastAPI's, with the rules of our validators and the error schema
    (api/openapi.py)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finished(FastAPI.openapi(app), definitions)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problems(exc: RequestValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as {field, message}. A body that may be one object or a list is
    validated both ways: only the errors of the shape that was sent are kept, and the
    union's branch names (`list[EventIn]`, `function-after[...]`) left out of fields."""
    sent_list = isinstance(exc.body, list)
    problems = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if part != "body"]
        branch = next((p for p in loc if isinstance(p, str) and "[" in p), None)
        if branch is not None and branch.startswith("list[") != sent_list:
            continue  # the error of the shape that was not sent
        field = ".".join(str(p) for p in loc if not (isinstance(p, str) and "[" in p))
        if error["type"] == "json_invalid":  # its loc is a character offset, not a field
            field = ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append({"field": _printable(field), "message": _printable(message)})
    return problems or [{"field": "", "message": "the body has the wrong shape"}]


def _printable(text: str) -> str:
    """A problem quoting what was sent, writable as UTF-8: a lone surrogate (which a form
    field or JSON escape can carry) is written as its escape instead of failing the 422."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _relay_loop(intake: Intake) -> None:
    while True:
        await asyncio.sleep(RELAY_INTERVAL_SECONDS)
        try:
            count = await intake.redeliver()
            if count:
                log.info("relay delivered %d stored responses", count)
        except Exception as exc:  # Temporal down: try again next round
            log.warning("relay could not deliver: %s", exc)
