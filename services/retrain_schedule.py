"""Weekly retraining's Temporal Schedule, kept in line with scoring.yaml by the worker at
start: `predictive.retrain: weekly` creates it (or brings it to this code's spec), `off`
deletes it. Each run starts RetrainWorkflow (workflows/retrain.py), which stores a
candidate model; a run that starts while the last is still training is skipped.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import Client, Schedule
from temporalio.service import RPCError, RPCStatusCode

from activities.training import RetrainRequest
from infra.settings import Settings
from models.definition_set import Definitions
from services.schedules import every, kept

log = logging.getLogger("nurture.training")
WORKFLOW = "RetrainWorkflow"  # workflows/retrain.py, registered by services/runtime.py
SCHEDULE_ID = "nurture-retrain"
RUN_ID = "nurture-retrain"  # the schedule appends the time
EVERY = timedelta(days=7)


def retrain_schedule(settings: Settings) -> Schedule:
    return every(WORKFLOW, RetrainRequest(), RUN_ID, settings.task_queue, EVERY)


async def ensure_schedule(client: Client, settings: Settings, definitions: Definitions) -> bool:
    """Weekly: create the schedule or update it (task queue, interval); True. Off:
    delete it if there is one; False."""
    if definitions.scoring.predictive.retrain != "weekly":
        await _delete(client)
        return False
    if await kept(client, SCHEDULE_ID, retrain_schedule(settings)):
        log.info("weekly retraining scheduled (%s)", SCHEDULE_ID)
    return True


async def _delete(client: Client) -> None:
    try:
        await client.get_schedule_handle(SCHEDULE_ID).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return  # none: nothing to do
    log.info("weekly retraining unscheduled (predictive.retrain: off)")
