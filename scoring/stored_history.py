"""`nurture backtest --stored`: the lead history from the database instead of a JSONL
export (scoring/history.py's shape): each lead's profile, creation, delivered responses
and outcome, a customer being a lead with a won opportunity (docs/outcomes.md), dated
by its first win's close."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.db import Lead, Opportunity, Response, as_utc
from models.definitions import RESPONSE_TYPES
from scoring.history import HistoryLead, HistoryResponse, Outcome, Profile

BATCH = 2000  # leads read at a time


def stored_history(sessions: sessionmaker) -> list[HistoryLead]:
    with sessions() as session:
        return list(_leads(session))


def _leads(session: Session) -> Iterator[HistoryLead]:
    won = dict(session.execute(
        select(Opportunity.lead_id, func.min(Opportunity.closed_at))
        .where(Opportunity.status == "won", Opportunity.lead_id.is_not(None))
        .group_by(Opportunity.lead_id)
    ).all())  # fmt: skip
    last = ""
    while True:
        leads = list(session.scalars(select(Lead).where(Lead.id > last).order_by(Lead.id)
                                     .limit(BATCH)))  # fmt: skip
        if not leads:
            return
        responses = _responses(session, [lead.id for lead in leads])
        for lead in leads:
            at = won.get(lead.id)
            yield HistoryLead(
                id=lead.id, profile=Profile(**lead.profile()), created_at=as_utc(lead.created_at),
                responses=responses.get(lead.id, []),
                outcome=Outcome(customer=at is not None, at=as_utc(at) if at else None),
            )  # fmt: skip
        last = leads[-1].id


def _responses(session: Session, lead_ids: list[str]) -> dict[str, list[HistoryResponse]]:
    """The leads' delivered responses of the kinds scoring knows (not the CRM's news)."""
    found: dict[str, list[HistoryResponse]] = defaultdict(list)
    query = select(Response.lead_id, Response.type, Response.occurred_at, Response.data).where(
        Response.lead_id.in_(lead_ids), Response.type.in_(sorted(RESPONSE_TYPES)),
        Response.delivered_at.is_not(None))  # fmt: skip
    for lead_id, kind, at, data in session.execute(query):
        found[lead_id].append(HistoryResponse(type=kind, at=as_utc(at), data=data or {}))
    return found
