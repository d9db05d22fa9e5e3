"""The CRM sync: one run pulls what changed in the CRM since the last, on a Temporal
Schedule every NURTURE_CRM_SYNC_MINUTES (services/crm_sync.py), or at once with
`nurture crm sync --now`.

The work is the activity's (activities/crm.py): it stores each page with the cursor
past it, so a retry after a 429 or an outage starts where the last page ended. The
workflow calls it until the CRM has no more pages, a few pages a call, so a long
catch-up heartbeats and retries in small pieces.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.crm import CrmActivities
    from models.workflow_io import CrmSyncProgress, CrmSyncRequest

MAX_CALLS = 500  # a run's activity calls (20 pages each): then the next run goes on
PULL_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=5), backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5), maximum_attempts=8,
)  # fmt: skip


@workflow.defn
class CrmSyncWorkflow:
    @workflow.run
    async def run(self, request: CrmSyncRequest) -> CrmSyncProgress:
        total = CrmSyncProgress()
        for _ in range(MAX_CALLS):
            progress = await workflow.execute_activity_method(
                CrmActivities.sync_hubspot_deals, request,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=PULL_RETRIES,
            )  # fmt: skip
            total = total.add(progress)
            if not progress.more:
                break
        return total
