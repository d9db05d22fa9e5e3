"""Double opt-in: one workflow per confirmation request (ID `confirm-<request id>`),
started by intake for a lead whose email consent waits for its confirmation
(services/confirmation_client.py, docs/consent.md).

It sends the confirmation email at once, a reminder once if the lead has not confirmed
after `reminder_after`, and at `expires_after` records the request expired (email stays
off). The `confirmed` signal (the lead followed the link: `POST /confirm/{token}` has
committed the consent already) ends it early. The database is the truth: each activity
does nothing once the request is no longer pending, so a lost signal costs nothing.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.consent import ConfirmationEmail, ConfirmationRequest, ConsentActivities

# A provider outage is retried for a day (the reminder comes days later anyway).
SEND_RETRIES = RetryPolicy(initial_interval=timedelta(seconds=10), backoff_coefficient=2.0,
                           maximum_interval=timedelta(minutes=30))  # fmt: skip
SEND_OPTIONS = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(days=1),
    "retry_policy": SEND_RETRIES,
}


@workflow.defn
class ConfirmationWorkflow:
    def __init__(self) -> None:
        self._confirmed = False

    @workflow.run
    async def run(self, request: ConfirmationRequest) -> str:
        """`confirmed`, `expired`, or `ended` (withdrawn, or replaced by another request)."""
        if await self._send(request, "first") == "ended":
            return "ended"
        if await self._confirmed_within(request.reminder_after):
            return "confirmed"
        if await self._send(request, "reminder") == "ended":
            return "ended"
        if await self._confirmed_within(request.expires_after - request.reminder_after):
            return "confirmed"
        return await workflow.execute_activity_method(
            ConsentActivities.expire_confirmation, request, **SEND_OPTIONS
        )

    @workflow.signal
    def confirmed(self) -> None:
        self._confirmed = True

    async def _send(self, request: ConfirmationRequest, kind: str) -> str:
        email = ConfirmationEmail(lead_id=request.lead_id,
                                  confirmation_id=request.confirmation_id, kind=kind)  # fmt: skip
        try:
            return await workflow.execute_activity_method(
                ConsentActivities.send_confirmation, email, **SEND_OPTIONS
            )
        except ActivityError:  # a day of provider outage: go on to the reminder, the expiry
            workflow.logger.warning("the %s confirmation email was not sent", kind)
            return "failed"

    async def _confirmed_within(self, seconds: int) -> bool:
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._confirmed,
                                          timeout=timedelta(seconds=seconds))  # fmt: skip
        return self._confirmed
