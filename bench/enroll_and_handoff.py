"""Benchmark: enroll N leads on the Temporal dev server and push half of them to SQL.

Prints the enrollment rate, how long until every welcome email is sent, and the
latency from posting the SQL-crossing response to the handoff row (p50/p99/max).

    .venv/bin/python -m bench.enroll_and_handoff --leads 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.common import count_rows
from models.db import Handoff, Message
from services.intake import EventIn, LeadIn
from testkit.stack import local_stack, temporal_dev_server


async def main(leads: int) -> None:
    async with (
        temporal_dev_server() as env,
        local_stack(env.client.service_client.config.target_host, task_queue="nurture",
                    token="bench") as stack,
    ):  # fmt: skip
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
            return count_rows(stack.database, model, *where)

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200)
    asyncio.run(main(parser.parse_args().leads))
