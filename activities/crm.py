"""The CRM connector's pull: HubSpot deals modified since the stored cursor, stored as
outcome events a page at a time.

Each page's events and the cursor past them are one transaction, so a 429, an outage
or a crash loses nothing (the retry reads from the cursor again) and doubles nothing
(each event has its key; a page read twice finds its events stored). The cursor is the
last modified time stored; a pull starts a few minutes before it, because HubSpot's
search index lags its writes.

The news for the leads' workflows (a won deal, a lost one) waits in the inbox; the API
process relays it, as it does any response not delivered at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.db import CrmSyncState, utcnow
from models.workflow_io import CrmSyncProgress, CrmSyncRequest
from sales.hubspot import (
    PAGE,
    SEARCH_LIMIT,
    DealPage,
    HubSpotDeals,
    HubSpotRefused,
    HubSpotUnavailable,
    deal_events,
    parse_time,
)
from sales.outcome_store import store_outcomes, stored_statuses

log = logging.getLogger("nurture.crm")
CONNECTOR = "hubspot"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CrmActivities:
    def __init__(
        self,
        sessions: sessionmaker,
        hubspot_token: str | None,
        hubspot_host: str,
        currency: str = "USD",
        overlap: timedelta = timedelta(minutes=5),
    ):
        self.sessions, self.token, self.host = sessions, hubspot_token, hubspot_host
        self.currency, self.overlap = currency, overlap

    @activity.defn
    def sync_hubspot_deals(self, request: CrmSyncRequest) -> CrmSyncProgress:
        """Up to `request.max_pages` pages of deals, from the cursor on."""
        if not self.token:
            raise ApplicationError("HUBSPOT_ACCESS_TOKEN is not set", non_retryable=True,
                                   type="HubSpotNotConfigured")  # fmt: skip
        deals = HubSpotDeals(self.token, self.host)
        cursor = self._cursor()
        since, after, read = (cursor - self.overlap if cursor else EPOCH), None, 0
        progress = CrmSyncProgress(cursor=cursor.isoformat() if cursor else None)
        while progress.pages < request.max_pages:
            page = self._guarded(deals.modified_since, since, after)
            progress = progress.add(self._store_page(deals, page))
            activity.heartbeat(progress.cursor)
            read += len(page.deals)
            if page.after is None:
                self._finished(None)
                return progress
            if read + PAGE > SEARCH_LIMIT:  # the search stops at 10,000: a new query
                since, after, read = parse_time(progress.cursor), None, 0
            else:
                after = page.after
        return progress.model_copy(update={"more": True})

    def _store_page(self, deals: HubSpotDeals, page: DealPage) -> CrmSyncProgress:
        if not page.deals:
            return CrmSyncProgress(pages=1)
        emails = self._guarded(deals.contact_emails, [deal.id for deal in page.deals])
        with self.sessions() as session:
            statuses = stored_statuses(session, [f"hubspot:{deal.id}" for deal in page.deals])
        events, skipped = [], 0
        for deal in page.deals:
            try:
                events += deal_events(deal, emails[deal.id], statuses.get(f"hubspot:{deal.id}"),
                                      self.currency)  # fmt: skip
            except (KeyError, ValueError, ValidationError) as exc:  # no contact, a bad field
                skipped += 1
                log.warning("hubspot deal %s skipped: %s", deal.id, _reason(exc))
        last = max(deal.modified for deal in page.deals)
        advance = lambda session: _advance(session, last, len(page.deals))  # noqa: E731
        result = store_outcomes(self.sessions, events, CONNECTOR, also=advance)
        return CrmSyncProgress(
            pages=1, deals=len(page.deals), accepted=result.accepted,
            duplicates=result.duplicates, waiting=result.waiting, skipped=skipped,
            cursor=last.isoformat(),
        )  # fmt: skip

    def _guarded(self, call, *args):
        """HubSpot's answer, or the error recorded and raised for Temporal: try again
        later (after HubSpot's Retry-After when it gives one), or give up."""
        try:
            return call(*args)
        except HubSpotUnavailable as exc:
            self._finished(str(exc))
            delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
            raise ApplicationError(str(exc), type="HubSpotUnavailable",
                                   next_retry_delay=delay) from None  # fmt: skip
        except HubSpotRefused as exc:
            self._finished(str(exc))
            raise ApplicationError(str(exc), type="HubSpotRefused", non_retryable=True) from None

    def _cursor(self) -> datetime | None:
        with self.sessions() as session:
            state = session.get(CrmSyncState, CONNECTOR)
            return parse_time(state.cursor) if state and state.cursor else None

    def _finished(self, error: str | None) -> None:
        """A pull's end: when it ran, and its error or that it went through."""
        with self.sessions.begin() as session:
            state = _state(session)
            state.last_run_at, state.last_error = utcnow(), error
            if error is None:
                state.last_ok_at = state.last_run_at


def _state(session: Session) -> CrmSyncState:
    state = session.get(CrmSyncState, CONNECTOR, with_for_update=True)
    if state is None:
        state = CrmSyncState(connector=CONNECTOR, pulled=0)
        session.add(state)
    return state


def _advance(session: Session, last: datetime, read: int) -> None:
    """The cursor moves forward only (two pulls at once: the later time stays)."""
    state = _state(session)
    if state.cursor is None or parse_time(state.cursor) < last:
        state.cursor = last.isoformat()
    state.pulled += read
    state.last_run_at = utcnow()


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return "no associated contact with an email"
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
