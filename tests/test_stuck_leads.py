"""Oversized event data cannot wedge a lead, and a lead that is wedged anyway is seen.

Event bodies stay in the database: `POST /events` caps `data` and `POST /leads` caps
`attributes`; signals and the state carried to the next run hold event IDs and types,
never bodies. A workflow whose task fails on every attempt (here: a lead started with a
huge profile, as an older intake allowed, whose continue-as-new input is over Temporal's
2 MB) is listed by `nurture doctor`, counted by the `nurture_stuck_leads` gauge and
logged with its lead by the worker's watch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import urllib.request
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from temporalio.api.enums.v1 import EventType
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from typer.testing import CliRunner

from api.app import create_app
from cli.app import app
from models.db import Lead, Response
from models.workflow_io import EnrollRequest, LeadInput, lead_workflow_id
from services.intake import MAX_ATTRIBUTES_BYTES, MAX_EVENT_DATA_BYTES, EventIn, Intake, LeadIn
from services.stuck import explain, stuck_leads, watch
from tests.harness import eventually, running_harness
from workflows.lead import LeadWorkflow

AUTH = {"Authorization": "Bearer test-token"}


def test_oversized_data_and_attributes_are_refused_naming_the_field(
    settings, database, fixture_definitions
):
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    client = TestClient(create_app(intake, settings, relay=False))
    big = {"note": "x" * MAX_EVENT_DATA_BYTES}
    answer = client.post("/events", headers=AUTH, json={
        "email": "big@example.com", "type": "page.view", "data": big})  # fmt: skip
    assert answer.status_code == 422
    (problem,) = answer.json()["problems"]
    assert (
        problem["field"] == "data"
        and f"the limit is {MAX_EVENT_DATA_BYTES:,}" in (problem["message"])
    )
    answer = client.post("/leads", headers=AUTH, json={
        "email": "big@example.com", "attributes": {"a": "y" * MAX_ATTRIBUTES_BYTES}})  # fmt: skip
    assert answer.status_code == 422
    assert [p["field"] for p in answer.json()["problems"]] == ["attributes"]
    with database.sessions() as session:
        assert session.query(Response).count() == 0 and session.query(Lead).count() == 0
    # Just under the limits is fine (multi-byte characters counted as UTF-8 bytes).
    assert EventIn(email="a@example.com", type="page.view", data={"n": "é" * 30_000}).data


async def test_signals_and_the_next_run_carry_no_event_bodies(
    time_skipping_env, sqlite_settings, fixture_definitions
):
    async with running_harness(time_skipping_env, sqlite_settings, fixture_definitions) as h:
        intake = Intake(fixture_definitions, h.database.sessions, h.env.client,
                        sqlite_settings.task_queue, responses_per_run=3)  # fmt: skip
        lead, _ = intake.upsert_lead(LeadIn(email="chatty@example.com"))
        await intake.enroll(lead, "month")
        await h.until(lead.id, lambda s: s.step_id == "pause")
        body = {"url": "/pricing", "form": "z" * 60_000}  # within the cap, kept in the row
        for n in range(4):
            at = await h.env.get_current_time()
            rows = intake.store_events([EventIn(lead_id=lead.id, type="page.view",
                                                event_id=f"big-{n}", occurred_at=at,
                                                data=body)]).stored  # fmt: skip
            await intake.deliver(rows)
            await asyncio.sleep(0.3)
        state = await h.until(lead.id, lambda s: s.responses_handled == 4, timeout=30)
        assert state.step_id == "pause"
        handle = h.env.client.get_workflow_handle(lead_workflow_id(lead.id))
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        assert started.continued_execution_run_id, "the run did not continue as new"
        assert started.input.ByteSize() < 20_000  # the carried state: no 60 KB bodies
        first = h.env.client.get_workflow_handle(
            lead_workflow_id(lead.id), run_id=started.continued_execution_run_id
        )
        signals = [e.workflow_execution_signaled_event_attributes
                   for run in (await first.fetch_history(), history) for e in run.events
                   if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]  # fmt: skip
        responds = [s for s in signals if s.signal_name == "respond"]
        assert len(responds) == 4 and all(s.input.ByteSize() < 1_000 for s in responds)
        with h.database.sessions() as session:  # the bodies are where they belong
            stored = session.query(Response).filter_by(lead_id=lead.id).all()
            assert [len(r.data["form"]) for r in stored] == [60_000] * 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wedge(h, definitions) -> str:
    """A lead whose next run's input is over 2 MB: a huge profile (allowed before the
    attributes cap) in its input, its enrollment and a waiting enrollment."""
    lead, _ = h.intake.upsert_lead(LeadIn(email="wedged@example.com"))
    profile = lead.profile() | {"attributes": {"blob": "w" * 700_000}}

    def enrollment(sequence: str) -> EnrollRequest:
        return EnrollRequest(enrollment_id=f"{lead.id}:{sequence}:v1", profile=profile,
                             sequence=definitions.sequences[sequence])  # fmt: skip

    handle = await h.env.client.start_workflow(
        LeadWorkflow.run, LeadInput(lead_id=lead.id, profile=profile, enroll=enrollment("month"),
                                    responses_per_run=1),
        id=lead_workflow_id(lead.id), task_queue=h.settings.task_queue,
    )  # fmt: skip
    await h.until(lead.id, lambda s: s.step_id == "pause", timeout=30)
    await handle.signal(LeadWorkflow.enroll, enrollment("quick"))  # waits for the month
    await h.respond(lead.id, "page.view", "first")  # scored; then the next run cannot start
    await h.until(lead.id, lambda s: s.responses_handled == 1, timeout=30)
    await asyncio.sleep(1)
    await h.respond(lead.id, "email.click", "never-scored")
    return lead.id


@pytest.mark.devserver
async def test_a_wedged_lead_is_listed_counted_and_logged(
    dev_server_env, sqlite_settings, fixture_definitions, monkeypatch, caplog
):
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as h:
        lead_id = await wedge(h, fixture_definitions)

        def listed():
            with h.database.sessions() as session:
                return stuck_leads(session, older_than=timedelta(0))

        (stuck,) = await eventually(listed, what="the unscored response")
        assert (stuck.lead_id, stuck.unscored) == (lead_id, 1)
        await eventually(lambda: _attempts(h, stuck), timeout=60, what="a failing task")
        assert stuck.last_failure.startswith("PAYLOADS_TOO_LARGE"), stuck.describe()

        # The command, as an operator runs it: exit 1, the lead and Temporal's reason.
        target = dev_server_env.client.service_client.config.target_host
        for name, value in {
            "DATABASE_URL": sqlite_settings.database_url,
            "TEMPORAL_ADDRESS": target,
            "NURTURE_STATE_DIR": str(sqlite_settings.state_dir),
        }.items():
            monkeypatch.setenv(name, value)
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["doctor", "--older-than", "0", "--json"]
        )
        assert result.exit_code == 1, result.output
        (listed_lead,) = json.loads(result.stdout)["stuck"]
        assert listed_lead["lead_id"] == lead_id and listed_lead["workflow_task_attempt"] >= 2
        monkeypatch.setenv("NURTURE_DEFINITIONS", str(sqlite_settings.definitions_dir))
        monkeypatch.setattr("services.stuck.STUCK_AFTER", timedelta(0))
        result = await asyncio.to_thread(CliRunner().invoke, app, ["status", lead_id])
        assert "stuck: 1 response(s) delivered but not scored since" in result.stdout
        assert "its task failing (attempt" in result.stdout, result.stdout

        # The worker's watch: the gauge and a warning naming the lead.
        port = free_port()
        runtime = Runtime(telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}")))  # fmt: skip
        caplog.set_level(logging.WARNING, "services.stuck")
        task = asyncio.create_task(watch(h.database.sessions, h.env.client, runtime.metric_meter,
                                         older_than=timedelta(0)))  # fmt: skip
        await eventually(lambda: "stuck: lead" in caplog.text, what="the log line")
        task.cancel()
        (record,) = [r for r in caplog.records if r.getMessage().startswith("stuck:")]
        assert record.lead_id == lead_id and "workflow task attempt" in record.getMessage()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert re.search(r"^nurture_stuck_leads(\{[^}]*\})? 1$", metrics, re.M), metrics


async def _attempts(h, stuck) -> bool:
    await explain(h.env.client, [stuck])
    return (stuck.workflow_task_attempt or 0) >= 2 and stuck.last_failure is not None
