"""Opportunity outcomes from the CRM: the events, and the state they converge to.

Pure. An opportunity's state is a fold of every event received for it, in the order
they happened in the CRM (`occurred_at`, then the order of `KINDS`, then the event ID),
not the order they arrived in: repeated and out-of-order events give the same state.
Won and lost are final: a later `stage_changed`, or the other of won and lost, is kept
but changes nothing, until a `reopened` event (kept like any other) opens it again. A
second `won` (or `lost`) may correct the amount or the close date; the time it closed
stays the first's.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

# In this order when two events of one opportunity carry the same time.
KINDS = ("created", "stage_changed", "reopened", "won", "lost")
Kind = Literal["created", "stage_changed", "reopened", "won", "lost"]
CLOSED = ("won", "lost")
MAX_AMOUNT = Decimal("1e13")  # 10 trillion in any currency: a typo beyond that
AMOUNT_TEXT = re.compile(r"^\d{1,13}(\.\d{1,4})?$")  # anchored: also a JSON Schema pattern


class OutcomeEventIn(BaseModel):
    """One opportunity event, as the CRM webhook, `POST /outcomes` and the CSV import take
    it. It names its lead by `lead_id`, `handoff_id` or `email` (at least one)."""

    model_config = ConfigDict(extra="forbid")

    opportunity_id: str = Field(min_length=1, max_length=200, description="the CRM's ID")
    kind: Kind
    occurred_at: datetime = Field(description="when it happened in the CRM (with a zone)")
    event_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="idempotency key; by default one is derived from the event's content",
    )  # fmt: skip
    lead_id: str | None = Field(default=None, min_length=1, max_length=32)
    handoff_id: str | None = Field(default=None, min_length=1, max_length=64)
    email: EmailStr | None = Field(default=None, max_length=320)
    crm_stage: str | None = Field(default=None, max_length=100, description="the CRM's name")
    amount: Decimal | None = Field(default=None, ge=0, lt=MAX_AMOUNT, decimal_places=4)
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$", description="ISO 4217")
    expected_close_date: date | None = None
    close_date: date | None = None
    lost_reason: str | None = Field(default=None, max_length=500)

    @field_validator("occurred_at", "expected_close_date", "close_date", mode="before")
    @classmethod
    def _written_out(cls, value: object) -> object:
        """A time or date as ISO 8601 text (or a date object): a number is refused, not
        read as seconds since 1970."""
        if value is not None and not isinstance(value, str | date):
            raise ValueError("should be ISO 8601 text, such as 2026-12-01 or 2026-12-01T10:00:00Z")
        return value

    @field_validator("amount", mode="before")
    @classmethod
    def _a_plain_amount(cls, value: object) -> object:
        """A JSON number, or text of digits with up to 4 decimals ("12000.50"): exact."""
        if isinstance(value, bool) or (isinstance(value, str) and not AMOUNT_TEXT.fullmatch(value)):
            raise ValueError('should be a number, or text such as "12000.50"')
        if isinstance(value, float) and math.isfinite(value):
            # A JSON number arrives as a float: 0.1234 is 0.12340000000000001 to it. Read
            # as the 4-decimal amount it stands for (more decimals are still refused).
            rounded = round(value, 4)
            if math.isclose(value, rounded, rel_tol=1e-15, abs_tol=1e-12):
                return Decimal(repr(rounded))
        return value

    @field_validator("occurred_at")
    @classmethod
    def _with_a_zone(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2026-12-01T10:00:00Z)")
        return value

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _consistent(self) -> OutcomeEventIn:
        if not (self.lead_id or self.handoff_id or self.email):
            raise ValueError("name the lead: lead_id, handoff_id or email")
        if self.amount is not None and self.currency is None:
            raise ValueError("currency: required with an amount")
        if self.lost_reason and self.kind != "lost":
            raise ValueError(f"lost_reason: only for a `lost` event, not `{self.kind}`")
        return self

    def key(self) -> str:
        """The event's idempotency key: its own, or a hash of what it says."""
        if self.event_id:
            return self.event_id
        content = self.model_dump_json(exclude={"event_id"})
        return "derived-" + hashlib.sha256(content.encode()).hexdigest()[:40]


@dataclass
class OpportunityState:
    status: Literal["open", "won", "lost"] = "open"
    crm_stage: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    close_date: date | None = None
    lost_reason: str | None = None
    opened_at: datetime | None = None  # the first event's time
    closed_at: datetime | None = None
    updated_at: datetime | None = None  # the last event's time
    reopened: int = 0
    ignored: list[str] = field(default_factory=list)  # event keys that changed nothing


def converge(events: Iterable[OutcomeEventIn]) -> OpportunityState:
    """The opportunity's state after all its events, whatever order they came in."""
    state = OpportunityState()
    for event in sorted(events, key=lambda e: (e.occurred_at, KINDS.index(e.kind), e.key())):
        state.opened_at = state.opened_at or event.occurred_at
        if state.status in CLOSED and event.kind not in ("reopened", state.status):
            state.ignored.append(event.key())
            continue
        _apply(state, event)
        state.updated_at = event.occurred_at
    return state


def _apply(state: OpportunityState, event: OutcomeEventIn) -> None:
    if event.kind == "reopened":
        state.status, state.reopened = "open", state.reopened + 1
        state.closed_at = state.close_date = state.lost_reason = None
    elif event.kind in CLOSED:
        if state.status != event.kind:  # a correction keeps the time it closed
            state.status, state.closed_at = event.kind, event.occurred_at
        state.close_date = event.close_date or event.occurred_at.date()
        state.lost_reason = event.lost_reason if event.kind == "lost" else None
    for name in ("crm_stage", "amount", "currency", "expected_close_date"):
        value = getattr(event, name)
        if value is not None:
            setattr(state, name, value)
