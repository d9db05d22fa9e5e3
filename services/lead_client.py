"""The lead workflow seen from outside: its ID, and how the API, the CLI and the services
start it, enroll it, signal it, update it and query it.

The one module outside `workflows/` that names `LeadWorkflow`'s run method, signals,
updates and query, so a change to them is made here once.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from models.workflow_io import (
    AnswerResult,
    EnrollRequest,
    HandoffAnswer,
    LeadInput,
    LeadState,
    MigrateRequest,
    MigrateResult,
    ReassignRequest,
    ReassignResult,
    RescoreRequest,
    ResponseEvent,
    lead_workflow_id,
)
from workflows.lead import LeadWorkflow

__all__ = ["lead_workflow_id"]  # the ID rule itself lives with the workflow's messages


def handle(client: Client, lead_id: str) -> WorkflowHandle:
    """The lead's workflow (whichever run is current)."""
    return client.get_workflow_handle_for(LeadWorkflow.run, lead_workflow_id(lead_id))


async def start_enrolled(client: Client, task_queue: str, lead: LeadInput) -> bool:
    """Start a new lead's workflow with its enrollment in the input (one plain start,
    cheaper than signal-with-start). False if a workflow for the lead already runs."""
    try:
        await _start(client, task_queue, lead, WorkflowIDConflictPolicy.FAIL)
    except WorkflowAlreadyStartedError:
        return False
    return True


async def enroll(client: Client, task_queue: str, lead: LeadInput, request: EnrollRequest):
    """Enroll the lead: signal its workflow, starting it first if it is not running."""
    await _signal_with_start(client, task_queue, lead, "enroll", request)


async def respond(client: Client, task_queue: str, lead: LeadInput, event: ResponseEvent):
    """Give the lead's workflow a stored response, starting the workflow if need be."""
    await _signal_with_start(client, task_queue, lead, "respond", event)


async def respond_all(
    client: Client, task_queue: str, lead: LeadInput, events: list[ResponseEvent]
) -> None:
    """Give the lead's workflow stored responses in one signal, starting it if need be."""
    await _signal_with_start(client, task_queue, lead, "respond_all", events)


async def signal_response(client: Client, lead_id: str, event: ResponseEvent) -> None:
    """Give the lead's running workflow a stored response (RPCError NOT_FOUND if none
    runs: then `respond` starts one)."""
    await handle(client, lead_id).signal(LeadWorkflow.respond, event)


async def signal_responses(client: Client, lead_id: str, events: list[ResponseEvent]) -> None:
    """Give the lead's running workflow several stored responses in one signal (RPCError
    NOT_FOUND if none runs: then `respond_all` starts one)."""
    await handle(client, lead_id).signal(LeadWorkflow.respond_all, events)


async def _signal_with_start(
    client: Client, task_queue: str, lead: LeadInput, signal: str, argument: object
) -> None:
    await _start(client, task_queue, lead, WorkflowIDConflictPolicy.USE_EXISTING,
                 start_signal=signal, start_signal_args=[argument])  # fmt: skip


async def _start(
    client: Client, task_queue: str, lead: LeadInput, policy: WorkflowIDConflictPolicy, **signal
) -> None:
    await client.start_workflow(
        LeadWorkflow.run, lead, id=lead_workflow_id(lead.lead_id), task_queue=task_queue,
        id_conflict_policy=policy, **signal,
    )  # fmt: skip


async def sequence_resumed(client: Client, lead_id: str, sequence_id: str) -> None:
    """Wake the lead's send that the sequence's pause held back (RPCError NOT_FOUND if no
    workflow runs)."""
    await handle(client, lead_id).signal(LeadWorkflow.sequence_resumed, sequence_id)


async def consent_confirmed(client: Client, lead_id: str) -> None:
    """Wake the lead's email held for its confirmation (RPCError NOT_FOUND if no workflow
    runs)."""
    await handle(client, lead_id).signal(LeadWorkflow.consent_confirmed)


async def rescore(client: Client, lead_id: str, request: RescoreRequest) -> None:
    """Ask a running workflow to score its lead again (RPCError NOT_FOUND if none runs)."""
    await handle(client, lead_id).signal(LeadWorkflow.rescore, request)


async def answer(client: Client, lead_id: str, answer: HandoffAnswer) -> AnswerResult:
    """Sales' answer to the lead's open handoff, as a validated update."""
    return await handle(client, lead_id).execute_update(LeadWorkflow.answer, answer)


async def reassign(client: Client, lead_id: str, request: ReassignRequest) -> ReassignResult:
    """A manager moves the lead's open handoff to another rep, as a validated update."""
    return await handle(client, lead_id).execute_update(LeadWorkflow.reassign, request)


async def migrate(client: Client, lead_id: str, request: MigrateRequest) -> MigrateResult:
    """Move the lead's enrollment to a new version of its sequence, as a validated update."""
    return await handle(client, lead_id).execute_update(LeadWorkflow.migrate, request)


async def state(workflow: WorkflowHandle, rpc_timeout: timedelta | None = None) -> LeadState:
    """What the workflow says about its lead now (a query: needs a worker polling)."""
    return await workflow.query(LeadWorkflow.state, rpc_timeout=rpc_timeout)
