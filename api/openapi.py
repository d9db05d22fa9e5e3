"""/openapi.json as the API really behaves: what pydantic's JSON Schema cannot carry.

FastAPI writes the document from the models, but some rules live in validators: an
event's type is one of the known ones, a lead names a sequence of these definitions and
an IANA time zone, an event (and an outcome) names its lead somehow, a phone number is
one libphonenumber takes, an outcome's amount has a currency. Written into the document
here, a client generated from it (and schemathesis, tests/test_api_contract.py) sends
what the validators accept. Two rules no JSON Schema keyword states are given as
formats, described: `phone` (a valid number: E.164, or national in the lead's
`country`), a lead's `locale` (a BCP 47 tag Babel knows) and an event's `occurred_at`
between 2000 and 2200. The error answers'
schema is added too (api/errors.py).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from api.errors import with_error_schemas
from models.definition_set import Definitions
from models.definitions import RESPONSE_TYPES
from sales.outcomes import AMOUNT_TEXT
from services.intake import EARLIEST, LATEST

PHONE = "a number libphonenumber takes as valid: E.164 (+14155550123), or national in `country`"
LOCALE = "a BCP 47 language tag Babel knows (de, de-AT, pt-BR), stored normalised (de_at: de-AT)"
LEAD_NAMES = ("lead_id", "email", "phone", "message_id")  # EventIn: one of them, not blank
OUTCOME_LEAD_NAMES = ("lead_id", "handoff_id", "email")  # OutcomeEventIn: one of them


def finished(document: dict[str, Any], definitions: Definitions) -> dict[str, Any]:
    """`document` (FastAPI's) with the validators' rules and the error schema."""
    schemas = with_error_schemas(document)["components"]["schemas"]
    lead, event = schemas["LeadIn"], schemas["EventIn"]
    _text(lead["properties"]["sequence"])["enum"] = sorted(definitions.sequences)
    lead["properties"]["timezone"]["enum"] = sorted(available_timezones())
    event["properties"]["type"]["enum"] = sorted(RESPONSE_TYPES)
    _text(lead["properties"]["locale"]).update(format="bcp47", description=LOCALE)
    for model in (lead, event):
        _text(model["properties"]["phone"]).update(format="phone", description=PHONE)
    _text(event["properties"]["occurred_at"])["description"] = (
        f"from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC when no offset is given)"
    )
    event["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}
        for name in LEAD_NAMES
    ]
    outcome = schemas["OutcomeEventIn"]
    outcome["allOf"] = OUTCOME_RULES
    amount = outcome["properties"]["amount"]
    _text(amount)["pattern"] = AMOUNT_TEXT.pattern
    next(s for s in amount["anyOf"] if s.get("type") == "number")["multipleOf"] = 0.0001
    return document


def _given(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [name], "properties": {name: schema}}


_ABSENT = {"type": "null"}  # or left out: `properties` holds only for those present
# sales/outcomes.py `OutcomeEventIn._consistent`: a lead named somehow, a currency with an
# amount, a reason for a loss only.
OUTCOME_RULES = [
    {"anyOf": [_given(name, {"type": "string"}) for name in OUTCOME_LEAD_NAMES]},
    {"anyOf": [{"properties": {"amount": _ABSENT}}, _given("currency", {"type": "string"})]},
    {"anyOf": [{"properties": {"lost_reason": _ABSENT}}, _given("kind", {"const": "lost"})]},
]


def _text(field: dict[str, Any]) -> dict[str, Any]:
    """The string schema of an optional field (`anyOf: [string, null]`), or the field's."""
    return next((s for s in field.get("anyOf", []) if s.get("type") == "string"), field)
