"""The API's one error body, and the OpenAPI entries of the statuses each route answers.

Every JSON error is `{"detail": "...", "problems": [{"field": ..., "message": ...}]}`
(`problems` on a 422 only): FastAPI's own errors (404, 405, its body parsing) have the
same `detail`, and our validation handler adds `problems` (api/app.py). A route documents
each status it can answer with `error_responses(...)`, so a client generated from
/openapi.json knows every answer it can get. The HTML pages (unsubscribe, handoff answers)
answer their refusals as pages, documented as `text/html`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    field: str = Field(
        description="where: a dotted path into the body (`0.lead_id` in a batch), "
        "or empty for the body as a whole"
    )
    message: str


class ErrorOut(BaseModel):
    """What every JSON error answer carries."""

    detail: str = Field(description="what went wrong, for a person")
    problems: list[Problem] | None = Field(
        default=None, description="a 422's invalid fields, each with what is wrong with it"
    )


DESCRIPTIONS = {
    400: "the body could not be read (not JSON, not UTF-8, nested too deep, not the "
    "shape the endpoint reads); nothing was stored",
    401: "missing or wrong API token: send `Authorization: Bearer <token>` (NURTURE_API_TOKEN "
    "or a user's API token)",
    403: "the request's signature, secret or signed link is missing or not valid, or its "
    "API token does not have the route's scope; nothing was stored",
    404: "not found",
    405: "the path does not take this method; `Allow` lists the ones it takes",
    409: "refused in the state things are in (the detail says why)",
    413: "the body is over the size limit (NURTURE_MAX_BODY_BYTES); nothing was stored",
    422: "a field is not valid (`problems` names each); nothing was stored",
    429: "too many failed authentications from this address (or too many posts to a form, "
    "or, in the console, a simulation already running): wait `Retry-After` seconds",
    503: "the database or Temporal is unreachable now; nothing was stored: send it again "
    "after `Retry-After` seconds",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before sending the request again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
HTML = {"text/html": {"schema": {"type": "string"}}}


def error_responses(*statuses: int, html: tuple[int, ...] = ()) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status with its description, as an ErrorOut in
    JSON, or as a page for the statuses in `html`. 429 and 503 carry Retry-After."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in (*statuses, *html):
        entry: dict[str, Any] = {"description": DESCRIPTIONS[status]}
        if status in html:
            entry["content"] = HTML
        else:
            # A $ref rather than `model`: on an HTML route FastAPI would file a model under
            # text/html. `with_error_schemas` puts ErrorOut in the document.
            entry["content"] = {"application/json": {"schema": ERROR_REF}}
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        entries[status] = entry
    return entries


def with_error_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with ErrorOut (and Problem) among its component schemas."""
    schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["ErrorOut"] = schema
    return document
