"""Outcomes in: opportunity events from the CRM webhook, `POST /outcomes` and the CSV
import, each stored once (by its key) and folded with the others of its opportunity
into the opportunity's state (sales/outcomes.py `converge`).

An event names its lead by lead ID, handoff ID or email. One for an email no lead has
yet is kept, and given to the lead when it arrives (`match_waiting_outcomes`, from the
lead's upsert). A lead or handoff ID we do not have is refused: those are ours, so no
lead will ever arrive with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.db import (
    Handoff,
    Lead,
    Opportunity,
    OutcomeEvent,
    Response,
    begin_writing,
    utcnow,
)
from sales.outcomes import OpportunityState, OutcomeEventIn, converge

log = logging.getLogger("nurture.outcomes")
NEWS = "nurture_outcome_news"  # session.info: the responses refolds added


class UnknownReference(LookupError):
    """An event names a lead or handoff ID we do not have (`field` says which)."""

    def __init__(self, index: int, name: str, value: str):
        super().__init__(f"events.{index}.{name}: no {name.removesuffix('_id')} {value!r}")
        self.index, self.name = index, name


@dataclass
class OutcomeResult:
    accepted: int = 0  # events stored now
    duplicates: int = 0  # stored before (or twice in one request): counted, not stored
    waiting: int = 0  # of the accepted, for an email no lead has yet
    opportunities: list[str] = field(default_factory=list)  # the CRM IDs they touched
    news: list[Response] = field(default_factory=list)  # for the leads' workflows


def store_outcomes(
    sessions: sessionmaker,
    events: list[OutcomeEventIn],
    source: str,
    also: Callable[[Session], None] | None = None,
) -> OutcomeResult:
    """Store the events and refold their opportunities, all in one transaction (with
    `also`'s writes, e.g. a connector's cursor): a bad reference stores nothing. Two
    requests carrying the same new event at once: the second finds the first's row on
    its retry."""
    try:
        return _store(sessions, events, source, also)
    except IntegrityError:  # a concurrent request stored one of these keys (or opportunities)
        return _store(sessions, events, source, also)


def _store(
    sessions: sessionmaker, events: list[OutcomeEventIn], source: str, also
) -> OutcomeResult:
    result = OutcomeResult()
    with sessions.begin() as session:
        leads = [_lead_of(session, index, event) for index, event in enumerate(events)]
        begin_writing(session)  # SQLite: the opportunities are read and written under one lock
        keys = [event.key() for event in events]
        stored = set(session.scalars(select(OutcomeEvent.key).where(OutcomeEvent.key.in_(keys))))
        touched: dict[str, None] = {}
        for event, key, lead_id in zip(events, keys, leads, strict=True):
            if key in stored:
                result.duplicates += 1
                continue
            stored.add(key)
            session.add(_event_row(event, key, lead_id, source))
            result.accepted += 1
            result.waiting += lead_id is None
            touched[event.opportunity_id] = None
        session.flush()
        for crm_id in touched:
            refold(session, crm_id)
        result.news = news_of(session)
        if also is not None:
            also(session)
    result.opportunities = list(touched)
    return result


def _lead_of(session: Session, index: int, event: OutcomeEventIn) -> str | None:
    """The lead the event names: by lead ID, else handoff ID, else email (None: no lead
    has that email yet)."""
    if event.lead_id:
        if session.get(Lead, event.lead_id) is None:
            raise UnknownReference(index, "lead_id", event.lead_id)
        return event.lead_id
    if event.handoff_id:
        handoff = session.get(Handoff, event.handoff_id)
        if handoff is None:
            raise UnknownReference(index, "handoff_id", event.handoff_id)
        return handoff.lead_id
    email = str(event.email).lower()
    return session.scalar(select(Lead.id).where(Lead.email == email))


def _event_row(event: OutcomeEventIn, key: str, lead_id: str | None, source: str):
    return OutcomeEvent(
        key=key, opportunity_crm_id=event.opportunity_id, kind=event.kind, source=source,
        occurred_at=event.occurred_at, lead_id=lead_id,
        lead_email=str(event.email).lower() if event.email else None,
        payload=event.model_dump(mode="json"),
    )  # fmt: skip


def refold(session: Session, crm_id: str) -> Opportunity:
    """Recompute the opportunity from all its events (a few per opportunity)."""
    rows = session.scalars(select(OutcomeEvent).where(OutcomeEvent.opportunity_crm_id == crm_id))
    rows = list(rows)
    state = converge(OutcomeEventIn.model_validate(row.payload) for row in rows)
    opportunity = session.scalar(select(Opportunity).where(Opportunity.crm_id == crm_id))
    if opportunity is None:
        opportunity = Opportunity(crm_id=crm_id)
        session.add(opportunity)
    _set_state(opportunity, state)
    opportunity.lead_id = _earliest_lead(rows)
    opportunity.events = len(rows)
    opportunity.refolded_at = utcnow()
    _tell_the_lead(session, opportunity)
    return opportunity


def _tell_the_lead(session: Session, opportunity: Opportunity) -> Response | None:
    """A state the lead's workflow has not heard of becomes a response in the inbox
    (delivered like any other: at once by the API, else by its relay), once per state:
    a repeated or older event that leaves the state as it was tells nothing new."""
    if opportunity.lead_id is None:
        return None
    event_id = f"crm:{opportunity.crm_id}:{opportunity.status}:{opportunity.reopened}"
    if session.scalar(select(Response.id).where(Response.event_id == event_id)) is not None:
        return None
    row = Response(event_id=event_id, lead_id=opportunity.lead_id, source="crm",
                   type=f"crm.opportunity_{opportunity.status}",
                   data={"opportunity_id": opportunity.crm_id, "status": opportunity.status},
                   occurred_at=opportunity.updated_at or utcnow())  # fmt: skip
    session.add(row)
    session.info.setdefault(NEWS, []).append(row)
    return row


def news_of(session: Session) -> list[Response]:
    """The responses this session's refolds added (for the caller to deliver)."""
    return session.info.pop(NEWS, [])


def _set_state(opportunity: Opportunity, state: OpportunityState) -> None:
    for name in ("status", "crm_stage", "amount", "currency", "expected_close_date",
                 "close_date", "lost_reason", "opened_at", "closed_at", "updated_at",
                 "reopened"):  # fmt: skip
        setattr(opportunity, name, getattr(state, name))


def _earliest_lead(rows: list[OutcomeEvent]) -> str | None:
    """The lead of the opportunity's first event that has one: a later event naming
    another lead (a CRM merge) does not move the opportunity."""
    matched = sorted((row for row in rows if row.lead_id), key=lambda row: row.occurred_at)
    return matched[0].lead_id if matched else None


def match_waiting_outcomes(session: Session, lead: Lead) -> int:
    """Give the lead the outcome events that were waiting for its email; returns how many."""
    waiting = list(session.scalars(select(OutcomeEvent).where(
        OutcomeEvent.lead_id.is_(None), OutcomeEvent.lead_email == lead.email)))  # fmt: skip
    for row in waiting:
        row.lead_id = lead.id
    if waiting:
        session.flush()
        for crm_id in {row.opportunity_crm_id for row in waiting}:
            refold(session, crm_id)
        log.info("lead %s: %d outcome event(s) that waited for it", lead.id, len(waiting))
    return len(waiting)


def stored_statuses(session: Session, crm_ids: list[str]) -> dict[str, str]:
    """The status (open, won, lost) of each of these opportunities we have."""
    found = select(Opportunity.crm_id, Opportunity.status).where(Opportunity.crm_id.in_(crm_ids))
    return {crm_id: status for crm_id, status in session.execute(found)}
