"""Intake: upsert a lead, choose its segment, enroll it, and deliver responses to its workflow.

Used by the API, the CLI and the demo. Responses are committed to the database
first (the inbox) and only then signalled, so a Temporal outage loses nothing:
`redeliver` signals whatever is still undelivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.consent import ConfirmationRequest
from channels.template_sets import TemplateVersions
from infra.settings import Settings
from models.consent import (
    INTAKE_STATUSES,
    LEGAL_BASES,
    PENDING,
    ConsentEffect,
    Told,
    apply_intake_consent,
    classify_response,
    set_consent,
)
from models.contact import known_timezone, normalise_phone
from models.db import (
    EarlyStatus,
    Lead,
    Message,
    Response,
    as_utc,
    begin_writing,
    new_id,
    report_delivery,
    utcnow,
)
from models.definition_set import Definitions
from models.definitions import RESPONSE_TYPES, country_code
from models.locales import MAX_TAG_LENGTH, normalise_locale
from models.workflow_io import (
    EnrollRequest,
    LeadInput,
    ResponseEvent,
)
from sales.outcome_store import match_waiting_outcomes
from services import confirmation_client, lead_client

log = logging.getLogger("services.intake")


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
# JSON sizes (UTF-8 bytes). Attributes ride in the lead workflow's inputs (Temporal refuses
# a payload over 2 MB); event data stays in the database, only its ID and type are signalled.
MAX_ATTRIBUTES_BYTES = 16_384
MAX_EVENT_DATA_BYTES = 65_536
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


def json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))


def _within(value: dict[str, Any], limit: int) -> dict[str, Any]:
    size = json_size(value)
    if size > limit:
        raise ValueError(f"{size:,} bytes as JSON; the limit is {limit:,}")
    return value


# A campaign's fields, as on a landing page's URL (?utm_campaign=spring&utm_medium=cpc).
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def _trimmed(value: str | None) -> str | None:
    """A UTM value trimmed, and blank as none (a form posts its empty hidden fields)."""
    return (value.strip() or None) if value else None


# The length is checked as sent, as the OpenAPI document's maxLength says.
Utm = Annotated[
    str | None,
    Field(max_length=200, description="trimmed; blank is none"),
    AfterValidator(_trimmed),
]


def given_utm(item: BaseModel) -> dict[str, str]:
    """The UTM fields a lead or an event carries, only those given."""
    return {name: value for name in UTM_FIELDS if (value := getattr(item, name)) is not None}


def first_touch_only(lead: Lead, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields an update of `lead` sets. Its UTM is its first touch, the campaign that
    brought it: a later upsert's fills it only while the lead has none (later campaigns
    are credited from events), so a returning lead keeps where it came from."""
    if not any(getattr(lead, name) for name in UTM_FIELDS):
        return fields
    return {name: value for name, value in fields.items() if name not in UTM_FIELDS}


class _Incoming(BaseModel):
    """What arrives from outside: unknown fields refused, everything storable."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            storable(data)
        return data


# --- consent, as intake is told it (models/consent.py, docs/consent.md) ----------------------

Basis = Literal[LEGAL_BASES]  # type: ignore[valid-type]
BASIS_HELP = f"the legal basis: one of {', '.join(LEGAL_BASES)}"
# What the validators ask that pydantic's JSON Schema does not say, in /openapi.json: a
# basis when consent is given or pending (for SMS, `consent`).
BASIS_NEEDED = {"anyOf": [{"properties": {"status": {"const": "withdrawn"}}},
                          {"required": ["basis"],
                           "properties": {"basis": {"type": "string"}}}]}  # fmt: skip
SMS_BASIS_NEEDED = {"anyOf": [{"properties": {"status": {"const": "withdrawn"}}},
                              {"required": ["basis"],
                               "properties": {"basis": {"const": "consent"}}}]}  # fmt: skip


def _string_format(name: str, description: str) -> Callable[[dict[str, Any]], None]:
    """A JSON Schema `format` on an optional text field's string branch (a rule no keyword
    states, described; tests/test_api_contract.py generates values in it)."""

    def extra(schema: dict[str, Any]) -> None:
        branch = next((s for s in schema.get("anyOf", []) if s.get("type") == "string"), schema)
        branch["format"] = name
        schema["description"] = description

    return extra


class ChannelConsentIn(BaseModel):
    """One channel's consent: its status, where it was collected, when, on which basis."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=BASIS_NEEDED)

    status: Literal[INTAKE_STATUSES] = Field(  # type: ignore[valid-type]
        description="given; withdrawn; or pending: given, and to be confirmed by the lead "
        "(email only: double opt-in)",
    )
    basis: Basis | None = Field(
        default=None, validate_default=True,
        description=f"{BASIS_HELP}; required when given or pending",
    )  # fmt: skip
    source: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="where it was collected (a form, an event, a call); default: the way it "
        "came in (api, import:<file>, form:<id>)",
    )  # fmt: skip
    at: datetime | None = Field(
        default=None, description="when it was given, from 2000 to 2200; default: now"
    )

    @field_validator("basis")
    @classmethod
    def _basis_when_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("status") in ("given", PENDING):
            raise ValueError(f"give the legal basis it was {info.data['status']} on: one of "
                             f"{', '.join(LEGAL_BASES)}")  # fmt: skip
        return value

    @field_validator("at")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        if not EARLIEST <= value <= LATEST:
            raise ValueError(f"{value.isoformat()} is not a plausible time for a consent")
        return value


class SmsConsentIn(ChannelConsentIn):
    """SMS needs the person's explicit consent: no confirmation, no other basis."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=SMS_BASIS_NEEDED)

    status: Literal["given", "withdrawn"] = Field(
        description="given or withdrawn (SMS has no confirmation: a STOP withdraws it)"
    )

    @field_validator("basis")
    @classmethod
    def _explicit(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("status") == "given" and value not in (None, "consent"):
            raise ValueError(f"SMS needs the person's explicit consent: basis consent, not {value}")
        return value


class ConsentIn(BaseModel):
    """Consent per channel. A channel left out: a lead we have keeps what it has; a new
    lead starts as delivery.yaml's `consent.defaults` say for its country."""

    model_config = ConfigDict(extra="forbid")

    email: ChannelConsentIn | None = None
    sms: SmsConsentIn | None = None

    def told(self, source: str, now: datetime) -> dict[str, Told]:
        """What intake was told, per channel (the source and time filled in)."""
        given = {"email": self.email, "sms": self.sms}
        return {channel: Told(item.status, item.basis, item.source or source, item.at or now)
                for channel, item in given.items() if item is not None}  # fmt: skip


class LeadIn(_Incoming):
    """A lead as it arrives from a form, an import or the API (sizes: the columns')."""

    email: EmailStr = Field(max_length=320)
    # Before `phone`: a number without a +country code is read in the lead's country.
    country: str | None = Field(
        default=None, min_length=2, max_length=2,
        json_schema_extra=_string_format(
            "iso3166", "an ISO 3166 alpha-2 country code (DE, US; stored in upper case)"),
    )  # fmt: skip
    phone: str | None = Field(default=None, max_length=40)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    title: str | None = Field(default=None, max_length=200)
    company: str | None = Field(default=None, max_length=200)
    company_size: int | None = Field(default=None, ge=0, le=2**31 - 1)
    industry: str | None = Field(default=None, max_length=100)
    timezone: str = Field(default="UTC", max_length=64)
    locale: str | None = Field(
        default=None, max_length=MAX_TAG_LENGTH, examples=["de-AT"],
        description="the language to write to, a BCP 47 tag (normalised: de_at -> de-AT); "
        "none: the default locale",
    )  # fmt: skip
    source: str | None = Field(default=None, max_length=100)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description=f"at most {MAX_ATTRIBUTES_BYTES:,} bytes as JSON"
    )
    sequence: str | None = Field(
        default=None, max_length=100, description="enroll in this sequence instead of the segment's"
    )
    # The campaign that brought the lead: kept from its first upsert that has one.
    utm_source: Utm = None
    utm_medium: Utm = None
    utm_campaign: Utm = None
    utm_term: Utm = None
    utm_content: Utm = None
    consent: ConsentIn | None = Field(
        default=None, description="consent per channel, with its source, time and legal basis"
    )

    @field_validator("attributes")
    @classmethod
    def _small_attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _within(value, MAX_ATTRIBUTES_BYTES)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return known_timezone(value)

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str | None) -> str | None:
        return normalise_locale(value) if value and value.strip() else None

    @field_validator("country")
    @classmethod
    def _upper_country(cls, value: str | None) -> str | None:
        return country_code(value) if value else value  # ISO 3166 alpha-2, upper case

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
    data: dict[str, Any] = Field(
        default_factory=dict, description=f"at most {MAX_EVENT_DATA_BYTES:,} bytes as JSON"
    )
    # The campaign the event came through (an ad click's landing page, say).
    utm_source: Utm = None
    utm_medium: Utm = None
    utm_campaign: Utm = None
    utm_term: Utm = None
    utm_content: Utm = None

    @field_validator("data")
    @classmethod
    def _small_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _within(value, MAX_EVENT_DATA_BYTES)

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
# Leads signalled at once by one delivery (a batch of many leads' events).
SIGNALS_AT_ONCE = 32
# A lead's events given in one signal at most: a burst costs its workflow a few signals
# (history events, handler calls) instead of one per event; the payload stays small.
EVENTS_PER_SIGNAL = 100
# Responses a process delivers in the background at most. Past it, a request's responses
# are left to the relay, which drains them in order at the pace Temporal takes them: a
# burst waits in the inbox instead of piling up signals that slow every one of them.
MAX_IN_FLIGHT = 256
# Days events wait for their lead by default (NURTURE_PENDING_EVENT_RETENTION_DAYS), and
# seconds between the relay's expiries of those that waited longer.
RETENTION_DAYS = Settings.model_fields["pending_event_retention_days"].default
EXPIRY_INTERVAL = 600.0


class UnknownLead(LookupError):
    pass


@dataclass
class StoreResult:
    stored: list[Response] = field(default_factory=list)  # for a known lead: to deliver
    pending: list[Response] = field(default_factory=list)  # waiting for their lead
    duplicates: int = 0
    ignored: int = 0  # about one of our messages, but not its recipient: not stored
    unverified: int = 0  # replies kept unverified: no lead, never scored


class UnknownSequence(LookupError):
    pass


class DeliveryMarks:
    """Marks delivered responses, many deliveries' in one write: what deliveries accepted
    while a write ran goes in the next (one commit, and one turn of SQLite's write lock,
    for many; none waits when the writes keep up). A mark that is never written leaves
    its response to the relay, and the workflow drops what it has had already."""

    def __init__(self, write: Callable[[list[str]], None]):
        self._write = write
        self._pending: list[str] = []
        self._waiting: list[asyncio.Future] = []
        self._writer: asyncio.Task | None = None

    async def mark(self, response_ids: list[str]) -> None:
        """Returns once the IDs are marked (raises if their write failed)."""
        done = asyncio.get_running_loop().create_future()
        self._pending.extend(response_ids)
        self._waiting.append(done)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        waiting: list[asyncio.Future] = []
        try:
            while self._pending:
                ids, waiting = self._pending, self._waiting
                self._pending, self._waiting = [], []
                try:
                    await asyncio.to_thread(self._write, ids)
                except Exception as exc:
                    _settle(waiting, exc)
                else:
                    _settle(waiting, None)
        finally:  # cancelled (the loop is closing): nobody waits for ever
            self._writer = None
            _settle([*waiting, *self._waiting], asyncio.CancelledError())


def _settle(futures: list[asyncio.Future], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # its delivery was cancelled (the write went on), or settled
            continue
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)


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
        self._deliveries: set[asyncio.Task] = set()  # deliver_now's, still in flight
        self._in_flight: set[str] = set()  # their responses' IDs: not the relay's yet
        self._marks = DeliveryMarks(self._mark_delivered)

    # --- leads ----------------------------------------------------------------------------

    def upsert_lead(self, lead_in: LeadIn, cause: str = "api") -> tuple[Lead, bool]:
        """Create or update the lead by email, with the consent it carries (`cause` names
        the way it came in, on the consent rows); returns (lead, created)."""
        try:
            return self._upsert_lead(lead_in, cause)
        except IntegrityError:
            # Two requests created the same new lead at once (two APIs, or two requests
            # of one): the other's insert won, so this one is an update of it.
            return self._upsert_lead(lead_in, cause)

    def _upsert_lead(self, lead_in: LeadIn, cause: str) -> tuple[Lead, bool]:
        fields = lead_in.model_dump(exclude={"sequence", "consent"}, exclude_unset=True)
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
                for name, value in first_touch_only(lead, fields).items():
                    setattr(lead, name, value)
            if lead.segment is None:  # a lead keeps the segment it was first given
                lead.segment = self.definitions.choose_segment(lead.profile())[0]
            session.flush()
            told = lead_in.consent.told(cause, utcnow()) if lead_in.consent else {}
            apply_intake_consent(session, lead, created, told, self.definitions.consent, cause)
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
        await self.ask_to_confirm(lead)
        request = EnrollRequest(
            enrollment_id=f"{lead.id}:{sequence.id}:v{sequence.version}",
            sequence=sequence,
            segment=segment,
            profile=profile,
            templates=await asyncio.to_thread(self.template_versions.current),
            holdout_percent=self.definitions.holdout(segment),
        )
        if new_lead and await lead_client.start_enrolled(
            self.client, self.task_queue, self._lead_input(lead, enroll=request)
        ):
            return request
        await lead_client.enroll(self.client, self.task_queue, self._lead_input(lead), request)
        return request

    async def ask_to_confirm(self, lead: Lead) -> None:
        """Start the confirmation of the lead's email consent if it waits for one (double
        opt-in): once per request, however often the lead is enrolled. A lead of a country
        double opt-in applies to is read again (a form makes it pending in a transaction
        of its own); the others' pending state is the one intake gave this object."""
        confirmation_id = lead.email_confirmation_id if lead.email_confirmation == PENDING else None
        if confirmation_id is None and self.definitions.consent.double_opt_in.applies(lead.country):
            confirmation_id = await asyncio.to_thread(self._pending_confirmation, lead.id)
        if confirmation_id is None:
            return
        timing = self.definitions.consent.double_opt_in
        request = ConfirmationRequest(lead_id=lead.id, confirmation_id=confirmation_id,
                                      reminder_after=timing.reminder_after,
                                      expires_after=timing.expires_after)  # fmt: skip
        await confirmation_client.start(self.client, self.task_queue, request)

    def _pending_confirmation(self, lead_id: str) -> str | None:
        with self.sessions() as session:
            lead = session.get(Lead, lead_id)
            pending = lead is not None and lead.email_confirmation == PENDING
            return lead.email_confirmation_id if pending else None

    def _lead_input(self, lead: Lead, enroll: EnrollRequest | None = None) -> LeadInput:
        return LeadInput(lead_id=lead.id, profile=lead.profile(), score=lead.score,
                         stage=lead.stage, enroll=enroll,
                         responses_per_run=self.responses_per_run)  # fmt: skip

    # --- responses ------------------------------------------------------------------------

    def store_events(
        self, events: list[EventIn], source: str = "api", unknown_ids_pending: bool = False
    ) -> StoreResult:
        """Commit events to the inbox: all of a request in one transaction (one commit, one
        turn of SQLite's write lock, not one per event), each with its consent change.

        Raises UnknownLead (and stores nothing) if an event names a lead ID we do not have.
        An event whose email or phone belongs to no lead yet is stored as pending.
        A repeated event ID is not stored again: the first row counts it. A delivery or
        engagement event naming one of our messages but another recipient is not about
        that message: it is ignored (counted), never given to the message's lead.
        """
        with self.sessions() as session:
            for index, event in enumerate(events):
                if unknown_ids_pending or not event.lead_id:
                    continue  # providers echo IDs back: match those by address instead
                if session.get(Lead, event.lead_id) is None:
                    raise UnknownLead(f"event {index}: no lead {event.lead_id!r}")
        try:
            return self._store_events(events, source, one_by_one=False)
        except IntegrityError:  # an event ID stored before: nothing of this try was kept
            return self._store_events(events, source, one_by_one=True)

    def _store_events(self, events: list[EventIn], source: str, one_by_one: bool) -> StoreResult:
        """Reads first, then the writes (SQLite's write lock is held only for those).
        Repeats are rare (a provider's redelivery): the inserts expect none but repeats
        within the request, and `one_by_one` (each event under a savepoint) is the way
        for a request with an event ID stored before."""
        result = StoreResult()
        with self.sessions.begin() as session:
            found = [item for event in events
                     if (item := self._lead_of_event(session, event, source, result))]  # fmt: skip
            if one_by_one:
                begin_writing(session)  # so that the savepoints nest in it (SQLite)
                rows = [self._store_event(session, *item, source, result) for item in found]
            else:
                found, repeats = _first_of_each_id(found)
                rows = [self._add_event(session, *item, source) for item in found]
                for event_id in repeats:
                    _count_duplicate(session, event_id)
                    result.duplicates += 1
        for row in rows:
            if row is not None:
                (result.stored if row.lead_id else result.pending).append(row)
        return result

    def _lead_of_event(
        self, session, event: EventIn, source: str, result: StoreResult
    ) -> tuple[EventIn, str, Lead | None] | None:
        """The event with its ID and lead; None (counted) if it is about another recipient."""
        event_id = event.event_id or f"{source}-{new_id()}"
        if _about_another_recipient(session, event):
            log.warning("event %s names message %s but not its recipient: ignored",
                        event_id, event.message_id)  # fmt: skip
            result.ignored += 1
            return None
        return event, event_id, self._find_lead(session, event)

    def _store_event(
        self,
        session,
        event: EventIn,
        event_id: str,
        lead: Lead | None,
        source: str,
        result: StoreResult,
    ) -> Response | None:
        """One event under a savepoint: a repeated event ID undoes it alone."""
        try:
            with session.begin_nested():
                row = self._add_event(session, event, event_id, lead, source)
            return row
        except IntegrityError:
            if not _count_duplicate(session, event_id):
                raise  # not a duplicate: a real integrity problem
            result.duplicates += 1
            return None

    @staticmethod
    def _add_event(session, event: EventIn, event_id: str, lead: Lead | None, source: str):
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
        if utm := given_utm(event):  # else SQL NULL (an explicit None is JSON null)
            row.utm = utm
        session.add(row)
        session.flush()  # a repeated event ID fails here, before any change
        if lead is not None:
            _apply_consent(session, lead, row)
        _note_delivery(session, row)
        return row

    def _count_duplicate(self, event_id: str) -> bool:
        with self.sessions.begin() as session:
            return _count_duplicate(session, event_id)

    def keep_unverified(self, event: EventIn, source: str) -> StoreResult:
        """A reply that only its From header names, and that SPF and DKIM do not vouch for:
        anyone can write a From. Kept (nothing is lost) as an `email.reply_unverified` with
        no lead, so it is never delivered, scored, nor matched to a lead arriving later."""
        result = StoreResult()
        event_id = event.event_id or f"{source}-{new_id()}"
        try:
            with self.sessions.begin() as session:
                session.add(Response(event_id=event_id, type=UNVERIFIED_REPLY, source=source,
                                     data=event.data,
                                     occurred_at=event.occurred_at or utcnow()))  # fmt: skip
            result.unverified += 1
        except IntegrityError:
            if not self._count_duplicate(event_id):
                raise
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
        match_waiting_outcomes(session, lead)

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
        """Signal stored responses to their workflows; mark the ones Temporal accepted.
        Raises the first signal's error, once every lead's signals have been tried."""
        return await self._deliver(rows, [])

    async def _deliver(self, rows: list[Response], accepted: list[str]) -> int:
        """A lead's responses in their order, up to SIGNALS_AT_ONCE leads at once; then one
        write marks all that Temporal accepted, even if some signal failed."""
        by_lead: dict[str, list[Response]] = {}
        for row in rows:
            by_lead.setdefault(row.lead_id, []).append(row)
        gate = asyncio.Semaphore(SIGNALS_AT_ONCE)

        async def signal_lead(lead_rows: list[Response]) -> None:
            async with gate:
                for start in range(0, len(lead_rows), EVENTS_PER_SIGNAL):
                    chunk = lead_rows[start : start + EVENTS_PER_SIGNAL]
                    await self._signal(chunk)
                    accepted.extend(row.id for row in chunk)

        try:
            outcomes = await asyncio.gather(
                *(signal_lead(lead_rows) for lead_rows in by_lead.values()),
                return_exceptions=True,
            )
        finally:
            if accepted:
                await self._marks.mark(list(accepted))
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]
        return len(accepted)

    async def _signal(self, rows: list[Response]) -> None:
        """A plain signal (the workflow runs: the common case, and the cheapest call), and
        signal-with-start only when there is no running workflow to take it. One lead's
        rows: one event as `respond`, several in one `respond_all`."""
        events = [ResponseEvent(event_id=row.event_id, type=row.type, data=row.data,
                                occurred_at=as_utc(row.occurred_at)).slim()
                  for row in rows]  # fmt: skip
        lead_id = rows[0].lead_id
        try:
            if len(events) == 1:
                await lead_client.signal_response(self.client, lead_id, events[0])
            else:
                await lead_client.signal_responses(self.client, lead_id, events)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            lead = self._lead_input((await asyncio.to_thread(self._leads_of, {lead_id}))[lead_id])
            if len(events) == 1:
                await lead_client.respond(self.client, self.task_queue, lead, events[0])
            else:
                await lead_client.respond_all(self.client, self.task_queue, lead, events)

    def _leads_of(self, lead_ids: set[str]) -> dict[str, Lead]:
        with self.sessions() as session:
            return {lead.id: lead for lead in session.scalars(
                select(Lead).where(Lead.id.in_(lead_ids)))}  # fmt: skip

    def _mark_delivered(self, response_ids: list[str]) -> None:
        with self.sessions.begin() as session:  # the first delivery's time stays
            session.execute(
                update(Response)
                .where(Response.id.in_(response_ids), Response.delivered_at.is_(None))
                .values(delivered_at=utcnow())
            )

    async def deliver_now(self, rows: list[Response], budget: float = INLINE_BUDGET) -> int:
        """Deliver at once, waiting at most `budget` seconds; never raises. Returns how
        many Temporal accepted by then.

        What a request handler calls after committing: its answer must not wait on a
        Temporal outage (the SDK retries a failed call for ~10 s). The delivery is not
        cut off at the budget, which would leave signals Temporal took unmarked (and sent
        again by the relay): it goes on in the background, and what it cannot deliver is
        left to the relay."""
        if not rows:
            return 0
        if len(self._in_flight) + len(rows) > MAX_IN_FLIGHT:
            log.info("%d event(s) left to the relay: %d already on their way",
                     len(rows), len(self._in_flight))  # fmt: skip
            return 0
        accepted: list[str] = []
        ids = {row.id for row in rows}
        self._in_flight |= ids
        delivery = asyncio.create_task(self._deliver(rows, accepted))
        delivery.add_done_callback(lambda _: self._in_flight.difference_update(ids))
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._delivery_done)
        await asyncio.wait({delivery}, timeout=budget)
        if len(accepted) < len(rows):
            log.warning("%d of %d event(s) delivered now; the rest follow or the relay has "
                        "them", len(accepted), len(rows))  # fmt: skip
        return len(accepted)

    def _delivery_done(self, delivery: asyncio.Task) -> None:
        self._deliveries.discard(delivery)
        if not delivery.cancelled() and delivery.exception() is not None:
            log.warning("a delivery stopped, the relay has the rest (%s)",
                        type(delivery.exception()).__name__)  # fmt: skip

    async def finish_deliveries(self, timeout: float) -> None:
        """On shutdown: let deliveries in flight finish for up to `timeout` seconds, then
        cancel them (what they had not signalled, the relay signals)."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout)
        for delivery in list(self._deliveries):
            delivery.cancel()

    async def redeliver(self, limit: int = 500) -> int:
        """The relay: apply status callbacks whose message has its SID by now, expire what
        waited too long for its lead (every EXPIRY_INTERVAL), and signal what was stored
        but never reached a workflow. Database work runs in a thread: this is the API's
        event loop."""
        if time.monotonic() - self._expired_at >= EXPIRY_INTERVAL:
            await asyncio.to_thread(self.expire_pending)
            self._expired_at = time.monotonic()
        settled = await asyncio.to_thread(self.settle_statuses, None, limit)
        delivered = await self.deliver(settled.stored)
        rows = await asyncio.to_thread(self._undelivered, limit, set(self._in_flight))
        return delivered + await self.deliver(rows)

    def _undelivered(self, limit: int, in_flight: set[str]) -> list[Response]:
        # Rows younger than the inline budget may be on their way already, and this
        # process's own background deliveries are: leave them.
        settled = utcnow() - timedelta(seconds=INLINE_BUDGET + 1)
        query = (
            select(Response)
            .where(Response.delivered_at.is_(None), Response.lead_id.is_not(None))
            .where(Response.received_at < settled, Response.id.not_in(in_flight))
            .order_by(Response.received_at)
            .limit(limit)
        )
        with self.sessions() as session:
            return list(session.scalars(query))

    # --- provider status callbacks and expiry -----------------------------------------------

    # What waits for its lead (or a status for its message) longer than this is deleted;
    # the API sets it from NURTURE_PENDING_EVENT_RETENTION_DAYS.
    pending_retention = timedelta(days=RETENTION_DAYS)
    _expired_at = -math.inf  # when the relay last expired pending events (monotonic)

    def record_status(
        self, sid: str, status: str, error_code: str | None
    ) -> tuple[StoreResult, bool]:
        """A Twilio status callback: kept, then applied at once if its message has the SID.
        A callback can beat the send activity writing the SID Twilio answered with: then
        it waits (the second value is True) and the relay applies it when the message
        has the SID."""
        try:
            with self.sessions.begin() as session:
                session.add(EarlyStatus(provider_message_id=sid, status=status,
                                        error_code=error_code))  # fmt: skip
        except IntegrityError:
            pass  # Twilio repeated a callback still waiting for its message: one is enough
        result = self.settle_statuses([sid])
        with self.sessions() as session:
            waiting = session.get(EarlyStatus, (sid, status)) is not None
        return result, waiting

    def settle_statuses(self, sids: list[str] | None = None, limit: int = 500) -> StoreResult:
        """Apply the kept status callbacks whose message has their SID now: the message's
        `delivery_status` moves forward only; a final one is also a response of its lead
        (with its consent effect: 30005/30006 flag the number). Then they are deleted."""
        query = (
            select(EarlyStatus, Message.id, Message.lead_id)
            .join(Message, Message.provider_message_id == EarlyStatus.provider_message_id)
            .where(Message.channel == "sms")
            .order_by(EarlyStatus.received_at)
            .limit(limit)
        )
        if sids is not None:
            query = query.where(EarlyStatus.provider_message_id.in_(sids))
        with self.sessions.begin() as session:
            found = session.execute(query).all()
            for early, message_id, _lead_id in found:
                report_delivery(session, message_id, early.status)
        events = [
            EventIn(type=TWILIO_RESPONSES[early.status], lead_id=lead_id, message_id=message_id,
                    event_id=f"twilio:{early.provider_message_id}:{early.status}",
                    occurred_at=early.received_at,
                    data={"status": early.status, "error_code": early.error_code})
            for early, message_id, lead_id in found if early.status in TWILIO_RESPONSES
        ]  # fmt: skip
        result = self.store_events(events, source="twilio")
        if found:
            keys = [and_(EarlyStatus.provider_message_id == early.provider_message_id,
                         EarlyStatus.status == early.status) for early, *_ in found]  # fmt: skip
            with self.sessions.begin() as session:
                session.execute(delete(EarlyStatus).where(or_(*keys)))
        return result

    def expire_pending(self) -> int:
        """Delete the events that waited for their lead longer than `pending_retention`,
        and the status callbacks that never found their message (a rep's SMS, say)."""
        cutoff = utcnow() - self.pending_retention
        with self.sessions.begin() as session:
            events = session.execute(
                delete(Response).where(Response.lead_id.is_(None),
                                       Response.type != UNVERIFIED_REPLY,
                                       Response.received_at < cutoff)
            ).rowcount  # fmt: skip
            statuses = session.execute(
                delete(EarlyStatus).where(EarlyStatus.received_at < cutoff)
            ).rowcount
        if events or statuses:
            log.info("expired %d event(s) that waited for a lead and %d status callback(s) "
                     "that waited for a message, for over %s", events, statuses,
                     self.pending_retention)  # fmt: skip
        return events + statuses


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


# Events about one of our messages as its recipient got it: another address is not its.
RECIPIENT_EVENTS = DELIVERY_EVENTS | {"email.open", "email.click", "email.unsubscribe",
                                      "email.spamreport"}  # fmt: skip
# Twilio statuses that are also responses of the lead; the others only move the message on.
TWILIO_RESPONSES = {"delivered": "sms.delivered", "undelivered": "sms.undelivered",
                    "failed": "sms.undelivered"}  # fmt: skip
UNVERIFIED_REPLY = "email.reply_unverified"


def _first_of_each_id(found: list[tuple]) -> tuple[list[tuple], list[str]]:
    """The events (event, event ID, lead) whose ID comes first in the request, and the
    IDs of the repeats. (One stored before fails its insert: see `store_events`.)"""
    seen: set[str] = set()
    first, repeats = [], []
    for item in found:
        (repeats if item[1] in seen else first).append(item)
        seen.add(item[1])
    return first, [event_id for _, event_id, _ in repeats]


def _count_duplicate(session, event_id: str) -> bool:
    """Count a repeat on the first row of its event ID; False if there is none."""
    return bool(
        session.execute(
            update(Response).where(Response.event_id == event_id)
            .values(duplicates=Response.duplicates + 1)
        ).rowcount
    )  # fmt: skip


def _note_delivery(session, row: Response) -> None:
    if row.message_id and row.type in DELIVERY_EVENTS:  # forward only: see report_delivery
        report_delivery(session, row.message_id, row.type.split(".", 1)[1])


def _about_another_recipient(session, event: EventIn) -> bool:
    """Whether the event names one of our messages but not the address it was sent to
    (custom args copied onto another email, say): then it is not about that message.
    A reply is exempt: it may come from any address (the reply token vouches for it)."""
    if event.type not in RECIPIENT_EVENTS or not event.message_id:
        return False
    address = str(event.email).lower() if event.email else event.phone
    message = session.get(Message, event.message_id)
    if address is None or message is None:
        return False
    return message.recipient.lower() != address


def _new_number_clears_bad_address(session, lead: Lead) -> None:
    """A number the provider rejected stops SMS; a new number lifts that (nothing else)."""
    if not lead.sms_consent and (lead.sms_opt_out_reason or "").startswith("bad_address"):
        set_consent(session, lead, ConsentEffect("sms", True, "new_phone"))
