"""Outcomes from the CRM: `POST /webhooks/crm` (signed like Nurture's own outgoing
webhooks, sales/outbound_webhooks.py: HMAC-SHA256 over timestamp + "." + body, any of
NURTURE_CRM_WEBHOOK_SECRETS while one is rotated) and `POST /outcomes` (the API's
bearer token). Both take a batch of opportunity events (sales/outcomes.py) and store
all of it or, on a bad event, nothing. docs/outcomes.md.

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.database import HandlerDatabase
from api.errors import error_responses
from api.provider_webhook_docs import required_header
from api.provider_webhooks import refusals_counted
from infra.settings import Settings
from sales.outbound_webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from sales.outcome_store import OutcomeResult, UnknownReference, store_outcomes
from sales.outcomes import OutcomeEventIn
from services.intake import Intake

MAX_OUTCOMES = 1000  # events in one request


class OutcomesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[OutcomeEventIn] = Field(min_length=1, max_length=MAX_OUTCOMES)


class OutcomesOut(BaseModel):
    accepted: int = Field(description="events stored now")
    duplicates: int = Field(description="events stored before (by `event_id`): not again")
    waiting: int = Field(description="of the accepted, for an email no lead has yet")
    opportunities: list[str] = Field(description="the CRM opportunity IDs the events touched")


# The webhook reads its raw body (the signature is over it): its shape is stated here.
CRM_WEBHOOK_DOC = {
    "parameters": [
        required_header(TIMESTAMP_HEADER, "Unix time, within NURTURE_WEBHOOK_TOLERANCE_SECONDS"),
        required_header(
            SIGNATURE_HEADER,
            'v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>, '
            "comma-separated while a secret is rotated",
        ),  # fmt: skip
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OutcomesIn"}}},
    },  # fmt: skip
}


def outcome_router(
    settings: Settings, db: HandlerDatabase, intake: Intake, authenticated: Callable[..., Any]
) -> APIRouter:
    router = APIRouter(tags=["outcomes"], route_class=refusals_counted(intake.sessions))

    async def store(body: OutcomesIn, source: str) -> OutcomesOut:
        try:
            result: OutcomeResult = await db.run(
                store_outcomes, intake.sessions, body.events, source
            )
        except UnknownReference as exc:  # as POST /events: a lead ID we do not have
            raise HTTPException(404, str(exc)) from None
        # The CRM waits for storage only: its news goes on to the workflows in the
        # background (the relay has what does not get there).
        await intake.deliver_now(result.news, budget=0)
        return OutcomesOut(accepted=result.accepted, duplicates=result.duplicates,
                           waiting=result.waiting, opportunities=result.opportunities)  # fmt: skip

    @router.post("/webhooks/crm", response_model=OutcomesOut, openapi_extra=CRM_WEBHOOK_DOC,
                 responses=error_responses(400, 403, 404, 413, 422, 429, 503))  # fmt: skip
    async def crm_webhook(request: Request) -> OutcomesOut:
        """Opportunity events from the CRM, signed: `X-Nurture-Timestamp` (Unix seconds,
        within NURTURE_WEBHOOK_TOLERANCE_SECONDS) and `X-Nurture-Signature`
        (`v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, several comma-separated
        while a secret is rotated). 403 until NURTURE_CRM_WEBHOOK_SECRETS is set."""
        raw = await request.body()
        secrets = settings.crm_webhook_secret_list()
        if not secrets:
            raise HTTPException(403, "NURTURE_CRM_WEBHOOK_SECRETS is not set: CRM webhooks refused")
        if not verify(secrets, request.headers.get(TIMESTAMP_HEADER), raw,
                      request.headers.get(SIGNATURE_HEADER),
                      tolerance=settings.webhook_tolerance_seconds):  # fmt: skip
            raise HTTPException(403, "the CRM webhook signature does not match, or is stale")
        return await store(_parse(raw), "crm-webhook")

    @router.post("/outcomes", response_model=OutcomesOut, dependencies=[Depends(authenticated)],
                 responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503))  # fmt: skip
    async def post_outcomes(body: Annotated[OutcomesIn, ...]) -> OutcomesOut:
        """Opportunity events from anywhere else (a script, an integration platform)."""
        return await store(body, "api")

    return router


def _parse(raw: bytes) -> OutcomesIn:
    """The verified body; 400 if it is not JSON, 422 naming each bad field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not JSON") from None
    try:
        return OutcomesIn.model_validate(data)
    except ValidationError as exc:  # answered as any request's 422: each field named
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors, body=data) from None
