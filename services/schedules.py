"""The worker's Temporal Schedules (the CRM sync's, weekly retraining's): each starts one
workflow every interval on the worker's task queue, a run due while the last still runs
being skipped, and is created or brought to this code's spec when the worker starts."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
)


def every(workflow: str, request: BaseModel, run_id: str, task_queue: str,
          interval: timedelta) -> Schedule:  # fmt: skip
    """`workflow` started with `request` every `interval` (the schedule appends the time
    to `run_id`); a run due while the last is still going is skipped."""
    action = ScheduleActionStartWorkflow(workflow, request, id=run_id, task_queue=task_queue)
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)])
    return Schedule(action=action, spec=spec,
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP))  # fmt: skip


async def kept(client: Client, schedule_id: str, schedule: Schedule) -> bool:
    """Create the schedule, or update the one there to `schedule`; True if created."""
    try:
        await client.create_schedule(schedule_id, schedule)
        return True
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id)
        await handle.update(lambda _current: ScheduleUpdate(schedule=schedule))
        return False
