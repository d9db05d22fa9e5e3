"""A local HTTP server that answers like HubSpot's CRM API (deals search, deal-to-contact
associations, contacts batch read) and records every request, so the official
`hubspot-api-client` is pointed at it and tests check the exact calls it makes.

Deals and contacts are set with `deal()` and `contact()`; each change of a deal moves
its `hs_lastmodifieddate` forward (or to the time given). `fail_next` scripts errors
(429 with Retry-After, 5xx, 401) for the next requests to a path. The search keeps
HubSpot's rules: filter on a property with GTE, sort by a property, pages of at most
100, and no paging past the 10,000th result (400).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testkit.providers import Recorded

SEARCH = "/crm/v3/objects/deals/search"
ASSOCIATIONS = "/crm/v4/associations/deals/contacts/batch/read"
CONTACTS = "/crm/v3/objects/contacts/batch/read"
WON, LOST = "closedwon", "closedlost"
START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class HubSpotServer:
    token: str = "pat-test-token"
    requests: list[Recorded] = field(default_factory=list)
    deals: dict[str, dict[str, str | None]] = field(default_factory=dict)
    contacts: dict[str, str] = field(default_factory=dict)  # contact ID -> email
    links: dict[str, list[str]] = field(default_factory=dict)  # deal ID -> contact IDs
    failures: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    clock: datetime = START
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorded = Recorded("POST", self.path, dict(self.headers.items()), body)
                with server._lock:
                    server.requests.append(recorded)
                    status, payload, headers = server._answer(recorded)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    # --- the CRM's data -------------------------------------------------------------------

    def contact(self, contact_id: str, email: str) -> None:
        self.contacts[contact_id] = email

    def deal(
        self,
        deal_id: str,
        contact_id: str | None = None,
        at: datetime | None = None,
        stage: str = "appointmentscheduled",
        **properties: str | None,
    ) -> None:
        """Create or change a deal (its stage, amount...), modified at `at` or a second
        after the last change."""  # fmt: skip
        self.clock = at or self.clock + timedelta(seconds=1)
        stamp = _iso(self.clock)
        deal = self.deals.setdefault(deal_id, {"createdate": stamp, "hs_object_id": deal_id})
        deal.update(properties, dealstage=stage, hs_lastmodifieddate=stamp,
                    hs_is_closed=str(stage in (WON, LOST)).lower(),
                    hs_is_closed_won=str(stage == WON).lower(), pipeline="default")  # fmt: skip
        if contact_id is not None:
            self.links[deal_id] = [contact_id]

    def fail_next(self, status: int, path: str = SEARCH, retry_after: str | None = None,
                  times: int = 1) -> None:  # fmt: skip
        headers = {"Retry-After": retry_after} if retry_after else {}
        self.failures.extend([(path, status, headers)] * times)

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the API --------------------------------------------------------------------------

    def _answer(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"status": "error", "category": "INVALID_AUTHENTICATION",
                         "message": "Authentication credentials not found."}, {}  # fmt: skip
        for index, (path, status, headers) in enumerate(self.failures):
            if path == request.path:
                del self.failures[index]
                return status, {"status": "error", "message": f"scripted {status}"}, headers
        routes = {SEARCH: self._search, ASSOCIATIONS: self._associations, CONTACTS: self._contacts}
        if request.path not in routes:
            return 404, {"status": "error", "message": "not found"}, {}
        return routes[request.path](request.json())

    def _search(self, body: dict) -> tuple[int, Any, dict[str, str]]:
        (group,) = body.get("filterGroups") or [{"filters": []}]
        matching = [(deal_id, deal) for deal_id, deal in self.deals.items()
                    if all(_matches(deal, f) for f in group["filters"])]  # fmt: skip
        for sort in reversed(body.get("sorts") or []):
            name = sort["propertyName"]
            matching.sort(key=lambda item, name=name: item[1].get(name) or "",
                          reverse=sort.get("direction") == "DESCENDING")  # fmt: skip
        limit, offset = min(int(body.get("limit") or 10), 100), int(body.get("after") or 0)
        if offset + limit > 10_000:
            return 400, {"status": "error", "category": "VALIDATION_ERROR",
                         "message": "paging beyond 10000 results is not allowed"}, {}  # fmt: skip
        wanted = body.get("properties") or []
        results = [
            _object(deal_id, deal, wanted) for deal_id, deal in matching[offset : offset + limit]
        ]
        payload: dict[str, Any] = {"total": len(matching), "results": results}
        if offset + limit < len(matching):
            after = str(offset + limit)
            payload["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return 200, payload, {}

    def _associations(self, body: dict) -> tuple[int, Any, dict[str, str]]:
        results, errors = [], []
        for item in body["inputs"]:
            contacts = self.links.get(item["id"])
            if contacts:
                results.append({"from": {"id": item["id"]}, "to": [
                    {"toObjectId": int(c), "associationTypes": [
                        {"category": "HUBSPOT_DEFINED", "typeId": 3, "label": None}]}
                    for c in contacts]})  # fmt: skip
            else:
                errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                               "message": f"No contacts are associated with deal {item['id']}.",
                               "context": {"fromObjectId": [item["id"]]}})  # fmt: skip
        return (207 if errors else 200), _batch(results, errors), {}

    def _contacts(self, body: dict) -> tuple[int, Any, dict[str, str]]:
        results = [_object(item["id"], {"email": self.contacts[item["id"]]}, ["email"])
                   for item in body["inputs"] if item["id"] in self.contacts]  # fmt: skip
        return 200, _batch(results, []), {}


def _matches(deal: dict, condition: dict) -> bool:
    value = deal.get(condition["propertyName"])
    if condition["operator"] != "GTE":
        raise ValueError(f"the imitation knows GTE only, not {condition['operator']}")
    if condition["propertyName"] in ("hs_lastmodifieddate", "createdate"):
        return _ms(value) >= int(condition["value"])
    return value is not None and value >= condition["value"]


def _object(object_id: str, properties: dict, wanted: list[str]) -> dict:
    shown = {name: properties.get(name) for name in wanted}
    shown["hs_object_id"] = object_id
    stamp = properties.get("hs_lastmodifieddate") or _iso(START)
    return {"id": object_id, "properties": shown, "createdAt": properties.get("createdate", stamp),
            "updatedAt": stamp, "archived": False}  # fmt: skip


def _batch(results: list, errors: list) -> dict:
    now = _iso(datetime.now(UTC))
    payload = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
    if errors:
        payload["errors"], payload["numErrors"] = errors, len(errors)
    return payload


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _ms(text: str | None) -> int:
    return (
        int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000) if text else 0
    )
