"""Stored responses reach their workflows once: a lead's in order, many leads at once,
and a delivery that outlasts the request's budget is finished, not cut off (a signal
Temporal took but that was never marked would be sent again by the relay)."""

from __future__ import annotations

import asyncio
import threading
from functools import partial

from sqlalchemy import select
from temporalio.api.enums.v1 import EventType

from models.db import Response
from models.workflow_io import lead_workflow_id
from services.intake import INLINE_BUDGET, MAX_IN_FLIGHT, DeliveryMarks, EventIn, LeadIn
from tests.harness import eventually, running_harness


async def signalled(client, lead_id: str) -> list[str]:
    """The event IDs the lead's workflow was given, in the order Temporal took them."""
    history = await client.get_workflow_handle(lead_workflow_id(lead_id)).fetch_history()
    converter = client.data_converter
    taken = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attributes = event.workflow_execution_signaled_event_attributes
            if attributes.signal_name in ("respond", "respond_all"):
                (given,) = await converter.decode(list(attributes.input.payloads))
                events = given if attributes.signal_name == "respond_all" else [given]
                taken += [event["event_id"] for event in events]
    return taken


async def in_history(client, lead_id: str, expected: list[str]) -> list[str] | None:
    """The signalled event IDs once there are as many as expected (None before)."""
    taken = await signalled(client, lead_id)
    return taken if len(taken) >= len(expected) else None


def undelivered(database) -> list[str]:
    with database.sessions() as session:
        return list(session.scalars(select(Response.event_id).where(
            Response.delivered_at.is_(None))))  # fmt: skip


async def test_a_delivery_past_its_budget_finishes_and_is_marked_once(
    dev_server_env, sqlite_settings, fixture_definitions
):
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as h:
        leads = [await h.enroll(email=f"lead{n}@example.com", sequence="month")
                 for n in range(3)]  # fmt: skip
        events = [EventIn(lead_id=lead_id, type="page.view", event_id=f"{lead_id}-{n}")
                  for n in range(4) for lead_id in leads]  # fmt: skip
        rows = h.intake.store_events(events).stored

        # No time at all: the request goes on at once; its delivery does not stop there.
        assert await h.intake.deliver_now(rows, budget=0) == 0
        await h.intake.finish_deliveries(timeout=30)

        assert undelivered(h.database) == []
        for lead_id in leads:  # each event once, in the lead's own order (signals taken
            # while a workflow task runs are written to the history when it completes)
            expected = [f"{lead_id}-{n}" for n in range(4)]
            got = await eventually(partial(in_history, h.env.client, lead_id, expected))
            assert got == expected


async def test_a_response_for_a_lead_with_no_running_workflow_starts_one(
    dev_server_env, sqlite_settings, fixture_definitions
):
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as h:
        lead, _ = h.intake.upsert_lead(LeadIn(email="late@example.com"))  # never enrolled
        rows = h.intake.store_events([EventIn(lead_id=lead.id, type="page.view",
                                              event_id="first")]).stored  # fmt: skip
        assert await h.intake.deliver(rows) == 1
        h.started.append(lead_workflow_id(lead.id))
        assert await signalled(h.env.client, lead.id) == ["first"]
        assert undelivered(h.database) == []


async def test_a_burst_past_the_in_flight_cap_waits_in_the_inbox_for_the_relay(
    dev_server_env, sqlite_settings, fixture_definitions
):
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as h:
        leads = [await h.enroll(email=f"busy{n}@example.com", sequence="month")
                 for n in range(4)]  # fmt: skip
        count = MAX_IN_FLIGHT // len(leads) + 1  # one request's worth, over the cap
        events = [EventIn(lead_id=lead_id, type="email.open", event_id=f"{lead_id}-{n}")
                  for n in range(count) for lead_id in leads]  # fmt: skip
        rows = h.intake.store_events(events).stored

        assert await h.intake.deliver_now(rows) == 0  # not one signal: all left waiting
        assert len(undelivered(h.database)) == len(rows)

        await asyncio.sleep(INLINE_BUDGET + 1.5)  # the relay takes what has settled
        while await h.intake.redeliver():
            pass
        assert undelivered(h.database) == []
        for lead_id in leads:  # every one once, in order
            expected = [f"{lead_id}-{n}" for n in range(count)]
            got = await eventually(partial(in_history, h.env.client, lead_id, expected))
            assert got == expected


async def test_marks_that_arrive_while_one_is_written_share_the_next_write():
    """Each delivery's accepted responses are marked, many deliveries' in one write."""
    writes: list[list[str]] = []
    first_written = threading.Event()

    def write(ids: list[str]) -> None:
        writes.append(ids)
        if len(writes) == 1:
            first_written.wait(5)  # the first write is slow: the others queue meanwhile
        if "bad" in ids:
            raise RuntimeError("the database went away")

    marks = DeliveryMarks(write)
    first = asyncio.create_task(marks.mark(["a"]))
    await asyncio.sleep(0.05)
    later = [asyncio.create_task(marks.mark([name])) for name in ("b", "c", "d")]
    await asyncio.sleep(0.05)
    first_written.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert writes == [["a"], ["b", "c", "d"]]

    failing = [asyncio.create_task(marks.mark([name])) for name in ("bad", "e")]
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [RuntimeError, RuntimeError]
    await marks.mark(["f"])  # the next write is not held up by the failed one
    assert writes[-1] == ["f"]
