"""HubSpot deals, read through the official client (`hubspot-api-client`), and the
outcome events a deal's state makes.

A pull asks the deals search for those modified since a time, oldest first, a page of
100 at a time; then each page's deals' contacts (associations v4) and their emails,
which name the lead. HubSpot's search returns at most 10,000 results a query, so a
long catch-up runs as several queries, each from the last modified time stored.

A deal is read as it is now, not as the changes that made it: two stage changes
between pulls are one `stage_changed` (or `won`, `lost`) at the deal's modified time.
`deal_events` makes the events; their IDs are the deal's and its modified time, so
the same state read twice is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from hubspot import HubSpot
from hubspot.crm.associations.v4 import (
    BatchInputPublicFetchAssociationsBatchRequest,
    PublicFetchAssociationsBatchRequest,
)
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsError
from hubspot.crm.contacts import BatchReadInputSimplePublicObjectId, SimplePublicObjectId
from hubspot.crm.contacts.exceptions import ApiException as ContactsError
from hubspot.crm.deals import Filter, FilterGroup, PublicObjectSearchRequest
from hubspot.crm.deals.exceptions import ApiException as DealsError
from urllib3.exceptions import HTTPError

from sales.outcomes import OutcomeEventIn

PAGE = 100  # the search's largest page
SEARCH_LIMIT = 10_000  # results one search query gives, whatever its pages
MODIFIED = "hs_lastmodifieddate"
PROPERTIES = ["dealname", "dealstage", "pipeline", "amount", "deal_currency_code", "closedate",
              "createdate", MODIFIED, "hs_is_closed", "hs_is_closed_won",
              "closed_lost_reason"]  # fmt: skip
API_ERRORS = (DealsError, AssociationsError, ContactsError)


class HubSpotUnavailable(Exception):
    """A 429, a 5xx or no answer: try again later (after `retry_after` seconds if said)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class HubSpotRefused(Exception):
    """A 4xx other than 429 (a bad or revoked token, a missing scope): no retry helps."""


@dataclass(frozen=True)
class Deal:
    id: str
    properties: dict[str, str | None]

    @property
    def modified(self) -> datetime:
        return parse_time(self.properties[MODIFIED])


@dataclass(frozen=True)
class DealPage:
    deals: list[Deal]
    after: str | None  # the next page's token in this query; None: the query is done


class HubSpotDeals:
    """The three calls a pull makes, with HubSpot's errors sorted into try-again
    (`HubSpotUnavailable`) and give-up (`HubSpotRefused`)."""

    def __init__(self, access_token: str, host: str = "https://api.hubapi.com"):
        self.client = HubSpot(access_token=access_token, host=host.rstrip("/"))

    def modified_since(self, since: datetime, after: str | None = None) -> DealPage:
        """A page of the deals modified at or after `since`, oldest first."""
        since_ms = str(int(since.timestamp() * 1000))
        request = PublicObjectSearchRequest(
            filter_groups=[FilterGroup(filters=[
                Filter(property_name=MODIFIED, operator="GTE", value=since_ms)])],
            sorts=[{"propertyName": MODIFIED, "direction": "ASCENDING"}],
            properties=PROPERTIES, limit=PAGE, after=after,
        )  # fmt: skip
        found = _call(
            self.client.crm.deals.search_api.do_search, public_object_search_request=request
        )
        deals = [Deal(str(deal.id), dict(deal.properties or {})) for deal in found.results]
        following = found.paging.next.after if found.paging and found.paging.next else None
        return DealPage(deals, following)

    def contact_emails(self, deal_ids: list[str]) -> dict[str, str]:
        """Each deal's first associated contact's email (deals without one are left out)."""
        if not deal_ids:
            return {}
        inputs = [PublicFetchAssociationsBatchRequest(id=deal_id) for deal_id in deal_ids]
        linked = _call(self.client.crm.associations.v4.batch_api.get_page, "deals", "contacts",
                       BatchInputPublicFetchAssociationsBatchRequest(inputs=inputs))  # fmt: skip
        first_contact = {str(row._from.id): str(row.to[0].to_object_id)
                         for row in linked.results if row.to}  # fmt: skip
        if not first_contact:
            return {}
        ids = sorted(set(first_contact.values()))
        read = BatchReadInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id=contact_id) for contact_id in ids],
            properties=["email"], properties_with_history=[],
        )  # fmt: skip
        contacts = _call(self.client.crm.contacts.batch_api.read, read)
        emails = {str(c.id): (c.properties or {}).get("email") for c in contacts.results}
        return {deal: emails[contact] for deal, contact in first_contact.items()
                if emails.get(contact)}  # fmt: skip


def _call(method, *args, **kwargs):
    try:
        return method(*args, **kwargs)
    except API_ERRORS as exc:
        if exc.status == 429 or (exc.status or 0) >= 500:
            raise HubSpotUnavailable(f"HubSpot answered {exc.status}", _retry_after(exc)) from None
        raise HubSpotRefused(
            f"HubSpot answered {exc.status} {exc.reason}: {_message(exc)}"
        ) from None
    except HTTPError as exc:  # no answer: refused, reset, timed out
        raise HubSpotUnavailable(f"HubSpot did not answer: {exc}") from None


def _retry_after(exc) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _message(exc) -> str:
    body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
    return body[:300]


def parse_time(text: str | None) -> datetime:
    """HubSpot's times: ISO 8601 with a Z, or milliseconds since 1970 as text."""
    if text is None or text == "":
        raise ValueError("no time")
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def deal_events(
    deal: Deal, email: str, stored_status: str | None, currency: str
) -> list[OutcomeEventIn]:
    """The events that bring the stored opportunity (`stored_status`: open, won, lost or
    None for a deal not seen yet) to the deal's state now."""
    props, at = deal.properties, deal.modified
    created = parse_time(props.get("createdate")) if props.get("createdate") else at
    base = {"opportunity_id": f"hubspot:{deal.id}", "email": email}
    events = [OutcomeEventIn(**base, kind="created", occurred_at=min(created, at),
                             event_id=f"hubspot:{deal.id}:created")]  # fmt: skip
    kind = _kind(props, stored_status)
    fields = _fields(props, kind, at, currency)
    stamp = int(at.timestamp() * 1000)
    events.append(OutcomeEventIn(**base, **fields, kind=kind, occurred_at=at,
                                 event_id=f"hubspot:{deal.id}:{stamp}:{kind}"))  # fmt: skip
    return events


def _fields(props: dict[str, str | None], kind: str, at: datetime, currency: str) -> dict:
    amount, stage = _amount(props.get("amount")), props.get("dealstage") or None
    own_currency = props.get("deal_currency_code") or currency
    fields = {"crm_stage": stage[:100] if stage else None, "amount": amount,
              "currency": own_currency if amount is not None else None}  # fmt: skip
    closes = _date(props.get("closedate"))
    if kind in ("won", "lost"):
        fields["close_date"] = closes.date() if closes else at.date()
        if kind == "lost" and props.get("closed_lost_reason"):
            fields["lost_reason"] = props["closed_lost_reason"][:500]
    elif closes:
        fields["expected_close_date"] = closes.date()
    return fields


def _kind(props: dict[str, str | None], stored_status: str | None) -> str:
    if _true(props.get("hs_is_closed_won")):
        return "won"
    if _true(props.get("hs_is_closed")):
        return "lost"
    return "reopened" if stored_status in ("won", "lost") else "stage_changed"


def _true(value: str | None) -> bool:
    return str(value).lower() == "true"


def _amount(text: str | None) -> Decimal | None:
    """HubSpot's amount text; blank, unreadable or negative: no amount."""
    try:
        amount = Decimal(text) if text not in (None, "") else None
    except InvalidOperation:
        return None
    if amount is None or amount < 0 or not amount.is_finite():
        return None
    return amount.quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)


def _date(text: str | None) -> datetime | None:
    try:
        return parse_time(text) if text else None
    except ValueError:
        return None
