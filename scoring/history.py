"""The lead history file that `nurture backtest` reads: JSON Lines, one lead per line.

    {"id": "L1", "profile": {"email": "ada@acme.example", "title": "VP Sales", ...},
     "created_at": "2024-03-01T09:00:00+00:00",
     "responses": [{"type": "page.view", "at": "2024-03-02T10:00:00Z",
                    "data": {"url": "https://www.example.com/pricing"}}],
     "outcome": {"customer": true, "at": "2024-05-10T00:00:00Z"}}

`outcome.at` is when the outcome became known (closed-won for a customer; it may be
null for the rest): responses after it are history the model could not have seen.
`opportunities` (optional) are the lead's CRM opportunities, as the synthetic history
writes them: `{"id", "opened_at", "amount", "currency", "expected_close_date",
"status": "open"|"won"|"lost", "closed_at", "lost_reason"}`. The backtest scores against
`outcome` alone; the opportunities are there to be loaded as outcome events (demos,
tests, benchmarks). Times without a zone are UTC. A bad line stops the load with a
`HistoryError` naming the file, line and field, so a broken export is never half-scored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.definitions import RESPONSE_TYPES


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _known_type(value: str) -> str:
    if value not in RESPONSE_TYPES:
        known = ", ".join(sorted(RESPONSE_TYPES))
        raise ValueError(f"unknown response type {value!r}; known: {known}")
    return value


Instant = Annotated[datetime, AfterValidator(_utc)]


class Profile(BaseModel):
    """The lead as segments and fit rules see it; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    title: str | None = None
    company: str | None = None
    company_size: int | None = None
    industry: str | None = None
    country: str | None = None
    timezone: str = "UTC"
    source: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timezone", "attributes", mode="before")
    @classmethod
    def _empty(cls, value: Any, info: ValidationInfo) -> Any:
        # CRM exports write null for what they do not know.
        if value is None or value == "":
            return "UTC" if info.field_name == "timezone" else {}
        return value


class HistoryResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, AfterValidator(_known_type)]
    at: Instant
    data: dict[str, Any] = Field(default_factory=dict)


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: bool
    at: Instant | None = Field(default=None, validate_default=True)

    @field_validator("at")
    @classmethod
    def _dated(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        # Without the date the backtest could not tell what it knew before the sale.
        if value is None and info.data.get("customer"):
            raise ValueError("a customer needs `at`: when it became one (closed-won)")
        return value


class HistoryOpportunity(BaseModel):
    """One of the lead's CRM opportunities, as its state at the end of the history."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=200)]
    opened_at: Instant
    amount: Decimal | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    expected_close_date: date | None = None
    status: Literal["open", "won", "lost"] = "open"
    closed_at: Instant | None = None
    lost_reason: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HistoryOpportunity:
        # What the CRM's events could not say: checked here, named by field.
        if (self.status == "open") != (self.closed_at is None):
            raise ValueError("closed_at: set exactly when the status is won or lost")
        if self.closed_at is not None and self.closed_at < self.opened_at:
            raise ValueError("closed_at: before opened_at")
        if self.amount is not None and self.currency is None:
            raise ValueError("currency: required with an amount")
        if self.lost_reason and self.status != "lost":
            raise ValueError("lost_reason: only for a lost opportunity")
        return self


class HistoryLead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1)]
    profile: Profile
    created_at: Instant
    responses: list[HistoryResponse]
    outcome: Outcome
    opportunities: list[HistoryOpportunity] = Field(default_factory=list)

    @model_validator(mode="after")
    def _in_order(self) -> HistoryLead:
        self.responses.sort(key=lambda response: response.at)  # exports are rarely sorted
        return self


class HistoryError(ValueError):
    """A line of a history file that is not a lead: `file:line: field: problem`."""

    def __init__(self, source: str, line: int, field: str, problem: str):
        super().__init__(f"{source}:{line}: {field}: {problem}")
        self.source, self.line, self.field, self.problem = source, line, field, problem


def iter_history(path: Path | str) -> Iterator[HistoryLead]:
    """The leads of a JSONL file one at a time, for files too big to hold."""
    with open(path, "rb") as raw:
        yield from parse_leads(_decoded(raw, str(path)), str(path))


def _decoded(raw: Iterable[bytes], source: str) -> Iterator[str]:
    # Decoded line by line, so text that is not UTF-8 is reported with its line.
    for number, line in enumerate(raw, start=1):
        try:  # -sig: a byte-order mark (spreadsheets write one) is dropped
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
            raise HistoryError(source, number, "(line)", problem) from None


def load_history(path: Path | str) -> list[HistoryLead]:
    """Every lead of the file, or a `HistoryError` (and nothing) at the first bad line."""
    return list(iter_history(path))


def parse_leads(
    lines: Iterable[str | dict[str, Any]], source: str = "<leads>"
) -> Iterator[HistoryLead]:
    """Validate leads given as JSON lines or as dicts (e.g. from the synthetic generator)."""
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if isinstance(line, str):
            if not line.strip():
                continue
            try:
                lead = HistoryLead.model_validate_json(line)
            except ValidationError as exc:
                raise _error(source, number, exc) from None
        else:
            try:
                lead = HistoryLead.model_validate(line)
            except ValidationError as exc:
                raise _error(source, number, exc) from None
        if lead.id in seen:
            raise HistoryError(source, number, "id", f"{lead.id!r} is also on line {seen[lead.id]}")
        seen[lead.id] = number
        yield lead


def _error(source: str, number: int, exc: ValidationError) -> HistoryError:
    error = exc.errors()[0]  # the first is enough to find the line and fix the export
    if error["type"] == "json_invalid":
        detail = str(error["ctx"]["error"]).replace(" at line 1 column ", " at column ")
        return HistoryError(source, number, "(line)", f"not JSON: {detail}")
    field = ""
    for part in error["loc"]:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    problem = error["msg"].removeprefix("Value error, ")
    # Our own checks (value_error) name the value already.
    quiet = ("missing", "extra_forbidden", "value_error")
    if error["type"] not in quiet and error.get("input") is not None:
        problem += f" (got {json.dumps(error['input'], default=str)[:60]})"
    return HistoryError(source, number, field or "(line)", problem)


def profile_dict(lead: HistoryLead) -> dict[str, Any]:
    """The profile as a plain dict, as `Lead.profile()` gives it to conditions."""
    return lead.profile.model_dump() | {"id": lead.id, "stage": "lead", "score": 0.0}
