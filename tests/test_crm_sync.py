"""The HubSpot connector against a local imitation of HubSpot's API that records every
call (testkit/hubspot.py), through the official client: the exact calls, pages and the
cursor, a 429 or an outage mid-pull (nothing lost, nothing doubled), a deal that changed
stage twice between pulls, a reopened deal, a deal for a lead not here yet; the
workflow and its Schedule on a real Temporal server; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from temporalio.client import ScheduleOverlapPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from models.db import CrmSyncState, Lead, Opportunity, OutcomeEvent, Response
from models.workflow_io import CrmSyncRequest
from sales.hubspot import parse_time
from sales.outcome_store import match_waiting_outcomes
from services.crm_sync import SCHEDULE_ID, ensure_schedule, sync_now, sync_status
from services.runtime import build_crm_activities
from testkit.hubspot import ASSOCIATIONS, CONTACTS, SEARCH, START, HubSpotServer
from workflows.crm_sync import CrmSyncWorkflow


@pytest.fixture
def hubspot():
    server = HubSpotServer()
    yield server
    server.close()


@pytest.fixture
def crm_settings(settings, hubspot):
    return settings.model_copy(update={"hubspot_access_token": _secret(hubspot.token),
                                       "hubspot_host": hubspot.url})  # fmt: skip


def _secret(value: str):
    from pydantic import SecretStr

    return SecretStr(value)


def pull(crm_settings, database, pages: int = 20):
    activities = build_crm_activities(crm_settings, database)
    return ActivityEnvironment().run(activities.sync_hubspot_deals, CrmSyncRequest(max_pages=pages))


def add_lead(database, email: str) -> str:
    with database.sessions.begin() as session:
        lead = Lead(email=email)
        session.add(lead)
        session.flush()
        return lead.id


def opportunities(database) -> dict[str, Opportunity]:
    with database.sessions() as session:
        return {o.crm_id: o for o in session.scalars(select(Opportunity))}


def count(database, model) -> int:
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_a_pull_stores_each_deal_with_the_exact_calls(crm_settings, database, hubspot):
    ada = add_lead(database, "ada@example.com")
    hubspot.contact("501", "Ada@Example.com")
    hubspot.deal("1", "501", amount="1200.5", closedate="2026-12-20T00:00:00.000Z")
    hubspot.deal("2", "501", stage="closedwon", amount="900", deal_currency_code="EUR")
    hubspot.deal("3", "501", stage="closedlost", amount="50", closed_lost_reason="budget")
    hubspot.deal("4")  # no contact: no lead to give it to

    progress = pull(crm_settings, database)

    assert (progress.deals, progress.accepted, progress.skipped) == (4, 6, 1)
    found = opportunities(database)
    assert {crm_id: (o.status, o.amount, o.currency, o.lead_id) for crm_id, o in found.items()} == {
        "hubspot:1": ("open", 1200.5, "USD", ada),
        "hubspot:2": ("won", 900, "EUR", ada),
        "hubspot:3": ("lost", 50, "USD", ada),
    }
    assert str(found["hubspot:1"].expected_close_date) == "2026-12-20"
    assert found["hubspot:3"].lost_reason == "budget"
    (search,) = hubspot.calls(SEARCH)
    assert search.headers["Authorization"] == f"Bearer {hubspot.token}"
    body = search.json()
    assert body["filterGroups"] == [{"filters": [
        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": "0"}]}]  # fmt: skip
    assert body["sorts"] == [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}]
    assert body["limit"] == 100 and "after" not in body
    assert {"dealstage", "amount", "hs_is_closed_won", "closed_lost_reason"} <= set(
        body["properties"]
    )
    assert hubspot.calls(ASSOCIATIONS)[0].json() == {"inputs": [{"id": i} for i in "1234"]}
    contacts = hubspot.calls(CONTACTS)[0].json()
    assert (contacts["inputs"], contacts["properties"]) == ([{"id": "501"}], ["email"])
    news = _news(database, ada)
    assert sorted(news) == ["crm.opportunity_lost", "crm.opportunity_open", "crm.opportunity_won"]


def _news(database, lead_id: str) -> list[str]:
    with database.sessions() as session:
        return list(session.scalars(select(Response.type).where(Response.lead_id == lead_id)))


def test_pages_move_the_cursor_and_the_next_pull_starts_before_it(crm_settings, database, hubspot):
    add_lead(database, "ada@example.com")
    hubspot.contact("501", "ada@example.com")
    for deal in range(250):
        hubspot.deal(str(deal), "501")
    first = pull(crm_settings, database)
    assert (first.pages, first.deals, first.accepted) == (3, 250, 500)
    assert [call.json().get("after") for call in hubspot.calls(SEARCH)] == [None, "100", "200"]
    last = START + timedelta(seconds=250)
    assert parse_time(sync_status(database.sessions)["cursor"]) == last

    again = pull(crm_settings, database)  # the overlap: five minutes back, stored before
    since = int((last - timedelta(minutes=5)).timestamp() * 1000)
    assert hubspot.calls(SEARCH)[-1].json()["filterGroups"][0]["filters"][0]["value"] == str(since)
    assert (again.accepted, again.duplicates) == (0, 2 * again.deals)
    assert count(database, OutcomeEvent) == 500


@pytest.mark.parametrize("failing", [SEARCH, CONTACTS])
def test_a_429_mid_pull_loses_nothing_and_doubles_nothing(crm_settings, database, hubspot, failing):
    add_lead(database, "ada@example.com")
    hubspot.contact("501", "ada@example.com")
    for deal in range(250):
        hubspot.deal(str(deal), "501", amount="10")
    pull_first_page_then_fail(hubspot, failing)

    with pytest.raises(ApplicationError) as raised:
        pull(crm_settings, database)
    assert raised.value.type == "HubSpotUnavailable" and not raised.value.non_retryable
    assert raised.value.next_retry_delay == timedelta(seconds=7)  # HubSpot's Retry-After
    assert len(opportunities(database)) == 100  # the first page, with its cursor
    state = sync_status(database.sessions)
    assert parse_time(state["cursor"]) == START + timedelta(seconds=100)
    assert "429" in state["last_error"]

    retried = pull(crm_settings, database)  # Temporal's retry
    assert len(opportunities(database)) == 250 and count(database, OutcomeEvent) == 500
    assert retried.accepted == 300 and sync_status(database.sessions)["last_error"] is None


def pull_first_page_then_fail(hubspot: HubSpotServer, failing: str, wait: str = "7") -> None:
    """The first page goes through; the next call to `failing` answers 429 (Retry-After
    `wait` seconds)."""
    original = hubspot._answer

    def answer(request):
        if request.path == failing and len(hubspot.calls(failing)) == 2 and not hubspot.failures:
            hubspot.fail_next(429, failing, retry_after=wait)
        return original(request)

    hubspot._answer = answer


def test_a_deal_that_changed_stage_twice_between_pulls(crm_settings, database, hubspot):
    ada = add_lead(database, "ada@example.com")
    hubspot.contact("501", "ada@example.com")
    hubspot.deal("1", "501", stage="appointmentscheduled", amount="1000")
    pull(crm_settings, database)
    hubspot.deal("1", stage="contractsent", amount="1500")
    hubspot.deal("1", stage="closedwon", amount="1400")
    second = pull(crm_settings, database)

    assert second.accepted == 1  # one event for the state now: won
    won = opportunities(database)["hubspot:1"]
    assert (won.status, won.amount, won.crm_stage) == ("won", 1400, "closedwon")
    assert won.closed_at.replace(tzinfo=None) == (START + timedelta(seconds=3)).replace(tzinfo=None)
    with database.sessions() as session:
        kinds = session.scalars(select(OutcomeEvent.kind).order_by(OutcomeEvent.occurred_at))
        assert list(kinds) == ["created", "stage_changed", "won"]
    assert sorted(_news(database, ada)) == ["crm.opportunity_open", "crm.opportunity_won"]


def test_a_won_deal_reopened_in_the_crm_is_recorded(crm_settings, database, hubspot):
    add_lead(database, "ada@example.com")
    hubspot.contact("501", "ada@example.com")
    hubspot.deal("1", "501", stage="closedwon", amount="1000")
    pull(crm_settings, database)
    hubspot.deal("1", stage="contractsent")
    pull(crm_settings, database)
    reopened = opportunities(database)["hubspot:1"]
    assert (reopened.status, reopened.reopened, reopened.crm_stage) == ("open", 1, "contractsent")
    hubspot.deal("1", stage="closedlost", closed_lost_reason="timing")
    pull(crm_settings, database)
    lost = opportunities(database)["hubspot:1"]
    assert (lost.status, lost.reopened, lost.lost_reason) == ("lost", 1, "timing")


def test_a_deal_for_a_lead_not_here_yet_waits_for_it(crm_settings, database, hubspot):
    hubspot.contact("501", "later@example.com")
    hubspot.deal("1", "501", stage="closedwon", amount="10")
    assert pull(crm_settings, database).waiting == 2
    lead_id = add_lead(database, "later@example.com")
    with database.sessions.begin() as session:
        assert match_waiting_outcomes(session, session.get(Lead, lead_id)) == 2
    assert opportunities(database)["hubspot:1"].lead_id == lead_id


def test_a_refused_token_is_not_retried_and_stores_nothing(crm_settings, database, hubspot):
    hubspot.deal("1")
    wrong = crm_settings.model_copy(update={"hubspot_access_token": _secret("pat-revoked")})
    with pytest.raises(ApplicationError) as raised:
        pull(wrong, database)
    assert raised.value.type == "HubSpotRefused" and raised.value.non_retryable
    assert "401" in str(raised.value) and "pat-revoked" not in str(raised.value)
    assert count(database, OutcomeEvent) == 0 and sync_status(database.sessions)["cursor"] is None
    none = crm_settings.model_copy(update={"hubspot_access_token": None})
    with pytest.raises(ApplicationError, match="HUBSPOT_ACCESS_TOKEN is not set"):
        pull(none, database)


async def test_the_workflow_retries_a_429_and_adds_up_its_calls(
    crm_settings, database, hubspot, dev_server_env
):
    add_lead(database, "ada@example.com")
    hubspot.contact("501", "ada@example.com")
    for deal in range(150):
        hubspot.deal(str(deal), "501")
    pull_first_page_then_fail(hubspot, SEARCH, wait="1")
    activities = build_crm_activities(crm_settings, database)
    settings = crm_settings.model_copy(update={"task_queue": f"crm-{uuid.uuid4().hex[:8]}"})
    async with Worker(dev_server_env.client, task_queue=settings.task_queue,
                      workflows=[CrmSyncWorkflow], activities=[activities.sync_hubspot_deals],
                      activity_executor=_executor()):  # fmt: skip
        total = await sync_now(dev_server_env.client, settings)
    # The retry reads from the cursor (less the overlap): page 1's events, stored by the
    # failed attempt, are found stored; the figures are the calls that returned.
    assert (total.deals, total.accepted, total.duplicates, total.more) == (150, 100, 200, False)
    assert len(hubspot.calls(SEARCH)) == 4  # page 1, the 429, then pages 1 and 2
    assert count(database, OutcomeEvent) == 300


def _executor():
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(max_workers=2)


async def test_the_worker_keeps_the_schedule_to_the_settings(crm_settings, dev_server_env):
    client = dev_server_env.client
    assert not await ensure_schedule(client, crm_settings.model_copy(
        update={"hubspot_access_token": None}))  # fmt: skip
    try:
        assert await ensure_schedule(client, crm_settings)
        described = await client.get_schedule_handle(SCHEDULE_ID).describe()
        assert described.schedule.spec.intervals[0].every == timedelta(minutes=15)
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert described.schedule.action.workflow == "CrmSyncWorkflow"
        assert described.schedule.action.task_queue == crm_settings.task_queue

        assert await ensure_schedule(
            client, crm_settings.model_copy(update={"crm_sync_minutes": 5})
        )
        described = await client.get_schedule_handle(SCHEDULE_ID).describe()
        assert described.schedule.spec.intervals[0].every == timedelta(minutes=5)
    finally:
        await client.get_schedule_handle(SCHEDULE_ID).delete()


def test_crm_status_command(crm_settings, database, hubspot, monkeypatch, tmp_path):
    from cli.app import app

    add_lead(database, "ada@example.com")
    hubspot.contact("501", "ada@example.com")
    hubspot.deal("1", "501")
    pull(crm_settings, database)
    monkeypatch.setenv("DATABASE_URL", crm_settings.effective_database_url)
    monkeypatch.setenv("NURTURE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HUBSPOT_ACCESS_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["crm", "status", "--json"])
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    assert (state["pulled"], state["configured"], state["last_error"]) == (1, False, None)
    assert parse_time(state["cursor"]) == START + timedelta(seconds=1)
    usage = CliRunner().invoke(app, ["crm", "sync", "--now"])
    assert usage.exit_code == 2 and "HUBSPOT_ACCESS_TOKEN is not set" in usage.stderr
    with database.sessions() as session:
        assert session.get(CrmSyncState, "hubspot").pulled == 1


def test_a_deal_s_fields_become_the_event_s():
    from sales.hubspot import Deal, deal_events

    def event(stored=None, **props):
        base = {"hs_lastmodifieddate": "2026-11-02T10:00:00.000Z", "createdate": "1761991200000"}
        return deal_events(Deal("7", base | props), "a@example.com", stored, "GBP")[-1]

    free = event(amount="0", dealstage="qualifiedtobuy", closedate="2026-12-01T00:00:00Z")
    assert (free.kind, free.amount, free.currency, str(free.expected_close_date)) == (
        "stage_changed", 0, "GBP", "2026-12-01")  # fmt: skip
    assert event(amount="12.345678").amount == Decimal("12.3457")
    assert event(amount="n/a").amount is None and event(amount="-5").currency is None
    assert event(stored="lost").kind == "reopened"
    won = event(hs_is_closed="true", hs_is_closed_won="true", amount="9", closedate="")
    assert (won.kind, str(won.close_date)) == ("won", "2026-11-02")
    assert won.event_id == "hubspot:7:1793613600000:won"
    created = deal_events(
        Deal("7", {"hs_lastmodifieddate": "2026-11-02T10:00:00Z", "createdate": "1761991200000"}),
        "a@b.co",
        None,
        "GBP",
    )[0]
    assert (created.kind, created.occurred_at.isoformat()) == (
        "created",
        "2025-11-01T10:00:00+00:00",
    )


def test_sync_now_with_no_worker_gives_up_waiting_and_says_so(
    crm_settings, dev_server_env, monkeypatch, tmp_path
):
    from temporalio.client import Client

    from cli.app import app

    address = dev_server_env.client.service_client.config.target_host
    queue = f"no-worker-{uuid.uuid4().hex[:8]}"
    for name, value in {"DATABASE_URL": crm_settings.effective_database_url,
                        "NURTURE_STATE_DIR": str(tmp_path / "state"),
                        "TEMPORAL_ADDRESS": address, "NURTURE_TASK_QUEUE": queue,
                        "HUBSPOT_ACCESS_TOKEN": "pat-test-token"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    try:
        result = CliRunner().invoke(app, ["crm", "sync", "--now", "--timeout", "1"])
        assert result.exit_code == 1, result.output
        assert "did not end within 1 s" in result.stderr and "nurture crm status" in result.stderr
    finally:  # the run waits for a worker that never comes: end it for the next tests

        async def end() -> None:
            client = await Client.connect(address)
            await client.get_workflow_handle("crm-sync-hubspot-now").terminate("test over")

        asyncio.run(end())
