"""Intake: upsert a lead, choose its segment, enroll it, and deliver responses to its workflow.

Used by the API, the CLI and the demo. Responses are committed to the database
first (the inbox) and only then signalled, so a Temporal outage loses nothing:
`redeliver` signals whatever is still undelivered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import phonenumbers
from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationInfo, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from models.consent import ConsentEffect, classify_response, set_consent
from models.db import Lead, Response, as_utc, new_id, utcnow
from models.definitions import RESPONSE_TYPES
from models.loader import Definitions
from models.workflow_io import EnrollRequest, LeadInput, ResponseEvent, lead_workflow_id
from workflows.lead import LeadWorkflow


class LeadIn(BaseModel):
    """A lead as it arrives from a form, an import or the API."""

    model_config = ConfigDict(extra="forbid")
    email: EmailStr
    # Before `phone`: a number without a +country code is read in the lead's country.
    country: str | None = Field(default=None, min_length=2, max_length=2)
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    title: str | None = None
    company: str | None = None
    company_size: int | None = Field(default=None, ge=0)
    industry: str | None = None
    timezone: str = "UTC"
    source: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    sequence: str | None = Field(
        default=None, description="enroll in this sequence instead of the segment's"
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as Europe/Paris)"
            ) from None
        return value

    @field_validator("country")
    @classmethod
    def _upper_country(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("phone")
    @classmethod
    def _phone_in_e164(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else normalise_phone(value, info.data.get("country"))


def normalise_phone(raw: str, country: str | None = None) -> str | None:
    """A phone number in E.164 (+4915123456789), read in the lead's country if it has no
    +prefix. Raises ValueError saying why a number is not usable; blank means none."""
    if not raw.strip():
        return None
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException as exc:
        hint = "" if country else " (give it with +country code, or give the lead's country)"
        raise ValueError(f"phone {raw!r} is not a phone number: {exc._msg}{hint}") from None
    if not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_country_code(number.country_code)
        where = f" in {region}" if region not in ("ZZ", "001") else ""
        raise ValueError(f"phone {raw!r} is not a valid number{where}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class EventIn(BaseModel):
    """A response from a lead, sent to `POST /events`."""

    model_config = ConfigDict(extra="forbid")
    type: str
    lead_id: str | None = None
    email: EmailStr | None = None
    event_id: str | None = Field(default=None, max_length=200, description="idempotency key")
    occurred_at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in RESPONSE_TYPES:
            raise ValueError(
                f"unknown event type {value!r}; known: {', '.join(sorted(RESPONSE_TYPES))}"
            )
        return value


class UnknownLead(LookupError):
    pass


class UnknownSequence(LookupError):
    pass


class Intake:
    def __init__(
        self, definitions: Definitions, sessions: sessionmaker, client: Client, task_queue: str
    ):
        self.definitions = definitions
        self.sessions = sessions
        self.client = client
        self.task_queue = task_queue

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
            return lead, created

    async def enroll(self, lead: Lead, sequence_id: str | None = None) -> EnrollRequest:
        """Signal-with-start the lead's workflow; enrolling twice is a no-op in the workflow."""
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
        )
        await self._signal_with_start(lead, "enroll", request)
        return request

    async def _signal_with_start(self, lead: Lead, signal: str, argument: object) -> None:
        """Signal the lead's workflow, starting it first if it is not running."""
        await self.client.start_workflow(
            LeadWorkflow.run,
            LeadInput(
                lead_id=lead.id,
                profile=lead.profile(),
                scoring=self.definitions.scoring,
                score=lead.score,
                stage=lead.stage,
            ),  # fmt: skip
            id=lead_workflow_id(lead.id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=signal,
            start_signal_args=[argument],
        )

    # --- responses ------------------------------------------------------------------------

    def store_events(self, events: list[EventIn]) -> tuple[list[Response], int]:
        """Commit events to the inbox in one transaction; returns (new rows, duplicates).

        Raises UnknownLead (and stores nothing) if any event names no known lead.
        """
        with self.sessions.begin() as session:
            rows: list[tuple[Response, ConsentEffect | None]] = []
            for index, event in enumerate(events):
                lead = self._find_lead(session, event)
                if lead is None:
                    who = event.lead_id or event.email
                    raise UnknownLead(f"event {index}: no lead {who!r}")
                # An SMS reply "STOP" is recorded as sms.stop, and opts the lead out.
                kind, consent = classify_response(event.type, event.data, lead)
                row = Response(
                    event_id=event.event_id or f"api-{new_id()}",
                    lead_id=lead.id,
                    type=kind,
                    data=event.data,
                    occurred_at=event.occurred_at or utcnow(),
                )
                rows.append((row, consent))
        stored, duplicates = [], 0
        for row, consent in rows:  # one insert each, so a duplicate key drops only itself
            try:
                with self.sessions.begin() as session:
                    session.add(row)
                    if consent is not None:  # in the same transaction as the response
                        session.flush()
                        set_consent(session, session.get(Lead, row.lead_id), consent, row.event_id)
                stored.append(row)
            except IntegrityError:
                duplicates += 1
        return stored, duplicates

    @staticmethod
    def _find_lead(session, event: EventIn) -> Lead | None:
        if event.lead_id:
            return session.get(Lead, event.lead_id)
        if event.email:
            return session.scalars(
                select(Lead).where(Lead.email == str(event.email).lower())
            ).one_or_none()
        return None

    async def deliver(self, rows: list[Response]) -> int:
        """Signal stored responses to their workflows; mark the ones Temporal accepted."""
        delivered = 0
        for row in rows:
            with self.sessions() as session:
                lead = session.get(Lead, row.lead_id)
            event = ResponseEvent(event_id=row.event_id, type=row.type, data=row.data,
                                  occurred_at=as_utc(row.occurred_at))  # fmt: skip
            await self._signal_with_start(lead, "respond", event)
            with self.sessions.begin() as session:
                session.get(Response, row.id).delivered_at = utcnow()
            delivered += 1
        return delivered

    async def redeliver(self, limit: int = 500) -> int:
        """The relay: signal what was stored but never reached a workflow."""
        with self.sessions() as session:
            rows = list(
                session.scalars(
                    select(Response).where(Response.delivered_at.is_(None))
                    .order_by(Response.received_at).limit(limit)
                )
            )  # fmt: skip
        return await self.deliver(rows)


def _new_number_clears_bad_address(session, lead: Lead) -> None:
    """A number the provider rejected stops SMS; a new number lifts that (nothing else)."""
    if not lead.sms_consent and (lead.sms_opt_out_reason or "").startswith("bad_address"):
        set_consent(session, lead, ConsentEffect("sms", True, "new_phone"))
