"""The HTTP API: lead and event intake (later: provider webhooks, sales answers).

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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from nurture.intake import EventIn, Intake, LeadIn, UnknownLead, UnknownSequence

log = logging.getLogger("nurture.api")
RELAY_INTERVAL_SECONDS = 2.0


class LeadOut(BaseModel):
    lead_id: str
    created: bool
    segment: str | None
    sequence: str
    enrollment_id: str
    workflow_id: str


class EventsOut(BaseModel):
    accepted: int
    duplicates: int
    delivered: int
    event_ids: list[str]


def create_app(intake: Intake, api_token: str, relay: bool = True) -> FastAPI:
    bearer = HTTPBearer(auto_error=False)

    def authenticated(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials, api_token):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_relay_loop(intake)) if relay else None
        yield
        if task:
            task.cancel()

    app = FastAPI(title="Nurture", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p != "body"),
                "message": e["msg"].removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/leads", dependencies=[Depends(authenticated)], status_code=201)
    async def create_lead(lead_in: LeadIn) -> LeadOut:
        if lead_in.sequence and lead_in.sequence not in intake.definitions.sequences:
            raise HTTPException(422, f"no sequence {lead_in.sequence!r}")
        lead, created = intake.upsert_lead(lead_in)
        try:
            enrollment = await intake.enroll(lead, lead_in.sequence)
        except UnknownSequence as exc:
            raise HTTPException(422, str(exc)) from None
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
        events = body if isinstance(body, list) else [body]
        if not events:
            raise HTTPException(422, "no events in the batch")
        for index, event in enumerate(events):
            if not (event.lead_id or event.email):
                raise HTTPException(422, f"event {index}: give lead_id or email")
        try:
            rows, duplicates = intake.store_events(events)
        except UnknownLead as exc:
            raise HTTPException(404, str(exc)) from None
        delivered = 0
        try:
            delivered = await intake.deliver(rows)
        except Exception as exc:  # stored already; the relay will deliver it later
            log.warning("events stored but not yet delivered: %s", exc)
        return EventsOut(
            accepted=len(rows),
            duplicates=duplicates,
            delivered=delivered,
            event_ids=[row.event_id for row in rows],
        )

    return app


async def _relay_loop(intake: Intake) -> None:
    while True:
        await asyncio.sleep(RELAY_INTERVAL_SECONDS)
        try:
            count = await intake.redeliver()
            if count:
                log.info("relay delivered %d stored responses", count)
        except Exception as exc:  # Temporal down: try again next round
            log.warning("relay could not deliver: %s", exc)
