"""Intake: upsert a lead, choose its segment, enroll it, and deliver responses to its workflow.

Used by the API, the CLI and the demo. Responses are committed to the database
first (the inbox) and only then signalled, so a Temporal outage loses nothing:
`redeliver` signals whatever is still undelivered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from channels.template_sets import TemplateVersions
from models.consent import ConsentEffect, classify_response, set_consent
from models.contact import known_timezone, normalise_phone
from models.db import Lead, Message, Response, as_utc, new_id, utcnow
from models.definitions import RESPONSE_TYPES
from models.loader import Definitions
from models.workflow_io import EnrollRequest, LeadInput, ResponseEvent, lead_workflow_id
from workflows.lead import LeadWorkflow

log = logging.getLogger("nurture.intake")


def storable(value: Any, where: str = "", depth: int = 0) -> None:
    """Refuse what a database column or a JSON document cannot hold, naming where it is:
    NUL characters and unpaired surrogates in text, NaN and infinities, deep nesting."""
    if depth > MAX_NESTING:
        raise ValueError(f"{where or 'value'}: nested deeper than {MAX_NESTING} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where or 'text'}: contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where or 'text'}: contains an unpaired surrogate") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'number'}: {value} is not a JSON number")
    elif isinstance(value, dict):
        for key, item in value.items():
            # The path may name a key that is itself unprintable: escape it.
            name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")[:50]
            path = f"{where}.{name}" if where else name
            storable(key, f"{path} (the key)", depth + 1)
            storable(item, path, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            storable(item, f"{where}.{index}" if where else str(index), depth + 1)


MAX_NESTING = 20
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


class _Incoming(BaseModel):
    """What arrives from outside: unknown fields refused, everything storable."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            storable(data)
        return data


class LeadIn(_Incoming):
    """A lead as it arrives from a form, an import or the API (sizes: the columns')."""

    email: EmailStr = Field(max_length=320)
    # Before `phone`: a number without a +country code is read in the lead's country.
    country: str | None = Field(default=None, min_length=2, max_length=2)
    phone: str | None = Field(default=None, max_length=40)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    title: str | None = Field(default=None, max_length=200)
    company: str | None = Field(default=None, max_length=200)
    company_size: int | None = Field(default=None, ge=0, le=2**31 - 1)
    industry: str | None = Field(default=None, max_length=100)
    timezone: str = Field(default="UTC", max_length=64)
    source: str | None = Field(default=None, max_length=100)
    attributes: dict[str, Any] = Field(default_factory=dict)
    sequence: str | None = Field(
        default=None, max_length=100, description="enroll in this sequence instead of the segment's"
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return known_timezone(value)

    @field_validator("country")
    @classmethod
    def _upper_country(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("phone")
    @classmethod
    def _phone_in_e164(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else normalise_phone(value, info.data.get("country"))


class EventIn(_Incoming):
    """A response from a lead: `POST /events`, or a provider webhook translated.

    The lead is named by `lead_id`, or by `email` or `phone`; an email or phone no lead
    has yet is kept and matched when that lead arrives."""

    type: str = Field(max_length=50)
    lead_id: str | None = Field(default=None, max_length=32)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=32)
    event_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="idempotency key: an event with a key already seen is counted, not stored",
    )  # fmt: skip
    occurred_at: datetime | None = None
    message_id: str | None = Field(default=None, max_length=32, description="our message ID")
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return None if value is None else normalise_phone(value)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        if not EARLIEST <= value <= LATEST:
            raise ValueError(f"{value.isoformat()} is not a plausible time for an event")
        return value

    @model_validator(mode="after")
    def _names_a_lead(self) -> EventIn:
        if not (self.lead_id or self.email or self.phone or self.message_id):
            raise ValueError("name the lead: give lead_id, email or phone")
        return self

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in RESPONSE_TYPES:
            raise ValueError(
                f"unknown event type {value!r}; known: {', '.join(sorted(RESPONSE_TYPES))}"
            )
        return value


# Seconds a request may spend signalling workflows after its events are committed.
INLINE_BUDGET = 1.0


class UnknownLead(LookupError):
    pass


@dataclass
class StoreResult:
    stored: list[Response] = field(default_factory=list)  # for a known lead: to deliver
    pending: list[Response] = field(default_factory=list)  # waiting for their lead
    duplicates: int = 0


class UnknownSequence(LookupError):
    pass


class Intake:
    def __init__(
        self,
        definitions: Definitions,
        sessions: sessionmaker,
        client: Client,
        task_queue: str,
        responses_per_run: int | None = None,  # tests: continue as new sooner
    ):
        self.definitions = definitions
        self.sessions = sessions
        self.client = client
        self.task_queue = task_queue
        self.responses_per_run = responses_per_run
        self.template_versions = TemplateVersions(definitions.templates_dir, sessions)

    # --- leads ----------------------------------------------------------------------------

    def upsert_lead(self, lead_in: LeadIn) -> tuple[Lead, bool]:
        """Create or update the lead by email; returns (lead, created)."""
        fields = lead_in.model_dump(exclude={"sequence"}, exclude_unset=True)
        fields["email"] = str(lead_in.email).lower()
        with self.sessions.begin() as session:
            lead = session.scalars(select(Lead).where(Lead.email == fields["email"])).one_or_none()
            created = lead is None
            if created:
                lead = Lead(**fields)
                session.add(lead)
            else:
                if "phone" in fields and fields["phone"] != lead.phone:
                    _new_number_clears_bad_address(session, lead)
                for name, value in fields.items():
                    setattr(lead, name, value)
            if lead.segment is None:  # a lead keeps the segment it was first given
                lead.segment = self.definitions.choose_segment(lead.profile())[0]
            session.flush()
            self._match_pending(session, lead)
            return lead, created

    async def enroll(
        self, lead: Lead, sequence_id: str | None = None, new_lead: bool = False
    ) -> EnrollRequest:
        """Enroll the lead; enrolling twice is a no-op in the workflow.

        A lead just created has no workflow yet: start it with the enrollment in its
        input (one plain start, cheaper than signal-with-start). Otherwise, or if a
        workflow turns out to be running after all, signal-with-start.
        """
        profile = lead.profile()
        segment, chosen = self.definitions.choose_segment(profile)
        sequence_id = sequence_id or chosen
        if sequence_id not in self.definitions.sequences:
            raise UnknownSequence(
                f"no sequence {sequence_id!r} (known: {', '.join(self.definitions.sequences)})"
            )
        sequence = self.definitions.sequences[sequence_id]
        request = EnrollRequest(
            enrollment_id=f"{lead.id}:{sequence.id}:v{sequence.version}",
            sequence=sequence,
            segment=segment,
            profile=profile,
            templates=self.template_versions.current(),
        )
        if new_lead:
            try:
                await self.client.start_workflow(
                    LeadWorkflow.run,
                    self._lead_input(lead, enroll=request),
                    id=lead_workflow_id(lead.id),
                    task_queue=self.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                )
                return request
            except WorkflowAlreadyStartedError:
                pass
        await self._signal_with_start(lead, "enroll", request)
        return request

    def _lead_input(self, lead: Lead, enroll: EnrollRequest | None = None) -> LeadInput:
        return LeadInput(lead_id=lead.id, profile=lead.profile(), score=lead.score,
                         stage=lead.stage, enroll=enroll,
                         responses_per_run=self.responses_per_run)  # fmt: skip

    async def _signal_with_start(self, lead: Lead, signal: str, argument: object) -> None:
        """Signal the lead's workflow, starting it first if it is not running."""
        await self.client.start_workflow(
            LeadWorkflow.run,
            self._lead_input(lead),
            id=lead_workflow_id(lead.id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=signal,
            start_signal_args=[argument],
        )

    # --- responses ------------------------------------------------------------------------

    def store_events(
        self, events: list[EventIn], source: str = "api", unknown_ids_pending: bool = False
    ) -> StoreResult:
        """Commit events to the inbox; each a transaction of its own with its consent change.

        Raises UnknownLead (and stores nothing) if an event names a lead ID we do not have.
        An event whose email or phone belongs to no lead yet is stored as pending.
        A repeated event ID is not stored again: the first row counts it.
        """
        with self.sessions() as session:
            for index, event in enumerate(events):
                if unknown_ids_pending or not event.lead_id:
                    continue  # providers echo IDs back: match those by address instead
                if session.get(Lead, event.lead_id) is None:
                    raise UnknownLead(f"event {index}: no lead {event.lead_id!r}")
        result = StoreResult()
        for event in events:
            event_id = event.event_id or f"{source}-{new_id()}"
            try:
                with self.sessions.begin() as session:
                    lead = self._find_lead(session, event)
                    row = Response(
                        event_id=event_id,
                        lead_id=lead.id if lead else None,
                        lead_email=str(event.email).lower() if event.email else None,
                        lead_phone=event.phone,
                        type=event.type,
                        source=source,
                        message_id=event.message_id,
                        data=event.data,
                        occurred_at=event.occurred_at or utcnow(),
                    )
                    session.add(row)
                    session.flush()  # a duplicate event ID fails here, before any change
                    if lead is not None:
                        _apply_consent(session, lead, row)
                    _note_delivery(session, row)
                (result.stored if row.lead_id else result.pending).append(row)
            except IntegrityError:
                with self.sessions.begin() as session:
                    counted = session.execute(
                        update(Response).where(Response.event_id == event_id)
                        .values(duplicates=Response.duplicates + 1)
                    ).rowcount  # fmt: skip
                if not counted:
                    raise  # not a duplicate: a real integrity problem
                result.duplicates += 1
        return result

    def _match_pending(self, session, lead: Lead) -> None:
        """Events that arrived before their lead: give them to it (in its transaction)."""
        keys = [Response.lead_email == lead.email]
        if lead.phone:
            keys.append(Response.lead_phone == lead.phone)
        waiting = session.scalars(
            select(Response).where(Response.lead_id.is_(None), or_(*keys))
            .order_by(Response.received_at)
        ).all()  # fmt: skip
        for row in waiting:
            row.lead_id = lead.id
            _apply_consent(session, lead, row)

    @staticmethod
    def _find_lead(session, event: EventIn) -> Lead | None:
        if event.lead_id and (lead := session.get(Lead, event.lead_id)) is not None:
            return lead
        if event.message_id and (message := session.get(Message, event.message_id)):
            return session.get(Lead, message.lead_id)  # a reply to one of our messages
        if event.email:
            return session.scalars(
                select(Lead).where(Lead.email == str(event.email).lower())
            ).one_or_none()
        if not event.phone:
            return None
        # A number can belong to several leads (shared phones): the newest one.
        return session.scalars(
            select(Lead).where(Lead.phone == event.phone).order_by(Lead.created_at.desc())
        ).first()

    async def deliver(self, rows: list[Response]) -> int:
        """Signal stored responses to their workflows; mark the ones Temporal accepted."""
        delivered = 0
        for row in rows:
            with self.sessions() as session:
                lead = session.get(Lead, row.lead_id)
            event = ResponseEvent(event_id=row.event_id, type=row.type, data=row.data,
                                  occurred_at=as_utc(row.occurred_at))  # fmt: skip
            await self._signal_with_start(lead, "respond", event)
            with self.sessions.begin() as session:  # the first delivery's time stays
                session.execute(
                    update(Response)
                    .where(Response.id == row.id, Response.delivered_at.is_(None))
                    .values(delivered_at=utcnow())
                )
            delivered += 1
        return delivered

    async def deliver_now(self, rows: list[Response], budget: float = INLINE_BUDGET) -> int:
        """Try to deliver at once, for at most `budget` seconds; never raises.

        What a request handler calls after committing: its answer must not wait on a
        Temporal outage (the SDK retries a failed call for ~10 s). Whatever is not
        delivered in time is left to the relay. Returns how many were delivered."""
        delivered = 0

        async def each() -> None:
            nonlocal delivered
            for row in rows:
                delivered += await self.deliver([row])

        try:
            await asyncio.wait_for(each(), timeout=budget)
        except Exception as exc:  # a timeout, or Temporal unreachable: the relay goes on
            log.warning("%d of %d event(s) delivered now; the relay has the rest (%s)",
                        delivered, len(rows), type(exc).__name__)  # fmt: skip
        return delivered

    async def redeliver(self, limit: int = 500) -> int:
        """The relay: signal what was stored but never reached a workflow."""
        # Rows younger than the inline budget may be on their way already: leave them.
        settled = utcnow() - timedelta(seconds=INLINE_BUDGET + 1)
        query = (
            select(Response)
            .where(Response.delivered_at.is_(None), Response.lead_id.is_not(None))
            .where(Response.received_at < settled)
            .order_by(Response.received_at)
            .limit(limit)
        )
        with self.sessions() as session:
            rows = list(session.scalars(query))
        return await self.deliver(rows)


def _apply_consent(session, lead: Lead, row: Response) -> None:
    """An SMS reply "STOP" is recorded as sms.stop and opts the lead out, in the same
    transaction as the response row."""
    row.type, consent = classify_response(row.type, row.data, lead)
    if consent is not None:
        set_consent(session, lead, consent, row.event_id)


# Provider reports about a message we sent: kept on the message row too, for reports.
DELIVERY_EVENTS = frozenset({"email.processed", "email.delivered", "email.deferred",
                             "email.bounce", "email.dropped", "sms.delivered",
                             "sms.undelivered"})  # fmt: skip


def _note_delivery(session, row: Response) -> None:
    if row.message_id and row.type in DELIVERY_EVENTS:
        message = session.get(Message, row.message_id)
        if message is not None:
            message.delivery_status = row.type.split(".", 1)[1]


def _new_number_clears_bad_address(session, lead: Lead) -> None:
    """A number the provider rejected stops SMS; a new number lifts that (nothing else)."""
    if not lead.sms_consent and (lead.sms_opt_out_reason or "").startswith("bad_address"):
        set_consent(session, lead, ConsentEffect("sms", True, "new_phone"))
