"""The double opt-in's workflow seen from outside: intake starts it, the confirmation
link signals it. The one module outside `workflows/` that names `ConfirmationWorkflow`
(as services/lead_client.py is for the lead's)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.consent import ConfirmationRequest
from workflows.confirmation import ConfirmationWorkflow


def workflow_id(confirmation_id: str) -> str:
    return f"confirm-{confirmation_id}"


async def start(client: Client, task_queue: str, request: ConfirmationRequest) -> bool:
    """Start the request's workflow; False if it runs (or ran) already. One that failed or
    was terminated may be started again: the lead is still waiting for its email."""
    try:
        await client.start_workflow(
            ConfirmationWorkflow.run, request, id=workflow_id(request.confirmation_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )  # fmt: skip
    except WorkflowAlreadyStartedError:
        return False
    return True


async def confirmed(client: Client, confirmation_id: str) -> None:
    """Tell the request's workflow the lead confirmed (the consent is committed already);
    nothing if it has ended."""
    handle = client.get_workflow_handle_for(ConfirmationWorkflow.run,
                                            workflow_id(confirmation_id))  # fmt: skip
    try:
        await handle.signal(ConfirmationWorkflow.confirmed)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
