"""The CRM sync's schedule and its runs: the worker keeps a Temporal Schedule that
starts the sync workflow every NURTURE_CRM_SYNC_MINUTES while HUBSPOT_ACCESS_TOKEN is
set; `nurture crm sync --now` runs one at once and waits for it; `nurture crm status`
reads where the pull stands.

A run that starts while another is still going is skipped (the schedule's overlap
policy), and `--now` joins a `--now` already running instead of starting a second.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import sessionmaker
from temporalio.client import Client, Schedule
from temporalio.common import WorkflowIDConflictPolicy

from infra.settings import Settings
from models.db import CrmSyncState
from models.workflow_io import CrmSyncProgress, CrmSyncRequest
from services.schedules import every, kept

log = logging.getLogger("nurture.crm")
WORKFLOW = "CrmSyncWorkflow"  # workflows/crm_sync.py, registered by services/runtime.py
SCHEDULE_ID = "nurture-crm-sync-hubspot"
RUN_ID = "crm-sync-hubspot"  # the schedule appends the time; `--now` adds "-now"


def sync_schedule(settings: Settings) -> Schedule:
    return every(WORKFLOW, CrmSyncRequest(), RUN_ID, settings.task_queue,
                 timedelta(minutes=settings.crm_sync_minutes))  # fmt: skip


async def ensure_schedule(client: Client, settings: Settings) -> bool:
    """Create the schedule, or bring an existing one to the settings (a changed
    interval); False, and nothing done, while no HubSpot token is set."""
    if settings.hubspot_access_token is None:
        return False
    if await kept(client, SCHEDULE_ID, sync_schedule(settings)):
        log.info("CRM sync scheduled every %d min", settings.crm_sync_minutes)
    return True


async def sync_now(
    client: Client, settings: Settings, timeout: float | None = None
) -> CrmSyncProgress:
    """One run at once (a worker runs it), its figures when it ends; TimeoutError after
    `timeout` seconds (the run goes on)."""
    handle = await client.start_workflow(
        WORKFLOW, CrmSyncRequest(), id=f"{RUN_ID}-now", task_queue=settings.task_queue,
        result_type=CrmSyncProgress, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )  # fmt: skip
    return await asyncio.wait_for(handle.result(), timeout)


def sync_status(sessions: sessionmaker, connector: str = "hubspot") -> dict[str, Any]:
    """Where the pull stands: its cursor, what it has read, its last run and error."""
    with sessions() as session:
        state = session.get(CrmSyncState, connector)
        if state is None:
            return {"connector": connector, "cursor": None, "pulled": 0, "last_run_at": None,
                    "last_ok_at": None, "last_error": None}  # fmt: skip
        return {
            "connector": connector, "cursor": state.cursor, "pulled": state.pulled,
            "last_run_at": _iso(state.last_run_at), "last_ok_at": _iso(state.last_ok_at),
            "last_error": state.last_error,
        }  # fmt: skip


def _iso(value) -> str | None:
    return value.isoformat() if value else None
