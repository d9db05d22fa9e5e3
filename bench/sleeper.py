"""bench/in_flight.py's bare Temporal baseline: a workflow that sleeps until a moment, then
runs one no-op activity. A module of its own, not the benchmark's `__main__`: the sandbox
imports a workflow's module for each workflow it runs, and it should cost what a small
module of a bare Temporal application costs, no more (workflows/sandbox.py)."""

import os
import time
from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
def note_woken(workflow_id: str) -> None:
    """Appends "<workflow id> <time>" to the notes file: one line per run of it."""
    with open(os.environ["BENCH_IN_FLIGHT_NOTES"], "a", encoding="utf-8") as notes:
        notes.write(f"{workflow_id} {time.time():.6f}\n")


@workflow.defn
class Sleeper:
    @workflow.run
    async def run(self, wake_at: float) -> None:
        await workflow.sleep(max(wake_at - workflow.now().timestamp(), 1.0))
        await workflow.execute_activity(
            note_woken, workflow.info().workflow_id, start_to_close_timeout=timedelta(seconds=60)
        )
