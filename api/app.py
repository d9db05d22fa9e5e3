"""The HTTP API: leads, our own events, provider webhooks and unsubscribe links.

A request is answered 2xx only after what it carries is committed to the
database; signalling the lead's workflow comes after, and a relay re-drives
anything that did not get through.
"""

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from temporalio.service import RPCError

from api.handoffs import handoff_router
from api.limits import BodySizeLimit
from api.unsubscribe import unsubscribe_router
from api.webhooks import webhook_router
from models.db import Response
from nurture.intake import EventIn, Intake, LeadIn, UnknownLead, UnknownSequence
from nurture.runtime import build_links
from nurture.settings import Settings

log = logging.getLogger("nurture.api")
RELAY_INTERVAL_SECONDS = 2.0
ENROLL_TIMEOUT = 5.0  # seconds POST /leads waits for Temporal before answering 503
MAX_BATCH = 1000


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


# Inbound Parse posts whole emails, attachments included.
INBOUND_BODY_LIMIT = 20_000_000


def create_app(intake: Intake, settings: Settings, relay: bool = True) -> FastAPI:
    bearer = HTTPBearer(auto_error=False)
    api_token = settings.resolved_api_token()
    links = build_links(settings)

    def authenticated(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None or not hmac.compare_digest(
            credentials.credentials.encode(), api_token.encode()
        ):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_relay_loop(intake)) if relay else None
        yield
        if task:
            task.cancel()

    app = FastAPI(title="Nurture", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_body_bytes,
        overrides={"/webhooks/sendgrid/inbound": max(INBOUND_BODY_LIMIT, settings.max_body_bytes)},
    )
    app.include_router(webhook_router(intake, settings, links))
    app.include_router(unsubscribe_router(intake, links, settings.sender_company))
    app.include_router(handoff_router(intake, links, api_token))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": "invalid request", "problems": _problems(exc)}, status_code=422
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_away(_request: Request, exc: Exception) -> JSONResponse:
        # Nothing was committed: the caller (a provider's webhook retries) sends it again.
        log.warning("database unreachable: %s", type(exc).__name__)
        return JSONResponse(
            {"detail": "the database is unreachable; nothing was stored, send it again"},
            status_code=503,
            headers={"Retry-After": "10"},
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/leads", dependencies=[Depends(authenticated)], status_code=201)
    async def create_lead(lead_in: LeadIn) -> LeadOut:
        if lead_in.sequence and lead_in.sequence not in intake.definitions.sequences:
            raise HTTPException(422, f"no sequence {lead_in.sequence!r}")
        lead, created = await run_in_threadpool(intake.upsert_lead, lead_in)
        try:
            enrollment = await asyncio.wait_for(
                intake.enroll(lead, lead_in.sequence, new_lead=created), timeout=ENROLL_TIMEOUT
            )
        except UnknownSequence as exc:
            raise HTTPException(422, str(exc)) from None
        except (TimeoutError, RPCError) as exc:
            # The lead is stored; enrolling again is harmless, so the caller can retry.
            raise HTTPException(
                503, f"lead {lead.id} is stored but could not be enrolled now (Temporal: "
                f"{type(exc).__name__}); send it again"
            ) from None  # fmt: skip
        # Events that arrived before the lead did (the relay goes on if this falls short).
        with intake.sessions() as session:
            waiting = session.scalars(
                select(Response).where(Response.lead_id == lead.id,
                                       Response.delivered_at.is_(None))
            ).all()  # fmt: skip
        await intake.deliver_now(list(waiting))
        return LeadOut(
            lead_id=lead.id,
            created=created,
            segment=enrollment.segment,
            sequence=enrollment.sequence.id,
            enrollment_id=enrollment.enrollment_id,
            workflow_id=f"lead-{lead.id}",
        )

    @app.post("/events", dependencies=[Depends(authenticated)], status_code=202)
    async def post_events(body: EventIn | list[EventIn]) -> EventsOut:
        """Our own events (page views, downloads, webinars, trial and product actions),
        one or a batch of up to 1,000. Each may carry an idempotency key (`event_id`)."""
        events = body if isinstance(body, list) else [body]
        if not events:
            raise HTTPException(422, "no events in the batch")
        if len(events) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} events in a batch")
        try:
            result = await run_in_threadpool(intake.store_events, events)
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

    return app


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
        problems.append({"field": field, "message": error["msg"].removeprefix("Value error, ")})
    return problems or [{"field": "", "message": "the body has the wrong shape"}]


async def _relay_loop(intake: Intake) -> None:
    while True:
        await asyncio.sleep(RELAY_INTERVAL_SECONDS)
        try:
            count = await intake.redeliver()
            if count:
                log.info("relay delivered %d stored responses", count)
        except Exception as exc:  # Temporal down: try again next round
            log.warning("relay could not deliver: %s", exc)
