"""`POST /forms/{name}`: a website's form (forms.yaml), posted by a browser or as JSON.

Public: a web page posts it, so it carries no token. Instead each client address may post
to one form NURTURE_FORM_RATE_LIMIT times (default 10 a minute, a moving window, in this
process's memory) before it is answered 429. A post whose honeypot field is filled is a
bot's: it is answered as any other, so the bot learns nothing, and nothing is stored.
A real one creates or updates the lead, records its consent, stores a `form.submitted`
event and enrolls the lead, as `POST /leads` does (services/forms.py); the tracking
snippet's visitor field joins the browser's earlier page views to the lead, unless the
browser asks not to be tracked (DNT, GPC: docs/tracking.md).

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)
"""

import asyncio
import json
import logging
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel
from temporalio.service import RPCError

from api.database import HandlerDatabase
from api.errors import error_responses
from infra.settings import Settings
from models.db import new_id
from models.forms import Form
from models.locales import locale_from_accept_language
from services import forms, tracking
from services.intake import Intake

log = logging.getLogger("nurture.api.forms")
ENROLL_TIMEOUT = 5.0  # seconds, as POST /leads: then 503, the lead stored
RETRY_AFTER = {"Retry-After": "10"}

# A field's value: text from an HTML form; JSON may also send numbers and true/false.
VALUE = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"},
                   {"type": "null"}]}  # fmt: skip
FIELDS = "the form's fields, by their names in forms.yaml; the others are ignored"
FORM_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "additionalProperties": {"type": "string"},
                "description": FIELDS,
            }},
            "application/json": {"schema": {
                "type": "object", "additionalProperties": VALUE, "description": FIELDS,
            }},
        },
    },
}  # fmt: skip
REDIRECT = {
    "description": "accepted, for a browser: on to the form's `redirect` page",
    "headers": {
        "Location": {
            "description": "the form's `redirect`",
            "required": True,
            "schema": {"type": "string"},
        }
    },  # fmt: skip
}

RESPONSES = {303: REDIRECT, **error_responses(400, 404, 413, 422, 429, 503)}


class FormOut(BaseModel):
    lead_id: str


class FormRateLimit:
    """Posts per client address and form, in this process's memory."""

    def __init__(self, limit: str):
        self.item = parse(limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def wait(self, client: str, form_id: str) -> int | None:
        """None if the post may go on (it is counted), else the seconds to wait."""
        if self.limiter.hit(self.item, client, form_id):
            return None
        reset = self.limiter.get_window_stats(self.item, client, form_id).reset_time
        return max(1, math.ceil(reset - time.time()))


def form_router(intake: Intake, settings: Settings, db: HandlerDatabase) -> APIRouter:
    router = APIRouter(tags=["forms"])
    limit = FormRateLimit(settings.form_rate_limit)
    locales = forms.template_locales(intake.definitions.templates_dir, settings.default_locale)
    ids = sorted(form.id for form in intake.definitions.forms.forms)
    name_schema = {"enum": ids} if ids else None

    @router.post("/forms/{name}", status_code=202, openapi_extra=FORM_DOC, responses=RESPONSES)
    async def post_form(
        name: Annotated[str, Path(description="the form's id", json_schema_extra=name_schema)],
        request: Request,
    ) -> FormOut:
        """A form on a website: creates or updates the lead by its email, records the
        consent its boxes give, stores a `form.submitted` event and enrolls the lead. 202,
        or 303 to the form's `redirect` page. 404: no such form in forms.yaml."""
        form = intake.definitions.forms.get(name)
        if form is None:
            raise HTTPException(404, f"no form {name!r}")
        client = request.client.host if request.client else "unknown"
        wait = limit.wait(client, form.id)
        if wait is not None:
            raise HTTPException(429, f"too many posts to this form: try again in {wait} s",
                                headers={"Retry-After": str(wait)})  # fmt: skip
        values = await _values(request)
        if tracking.tracking_refused(request.headers):
            values.pop(tracking.VISITOR_FIELD, None)
        if forms.is_bot(form, values):
            log.info("form %s: honeypot filled by %s, nothing stored", form.id, client)
            return _accepted(form, new_id())
        header = request.headers.get("accept-language")
        submission = forms.read(form, values, locale_from_accept_language(header, locales))
        lead_id = await _submit(intake, db, form, submission)
        return _accepted(form, lead_id)

    return router


async def _submit(
    intake: Intake, db: HandlerDatabase, form: Form, submission: forms.Submission
) -> str:
    """Store the submission, enroll the lead, signal what it has waiting: its lead ID."""
    try:
        lead, created = await db.run(forms.submit, intake, form, submission)
    except forms.FormInvalid as exc:
        raise RequestValidationError(
            [{"loc": ("body", *([name] if name else [])), "msg": message, "type": "value_error"}
             for name, message in exc.problems]
        ) from None  # fmt: skip
    try:
        await asyncio.wait_for(
            intake.enroll(lead, form.sequence, new_lead=created), timeout=ENROLL_TIMEOUT
        )
    except (TimeoutError, RPCError) as exc:
        # Stored; enrolling again is harmless, so the form can be sent again.
        raise HTTPException(
            503, f"the form is stored but the lead could not be enrolled now (Temporal: "
            f"{type(exc).__name__}); send it again", headers=RETRY_AFTER,
        ) from None  # fmt: skip
    await intake.deliver_now(await db.run(forms.undelivered, intake, lead.id))
    return lead.id


def _accepted(form: Form, lead_id: str) -> Any:
    if form.redirect:
        return RedirectResponse(form.redirect, status_code=303)
    return FormOut(lead_id=lead_id)


async def _values(request: Request) -> dict[str, Any]:
    """The posted fields: a form (URL-encoded or multipart; files are ignored) or a JSON
    object of text, numbers and true/false. 400 for anything else."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        posted = await request.form()
        return {key: value for key, value in posted.items() if isinstance(value, str)}
    if kind != "application/json":
        raise HTTPException(400, "send the form URL-encoded, as multipart/form-data or as JSON")
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body is not a JSON object of the form's fields")
    nested = [key for key, value in data.items() if isinstance(value, dict | list)]
    if nested:
        raise RequestValidationError([
            {"loc": ("body", key), "msg": "a field is text, a number or true/false",
             "type": "value_error"} for key in nested
        ])  # fmt: skip
    return data
