"""End to end on the real Temporal dev server: API, worker and database together.

Runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from devstack.stack import running_stack
from devstack.temporal_server import free_port
from models.db import Enrollment, Handoff, Lead, Message, Response, StageChange
from models.workflow_io import lead_workflow_id
from tests.harness import eventually
from workflows.lead import LeadWorkflow

pytestmark = pytest.mark.devserver


async def _scored(stack, lead_id: str):
    """The lead's workflow state once it has scored something."""
    workflow_id = lead_workflow_id(lead_id)
    state = await stack.intake.client.get_workflow_handle(workflow_id).query(LeadWorkflow.state)
    return state if state.score else None


async def test_lead_nurtured_scored_and_handed_off(dev_server_env, settings):
    target = dev_server_env.client.service_client.config.target_host
    settings = settings.model_copy(update={"temporal_address": target, "api_port": free_port()})
    async with running_stack(settings) as stack:
        auth = {"Authorization": "Bearer test-token"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
            # Authentication and validation come first; nothing is stored for bad requests.
            lead = {"email": "Grace@Example.com", "first_name": "Grace", "phone": "+14155550111",
                    "sequence": "quick"}  # fmt: skip
            assert (await http.post("/leads", json=lead)).status_code == 401
            bad = await http.post(
                "/leads", json={"email": "nope", "timezone": "Mars/Base"}, headers=auth
            )
            assert bad.status_code == 422
            assert {p["field"] for p in bad.json()["problems"]} == {"email", "timezone"}

            created = await http.post("/leads", json=lead, headers=auth)
            assert created.status_code == 201, created.text
            body = created.json()
            lead_id = body["lead_id"]
            assert body["created"] and body["sequence"] == "quick" and body["segment"] == "everyone"
            again = await http.post("/leads", json=lead, headers=auth)  # enrolling twice: no-op
            assert again.json()["created"] is False and again.json()["lead_id"] == lead_id

            def sent():
                with stack.database.sessions() as session:
                    rows = session.scalars(select(Message).where(Message.status == "sent"))
                    return sorted(m.step_id for m in rows)

            assert await eventually(lambda: sent() == ["ping", "welcome"])

            unknown = await http.post(
                "/events", json={"lead_id": "f" * 32, "type": "page.view"}, headers=auth
            )
            assert unknown.status_code == 404 and "f" * 32 in unknown.json()["detail"]
            # An event for an address no lead has yet is kept, and given to the lead later.
            early = await http.post(
                "/events", json={"email": "Early@example.com", "type": "page.view"}, headers=auth
            )
            assert early.status_code == 202 and early.json()["pending"] == 1
            wrong_type = await http.post(
                "/events", json={"lead_id": lead_id, "type": "email.teleport"}, headers=auth
            )
            assert wrong_type.status_code == 422 and "email.teleport" in wrong_type.text

            # The webinar first: it alone makes her sales-qualified, so the handoff stops
            # the sequence whichever workflow task the reply lands in (a reply before it
            # would end the sequence on its own: `on_reply: exit`).
            events = [
                {"email": "grace@example.com", "type": "webinar.attended", "event_id": "web-1"},
                {"lead_id": lead_id, "type": "email.reply", "event_id": "reply-1"},
            ]
            posted = await http.post("/events", json=events, headers=auth)
            assert posted.status_code == 202, posted.text
            assert posted.json()["accepted"] == 2 and posted.json()["duplicates"] == 0
            replay = await http.post("/events", json=events[0], headers=auth)
            assert replay.json() == {
                "accepted": 0,
                "duplicates": 1,
                "pending": 0,
                "delivered": 0,
                "event_ids": [],
            }

            def handed_off():
                with stack.database.sessions() as session:
                    return session.scalars(select(Handoff).where(Handoff.lead_id == lead_id)).all()

            (handoff,) = await eventually(handed_off)
            # Its score is the webinar's 50, or 80 if the reply reached the same workflow task.
            assert handoff.rep_id in ("alice", "bob") and handoff.score in (50, 80)

            def enrollment_status():
                with stack.database.sessions() as session:
                    return session.scalars(select(Enrollment.status)).one()

            # Nurture stops at the handoff: the hour-long wait ends and nothing more is sent.
            assert await eventually(lambda: enrollment_status() == "handed_off")
            assert sent() == ["ping", "welcome"]

            late = await http.post("/leads", json={"email": "early@example.com"}, headers=auth)
            late_id = late.json()["lead_id"]
            state = await eventually(lambda: _scored(stack, late_id))
            assert state.responses_handled == 1 and state.score == 10  # the early page view

        with stack.database.sessions() as session:
            stored = session.get(Lead, lead_id)
            assert (stored.score, stored.stage, stored.owner_rep_id) == (80, "sql", handoff.rep_id)
            assert stored.email == "grace@example.com"
            stages = session.scalars(select(StageChange.to_stage).order_by(StageChange.id)).all()
            assert stages == ["mql", "sql"]
            assert session.scalar(select(func.count()).select_from(Response)) == 3
            early_row = session.scalars(select(Response).where(Response.type == "page.view")).one()
            assert early_row.lead_id == late_id and early_row.lead_email == "early@example.com"
            assert session.scalars(select(Response.duplicates)).all().count(1) == 1
            assert session.scalar(select(func.count()).where(Response.delivered_at.is_(None))) == 0
        assert len(list(settings.outbox_dir.glob("handoff-*.eml"))) == 1
