"""The system of record: every lead, send, response, score change, stage change and handoff.

SQLAlchemy 2 typed ORM. Unique keys make every activity's write idempotent, so a
retried activity finds its own earlier row instead of writing a second one.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from models.sqlite_writers import gated_connection


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes for what was stored as UTC: make them aware."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Lead(Base):
    __tablename__ = "leads"
    # The console's lead search: a page in order of last activity or score is read off an
    # index (the ID breaks ties, so pages never overlap), not sorted from every lead.
    __table_args__ = (
        Index("ix_leads_updated_at", "updated_at", "id"),
        Index("ix_leads_score", "score", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(32))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    title: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    company_size: Mapped[int | None] = mapped_column(Integer)
    industry: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str | None] = mapped_column(String(2))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    source: Mapped[str | None] = mapped_column(String(100))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    segment: Mapped[str | None] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(20), default="lead", index=True)
    # The latest score card's figures (0-100); score_changes holds each card in full.
    score: Mapped[float] = mapped_column(Float, default=0)
    fit_score: Mapped[float] = mapped_column(Float, default=0)
    engagement_score: Mapped[float] = mapped_column(Float, default=0)
    grade: Mapped[str | None] = mapped_column(String(1))
    scoring_model: Mapped[str | None] = mapped_column(String(100))
    scored_at: Mapped[datetime | None] = mapped_column()
    owner_rep_id: Mapped[str | None] = mapped_column(ForeignKey("sales_reps.id"))
    # Rejected by sales: SQL cannot be re-entered before this (the recycle cool-down).
    sql_hold_until: Mapped[datetime | None] = mapped_column()
    # Consent per channel; models/consent.py is the only writer (with a ConsentChange row).
    email_consent: Mapped[bool] = mapped_column(default=True)
    sms_consent: Mapped[bool] = mapped_column(default=True)
    email_opt_out_reason: Mapped[str | None] = mapped_column(Text)
    sms_opt_out_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The campaign that brought the lead (its first touch): later ones come on events.
    utm_source: Mapped[str | None] = mapped_column(String(200))
    utm_medium: Mapped[str | None] = mapped_column(String(200))
    utm_campaign: Mapped[str | None] = mapped_column(String(200))
    utm_term: Mapped[str | None] = mapped_column(String(200))
    utm_content: Mapped[str | None] = mapped_column(String(200))
    # The language the lead is written to, a normalised BCP 47 tag (de-AT): none, the default.
    locale: Mapped[str | None] = mapped_column(String(35))
    # Double opt-in (docs/consent.md): pending | confirmed | expired | withdrawn, and the
    # current request's ID (its link and workflow name it). Email waits while pending.
    email_confirmation: Mapped[str | None] = mapped_column(String(20))
    email_confirmation_id: Mapped[str | None] = mapped_column(String(32))

    PROFILE_FIELDS = (
        "email", "phone", "first_name", "last_name", "title", "company", "company_size",
        "industry", "country", "timezone", "locale", "source", "attributes",
    )  # fmt: skip

    @classmethod
    def find(cls, session: Session, key: str) -> Lead | None:
        """A lead by ID or by email address (as the CLI takes them)."""
        if "@" in key:
            return session.scalars(select(cls).where(cls.email == key.strip().lower())).first()
        return session.get(cls, key)

    def profile(self) -> dict[str, Any]:
        """The lead as templates and conditions see it."""
        data = {name: getattr(self, name) for name in self.PROFILE_FIELDS}
        return data | {"id": self.id, "segment": self.segment, "stage": self.stage,
                       "score": self.score}  # fmt: skip


class SalesRepRow(Base):
    __tablename__ = "sales_reps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(default=True)
    last_assigned_at: Mapped[datetime | None] = mapped_column()


class Enrollment(Base):
    __tablename__ = "enrollments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    sequence_id: Mapped[str] = mapped_column(String(100))
    sequence_version: Mapped[int] = mapped_column(Integer)
    segment: Mapped[str | None] = mapped_column(String(100))
    workflow_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="active")
    exit_reason: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()


class TemplateSet(Base):
    """The message templates (email/ and sms/) as they were when leads were enrolled:
    a lead is sent what its sequence version was written with, whatever is edited later.
    Keyed by the digest of their contents, so each version is stored once."""

    __tablename__ = "template_sets"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)  # relative path -> source
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PausedSequence(Base):
    """A sequence a person paused (`nurture sequence pause`): its sends are held back, not
    dropped, until it is resumed, which deletes the row."""

    __tablename__ = "paused_sequences"

    sequence_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str | None] = mapped_column(Text)


class Message(Base):
    __tablename__ = "messages"
    # A lead's sends; on PostgreSQL the index carries what attribution reads of them, so
    # the touches of 75,000 leads among 10,000,000 sends are an index-only scan.
    __table_args__ = (
        Index("ix_messages_lead_id", "lead_id",
              postgresql_include=["sent_at", "enrollment_id", "step_id"]),
    )  # fmt: skip

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # (lead, enrollment, step, visit): claimed before the provider is called.
    send_key: Mapped[str] = mapped_column(String(300), unique=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"))
    enrollment_id: Mapped[str | None] = mapped_column(ForeignKey("enrollments.id"))
    step_id: Mapped[str | None] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(10))
    template: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(50))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), index=True)
    # claimed -> skipped (consent) | deferred (quiet hours, a cap: again at `not_before`)
    #         -> sending (committed just before the provider call)
    #         -> sent | failed (4xx, final) | retrying (429/5xx, nothing sent)
    #          | unknown (a retry found it `sending`: maybe sent, never repeated)
    status: Mapped[str] = mapped_column(String(20), default="claimed", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # What the provider reported later (delivered, bounce, undelivered...), from webhooks.
    delivery_status: Mapped[str | None] = mapped_column(String(30))
    # When the workflow wanted it sent (workflow time): what quiet hours and caps judge.
    scheduled_at: Mapped[datetime | None] = mapped_column()
    not_before: Mapped[datetime | None] = mapped_column()
    counts_for_caps: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the provider was called (not when its answer was written): what a reply that
    # came back at once is attributed by.
    sent_at: Mapped[datetime | None] = mapped_column()


# How far along a message each delivery status is: Twilio's lifecycle (queued, accepted or
# scheduled -> sending -> sent -> delivered, undelivered, failed, canceled -> read) and
# SendGrid's (processed -> deferred -> delivered, bounce, dropped). Final statuses share a
# rank: the first one reported stays. An unknown status ranks with the first ones.
DELIVERY_ORDER = {
    "queued": 0, "accepted": 0, "scheduled": 0, "processed": 0,
    "sending": 1, "deferred": 1,
    "sent": 2,
    "delivered": 3, "undelivered": 3, "failed": 3, "canceled": 3, "partially_delivered": 3,
    "bounce": 3, "dropped": 3,
    "read": 4,
}  # fmt: skip


def report_delivery(session: Session, message_id: str, status: str) -> bool:
    """Set the message's delivery status to a provider's `status` if that is further
    along than the one it has: callbacks arrive out of order (a late `sent` must not undo
    `delivered`). One conditional UPDATE, so two callbacks at once cannot undo each other
    either. True if it moved."""
    rank = DELIVERY_ORDER.get(status, 0)
    behind = [known for known, known_rank in DELIVERY_ORDER.items() if known_rank < rank]
    current = Message.delivery_status
    unknown = current.not_in(DELIVERY_ORDER) if rank > 0 else false()
    moved = session.execute(
        update(Message)
        .where(Message.id == message_id, or_(current.is_(None), current.in_(behind), unknown))
        .values(delivery_status=status)
        .execution_options(synchronize_session="fetch")
    )
    return moved.rowcount == 1


class EarlyStatus(Base):
    """A provider's status callback for a message ID no message has yet: the callback beat
    the send activity writing the ID. Applied to the message once it has it (the API's
    relay), or deleted after NURTURE_PENDING_EVENT_RETENTION_DAYS (never one of ours:
    a rep's notification, another system on the same account)."""

    __tablename__ = "early_statuses"

    provider_message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(30), primary_key=True)
    error_code: Mapped[str | None] = mapped_column(String(20))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


OPENS_CLICKS = "type IN ('email.open', 'email.click')"  # what ix_responses_opens_clicks holds


class Response(Base):
    """A lead's response (open, click, page view...). Doubles as the intake inbox: a row is
    committed before the request that brought it is answered; `delivered_at` is set once
    the lead's workflow has it. A row with no lead yet (`lead_id` unset) waits for a lead
    with its `lead_email` or `lead_phone` to appear, for NURTURE_PENDING_EVENT_RETENTION_DAYS.
    An `email.reply_unverified` (a reply matched only by a From that SPF and DKIM do not
    vouch for) is kept with no lead, so it is never delivered, scored or matched."""

    __tablename__ = "responses"
    # The responses a workflow has and has not scored yet: the inbox backlog's second half
    # (services/backlog.py) and stuck leads, found without reading the scored ones.
    __table_args__ = (
        Index("ix_responses_unscored", "delivered_at", sqlite_where=text("scored_in IS NULL"),
              postgresql_where=text("scored_in IS NULL")),
        # The experiments' results (migration 0014): each lead's latest open and click, read
        # off this index in lead order rather than from every response (4x at 1,000,000 leads).
        Index("ix_responses_opens_clicks", "lead_id", "type", "occurred_at",
              sqlite_where=text(OPENS_CLICKS), postgresql_where=text(OPENS_CLICKS)),
    )  # fmt: skip

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # sg_event_id, Twilio MessageSid (+ status), or the caller's idempotency key.
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"), index=True)
    lead_email: Mapped[str | None] = mapped_column(String(320), index=True)
    lead_phone: Mapped[str | None] = mapped_column(String(32), index=True)
    type: Mapped[str] = mapped_column(String(50))
    source: Mapped[str] = mapped_column(String(20), default="api")  # api | sendgrid | twilio
    message_id: Mapped[str | None] = mapped_column(String(32))  # ours, when it answers one
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(index=True)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)  # repeats dropped
    # The score change that counted it (a burst of responses is scored once, by one change).
    scored_in: Mapped[int | None] = mapped_column(ForeignKey("score_changes.id"))
    utm: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the utm_* fields it carried


class ConsentChange(Base):
    """Every opt-out and opt-in, with why and what caused it: the consent audit trail."""

    __tablename__ = "consent_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    opted_in: Mapped[bool] = mapped_column()
    # unsubscribe | stop | hard_bounce | spam_report | bad_address | manual | start | ...
    reason: Mapped[str] = mapped_column(String(30))
    detail: Mapped[str | None] = mapped_column(Text)
    source_event_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # What intake was told (docs/consent.md): given | withdrawn | pending | confirmed |
    # expired, where the consent was collected, when, and on which legal basis.
    status: Mapped[str | None] = mapped_column(String(20))
    source: Mapped[str | None] = mapped_column(String(200))
    given_at: Mapped[datetime | None] = mapped_column()
    basis: Mapped[str | None] = mapped_column(String(30))


class ScoreChange(Base):
    """A lead's score card each time it was scored: after a response (`event_id` is the
    response's), a decay rescore (`decay:...`) or a model change (`rescore:...`)."""

    __tablename__ = "score_changes"
    __table_args__ = (UniqueConstraint("lead_id", "event_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(200))
    cause: Mapped[str | None] = mapped_column(String(50))  # response type | decay | rescore
    old_score: Mapped[float] = mapped_column(Float)
    new_score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(100))
    # The score card (ScoreCard.to_dict()): fit, engagement, grade and every rule's points.
    breakdown: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the workflow was told (ScoreResult), so a retried activity answers the same.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    scored_at: Mapped[datetime | None] = mapped_column()  # the moment the card is for
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The fingerprint of the predictive model that gave the card its `predicted`, if any.
    predictive_model: Mapped[str | None] = mapped_column(String(64))


class StageChange(Base):
    __tablename__ = "stage_changes"
    __table_args__ = (UniqueConstraint("lead_id", "change_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    change_key: Mapped[str] = mapped_column(String(200))
    from_stage: Mapped[str] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Handoff(Base):
    __tablename__ = "handoffs"
    __table_args__ = (UniqueConstraint("lead_id", "cycle"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    cycle: Mapped[int] = mapped_column(Integer)  # qualification cycle: one handoff per cycle
    rep_id: Mapped[str] = mapped_column(ForeignKey("sales_reps.id"))
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    # pending -> accepted | rejected | disqualified (one answer per handoff)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    grade: Mapped[str | None] = mapped_column(String(1))
    card: Mapped[dict | None] = mapped_column(JSON)  # the score card when it was handed off
    pool: Mapped[str | None] = mapped_column(String(64))
    routing: Mapped[str | None] = mapped_column(Text)  # why this rep
    due_at: Mapped[datetime | None] = mapped_column()  # the rep's SLA lapses
    reminders: Mapped[int] = mapped_column(Integer, default=0)  # sent to the current rep
    reassignments: Mapped[int] = mapped_column(Integer, default=0)
    answered_at: Mapped[datetime | None] = mapped_column()
    answered_by: Mapped[str | None] = mapped_column(String(200))
    answer_reason: Mapped[str | None] = mapped_column(String(40))
    answer_note: Mapped[str | None] = mapped_column(Text)


class CompanyOwner(Base):
    """The rep who owns a company (by its email domain; never a free-mail domain):
    later leads from the same company go to them."""

    __tablename__ = "company_owners"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    rep_id: Mapped[str] = mapped_column(ForeignKey("sales_reps.id"))
    since: Mapped[datetime] = mapped_column(default=utcnow)


class HandoffEvent(Base):
    """What happened to a handoff: assigned, each notification on each channel,
    reminders, reassignments, the answer. `key` makes each one happen once."""

    __tablename__ = "handoff_events"
    __table_args__ = (UniqueConstraint("handoff_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    handoff_id: Mapped[str] = mapped_column(ForeignKey("handoffs.id"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(30))  # assigned notified reminded reassigned answered
    rep_id: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(20))  # email sms webhook crm
    status: Mapped[str] = mapped_column(String(20), default="done")  # sending sent failed ...
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReplyNotice(Base):
    """A lead's reply forwarded to its owner (a sequence's `notify_owner: true`), one row
    per reply and channel: `status` makes each channel's message go once, as a handoff
    notification's does (sending sent skipped retrying failed unknown)."""

    __tablename__ = "reply_notices"
    __table_args__ = (UniqueConstraint("lead_id", "event_id", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(200))  # the reply's response
    sequence_id: Mapped[str | None] = mapped_column(String(100))
    rep_id: Mapped[str | None] = mapped_column(String(64))  # None: nobody to tell
    channel: Mapped[str] = mapped_column(String(20))  # email sms webhook, or "none"
    status: Mapped[str] = mapped_column(String(20), default="sending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutcomeEvent(Base):
    """An opportunity event from the CRM, kept as it came (`payload`): the opportunity's
    state is folded from all of them. `key` stores each one once."""

    __tablename__ = "outcome_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    opportunity_crm_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # created stage_changed reopened won lost
    source: Mapped[str] = mapped_column(String(20))  # crm-webhook api import
    occurred_at: Mapped[datetime] = mapped_column()
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"), index=True)
    lead_email: Mapped[str | None] = mapped_column(String(320), index=True)  # to match later
    payload: Mapped[dict[str, Any]] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


AMOUNT_SCALE = 10_000  # amounts are kept in ten-thousandths: exact, and summed in SQL


class Opportunity(Base):
    """A CRM opportunity as its events leave it (sales/outcome_store.py `refold`)."""

    __tablename__ = "opportunities"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    crm_id: Mapped[str] = mapped_column(String(200), unique=True)
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"), index=True)
    status: Mapped[str] = mapped_column(String(10), index=True)  # open won lost
    crm_stage: Mapped[str | None] = mapped_column(String(100))
    amount_units: Mapped[int | None] = mapped_column(BigInteger)  # amount × AMOUNT_SCALE
    currency: Mapped[str | None] = mapped_column(String(3))
    expected_close_date: Mapped[date | None] = mapped_column(Date)
    close_date: Mapped[date | None] = mapped_column(Date)
    lost_reason: Mapped[str | None] = mapped_column(String(500))
    opened_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime | None] = mapped_column()  # the last event's time in the CRM
    reopened: Mapped[int] = mapped_column(Integer, default=0)
    events: Mapped[int] = mapped_column(Integer, default=0)
    refolded_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def amount(self) -> Decimal | None:
        return None if self.amount_units is None else Decimal(self.amount_units) / AMOUNT_SCALE

    @amount.setter
    def amount(self, value: Decimal | None) -> None:
        self.amount_units = None if value is None else int(value * AMOUNT_SCALE)


class CrmSyncState(Base):
    """Where a CRM connector's incremental pull stands: `cursor` moves only in the
    transaction that stores what was pulled up to it (activities/crm.py)."""

    __tablename__ = "crm_sync_state"

    connector: Mapped[str] = mapped_column(String(40), primary_key=True)  # "hubspot"
    cursor: Mapped[str | None] = mapped_column(String(200))
    pulled: Mapped[int] = mapped_column(Integer, default=0)  # records read, all runs
    last_run_at: Mapped[datetime | None] = mapped_column()
    last_ok_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout so API and worker share it.
    Elsewhere `pool_size` connections are kept (plus 10 more at peaks): a worker passes
    its activity slots, so no activity thread waits for a connection."""
    if url.startswith("sqlite"):
        factory = gated_connection(make_url(url).database)
        connect_args = {"timeout": 30, "check_same_thread": False, "factory": factory}
        engine = create_engine(url, connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            _use_wal(dbapi_connection)
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10)


def begin_writing(session: Session) -> None:
    """Start the session's transaction as a writer. On SQLite, BEGIN IMMEDIATE: the write
    lock first (a transaction that read before writing could not take it once another
    writer had committed), and savepoints then nest inside it (pysqlite would otherwise
    let the first SAVEPOINT open, and its RELEASE commit, the transaction)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _use_wal(dbapi_connection, wait: float = 30.0) -> None:
    """Put the file in WAL mode (kept in the file: once is enough). Switching needs the
    file to itself and SQLite answers "database is locked" at once, without its busy
    timeout, while another process holds a lock (several starting together): retry."""
    deadline = time.monotonic() + wait
    while True:
        try:
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


class User(Base):
    """A console account. `rep_id` links a rep's account to its rep in sales.yaml; the
    password is an argon2 hash (services/accounts.py), never the password itself."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # admin | marketer | rep | viewer
    rep_id: Mapped[str | None] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column()
    last_login_at: Mapped[datetime | None] = mapped_column()


class ConsoleSession(Base):
    """A signed-in browser. The cookie holds the session's secret (signed); only its
    SHA-256 is stored, so a copy of the database signs no one in."""

    __tablename__ = "console_sessions"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class ApiToken(Base):
    """A user's API token with its scopes; only the token's SHA-256 is stored (the token
    is shown once, when it is made)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """Who did what: handoff answers, consent changes, rescores, migrations of leads in
    flight, user changes and sign-ins. Written in the same transaction as what it records."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)  # fmt: skip
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str | None] = mapped_column(String(320))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class PredictiveModelRecord(Base):
    """A trained predictive model (`nurture train`): the fitted model itself and what says
    what it is (training window, features, metrics on the test period, library versions,
    the feature distributions drift is measured against). Every worker loads the one whose
    status is `active`; at most one is."""

    __tablename__ = "predictive_models"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # logistic | boosted
    status: Mapped[str] = mapped_column(String(20), index=True)  # candidate active retired refused
    horizon_days: Mapped[int] = mapped_column(Integer)
    trained_from: Mapped[datetime] = mapped_column()
    trained_to: Mapped[datetime] = mapped_column()
    tested_to: Mapped[datetime] = mapped_column()
    # What it is and how well it did: features, metrics (model and rules), versions,
    # refusal reasons and the training reference for drift (PredictiveModel.describe()).
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(320))
    activated_at: Mapped[datetime | None] = mapped_column()
    retired_at: Mapped[datetime | None] = mapped_column()


class ExperimentRecord(Base):
    """An experiment as it was when its first lead was assigned: a split step's, or a
    segment's holdout (`holdout:<segment>`). `arms` keeps each arm's weight, holdout flag,
    next step and the fingerprint of its own steps, so `validate` can tell what changed."""

    __tablename__ = "experiments"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # split | holdout
    sequence_id: Mapped[str] = mapped_column(String(100))
    step_id: Mapped[str | None] = mapped_column(String(100))
    segment: Mapped[str | None] = mapped_column(String(100))
    control: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(20))
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column()  # the first assignment (workflow time)


class ExperimentAssignment(Base):
    """The arm a lead is in, once and for good: (experiment, lead) is the key, so a retry,
    a replay or a second visit finds the arm already chosen. `assigned_at` is the
    workflow's time; `recorded_at` the database's, which the results compare with the
    other rows' times (all stamped by the database's clock)."""

    __tablename__ = "experiment_assignments"
    __table_args__ = (Index("ix_experiment_assignments_lead_id", "lead_id"),)

    experiment: Mapped[str] = mapped_column(String(200), primary_key=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), primary_key=True)
    arm: Mapped[str] = mapped_column(String(100))
    holdout: Mapped[bool] = mapped_column(default=False)
    enrollment_id: Mapped[str | None] = mapped_column(String(64))
    assigned_at: Mapped[datetime] = mapped_column()
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookRefusal(Base):
    """Provider and CRM webhook requests refused (a bad signature, a secret not set, a body
    that cannot be used), counted per UTC day, source and reason: nothing of a refused
    request is stored, so this is what says one came (the console's Operations page)."""

    __tablename__ = "webhook_refusals"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    source: Mapped[str] = mapped_column(String(20), primary_key=True)  # sendgrid twilio crm ...
    reason: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[int] = mapped_column(Integer)  # the answer: 400, 403...
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(default=utcnow)


# The console's reads (migration 0011): the live feed's newest sends, SQL entries over a
# range (the overview's charts), and leads by creation (the funnel of a range).
Index("ix_messages_sent_at", Message.sent_at)
Index("ix_stage_changes_to_stage_created_at", StageChange.to_stage, StageChange.created_at)
Index("ix_leads_created_at", Lead.created_at)

# The console's queues and filters (migration 0012): a rep's open handoffs soonest due
# first and the recently answered ones; a lead's latest enrollment, and a sequence's leads;
# emails by prefix (PostgreSQL's default collation cannot serve LIKE 'ab%' from a plain
# index).
Index("ix_handoffs_status_rep_id_due_at", Handoff.status, Handoff.rep_id, Handoff.due_at)
Index("ix_handoffs_rep_id_answered_at", Handoff.rep_id, Handoff.answered_at)
Index("ix_handoffs_answered_at", Handoff.answered_at)
Index("ix_enrollments_lead_id_started_at", Enrollment.lead_id, Enrollment.started_at)
Index("ix_enrollments_sequence_id_lead_id_started_at", Enrollment.sequence_id,
      Enrollment.lead_id, Enrollment.started_at)  # fmt: skip
Index("ix_leads_email_prefix", Lead.email, postgresql_ops={"email": "text_pattern_ops"})


class Visitor(Base):
    """A website visitor (the tracking snippet's first-party cookie, docs/tracking.md)
    joined to a lead by a form post or a tracked link. A later join moves it to that lead:
    its later views are that lead's; earlier ones stay with the lead they went to."""

    __tablename__ = "visitors"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"), index=True)
    joined_by: Mapped[str] = mapped_column(String(120))  # form:<id> | link
    joined_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class VisitorView(Base):
    """A page view of a visitor not joined to a lead yet: kept until a join makes it the
    lead's `page.view` response (event ID `view:<id>`), then deleted; one never joined
    is deleted after NURTURE_TRACKING_RETENTION_DAYS."""

    __tablename__ = "visitor_views"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    visitor_id: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    referrer: Mapped[str | None] = mapped_column(Text)
    utm: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the utm_* of its URL
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
