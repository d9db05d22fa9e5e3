"""The API's answers to hostile or careless clients (issue 14, point 8, and what the
OpenAPI contract asks): security headers on every page, a lockout after repeated failed
authentications, `bearer` read case-insensitively, a deeply nested body answered 422
(never 500), a 401 with its challenge, 405 naming every method a path takes, and batch
bounds as the schema says them. The real app on a real database (SQLite and PostgreSQL)
and the Temporal dev server's client (no worker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app
from api.security import CONTENT_SECURITY_POLICY
from models.db import Response
from services.intake import Intake
from services.runtime import build_links
from tests.harness import lead_with_handoff

TOKEN = "test-token"  # NURTURE_API_TOKEN of the `settings` fixture
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stack:
    app: object
    sessions: object
    unsubscribe: str  # paths of a lead's unsubscribe link and a handoff's answer page
    handoff_page: str
    handoff_id: str
    handoff_token: str

    def client(self, address: str = "203.0.113.7") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://nurture")


@pytest.fixture
async def stack(settings, database, fixture_definitions, dev_server_env) -> AsyncIterator[Stack]:
    intake = Intake(fixture_definitions, database.sessions, dev_server_env.client,
                    settings.task_queue)  # fmt: skip
    lead, handoff = lead_with_handoff(intake, database)
    links = build_links(settings)
    page = links.handoff_url(handoff.id, "alice")
    yield Stack(
        create_app(intake, settings, relay=False, auth_failure_limit="5/minute"),
        database.sessions,
        unsubscribe="/" + links.unsubscribe_url(lead.id).split("/", 3)[3],
        handoff_page="/" + page.split("/", 3)[3],
        handoff_id=handoff.id,
        handoff_token=page.split("token=")[1],
    )


def assert_secured(answer: httpx.Response) -> None:
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Frame-Options"] == "DENY"


async def test_every_page_and_answer_carries_the_security_headers(stack):
    async with stack.client() as client:
        pages = [
            await client.get(stack.unsubscribe),
            await client.get(stack.unsubscribe[:-3] + "xyz"),  # the "not valid" page
            await client.get(stack.handoff_page),
            await client.get(f"/handoffs/{stack.handoff_id}?token=forged"),
            await client.post(f"/handoffs/{stack.handoff_id}/answer",
                              data={"token": stack.handoff_token, "answer": "accept"}),
            await client.post(stack.unsubscribe),
        ]  # fmt: skip
        assert [page.status_code for page in pages] == [200, 404, 200, 403, 409, 200]
        for page in pages:
            assert page.headers["content-type"].startswith("text/html")
            assert_secured(page)
        for answer in [await client.get("/health"), await client.post("/leads", json={})]:
            assert_secured(answer)  # JSON too: nothing to frame or sniff
        docs = await client.get("/docs")  # FastAPI's page loads its scripts from a CDN
        assert docs.status_code == 200 and "Content-Security-Policy" not in docs.headers


async def test_repeated_authentication_failures_lock_the_client_out(stack):
    async with stack.client("203.0.113.7") as attacker, stack.client("198.51.100.1") as other:
        for guess in range(5):
            wrong = {"Authorization": f"Bearer guess-{guess}"}
            assert (await attacker.post("/leads", json={}, headers=wrong)).status_code == 401
        locked = await attacker.post("/events", json={}, headers={"Authorization": "Bearer x"})
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["Retry-After"]) <= 60
        assert "too many failed authentications" in locked.json()["detail"]
        # Locked out even with the right token, and on every route; /health answers.
        assert (await attacker.post("/leads", json={}, headers=AUTH)).status_code == 429
        assert (await attacker.get(stack.unsubscribe)).status_code == 429
        assert (await attacker.get("/health")).status_code == 200
        # Another client is not: its failures are its own.
        assert (await other.post("/leads", json={}, headers=AUTH)).status_code == 422
        # Signatures and signed links count too (403).
        for _ in range(5):
            forged = await other.get(f"/handoffs/{stack.handoff_id}?token=forged")
            assert forged.status_code == 403
        assert (await other.get(stack.handoff_page)).status_code == 429


@pytest.mark.parametrize("header", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_bearer_is_read_case_insensitively_everywhere(stack, header):
    auth = {"authorization": f"{header} {TOKEN}"}
    async with stack.client() as client:
        lead = await client.post("/leads", json={"email": "new@example.com"}, headers=auth)
        assert lead.status_code == 201, lead.text
        event = {"type": "page.view", "email": "new@example.com"}
        assert (await client.post("/events", json=event, headers=auth)).status_code == 202
        answer = await client.post(f"/handoffs/{'0' * 32}/answer", json={"answer": "accept"},
                                   headers=auth)  # fmt: skip
        assert answer.status_code == 404, answer.text  # past authentication: no such handoff
        wrong = await client.post(f"/handoffs/{'0' * 32}/answer", json={"answer": "accept"},
                                  headers={"authorization": f"{header} nope"})  # fmt: skip
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"


NESTED = [
    b"[" * 100_000,
    b'{"answer": ' + b'{"a": ' * 50_000,
    b'{"note": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # well-formed, 5,000 deep
]


@pytest.mark.parametrize("body", NESTED, ids=["arrays", "objects", "closed"])
@pytest.mark.parametrize("path", ["/leads", "/events", "/handoffs/{id}/answer"])
async def test_a_deeply_nested_body_is_refused_never_a_500(stack, path, body):
    path = path.replace("{id}", stack.handoff_id)
    async with stack.client() as client:
        answer = await client.post(path, content=body, headers=AUTH | {
            "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["detail"]
    if answer.status_code == 422:
        assert answer.json()["problems"], answer.text
    with stack.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Response)) == 0


async def test_inbound_parse_without_credentials_is_challenged(stack):
    async with stack.client() as client:
        answer = await client.post("/webhooks/sendgrid/inbound", data={"from": "a@example.com"})
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic")


async def test_405_names_every_method_of_the_path(stack):
    async with stack.client() as client:
        for method in ("PUT", "DELETE", "OPTIONS"):
            answer = await client.request(method, stack.unsubscribe)
            assert answer.status_code == 405
            assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}
            assert answer.json()["detail"]
        health = await client.post("/health")
        assert health.status_code == 405 and health.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("size", [0, 1001])
async def test_a_batch_of_events_holds_1_to_1000(stack, size):
    events = [{"type": "page.view", "email": "ada@example.com"}] * size
    async with stack.client() as client:
        answer = await client.post("/events", json=events, headers=AUTH)
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["problems"]
    assert "item" in problem["message"], problem  # "at least 1 item", "at most 1000 items"
    with stack.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Response)) == 0
