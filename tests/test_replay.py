"""Saved histories of real runs must replay against today's workflow code.

A failure here means a change would break leads already in flight: guard it
with `workflow.patched()` instead of changing the saved history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import (
    ContinueAsNewInput,
    Interceptor,
    Replayer,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from workflows import sandbox_runner
from workflows.lead import LeadWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
# The sandbox warns (and fails the task) on non-deterministic calls such as asyncio.wait:
# a warning here is a workflow that would fail in production.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def test_there_are_histories():
    assert len(HISTORIES) >= 6


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path):
    replayer = Replayer(
        workflows=[LeadWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=sandbox_runner(),
    )
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


# --- what a run hands to the next ----------------------------------------------------------

CONTINUED = [path for path in HISTORIES
             if json.loads(path.read_text())["events"][-1]["eventType"]
             == "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"]  # fmt: skip


class HandedOn(Interceptor):
    """Keeps the input each replayed run hands to its next run (continue-as-new), as JSON
    at that moment."""

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        inputs = self.inputs

        class Outbound(WorkflowOutboundInterceptor):
            def continue_as_new(self, input: ContinueAsNewInput):  # type: ignore[override]
                payloads = pydantic_data_converter.payload_converter.to_payloads(input.args)
                inputs.append([json.loads(payload.data) for payload in payloads])
                super().continue_as_new(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

        return Inbound


def differences(before: Any, now: Any, at: str = "input") -> list[str]:
    """Where `now` does not hold what `before` held; fields `now` adds are not differences."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [line for key, value in before.items()
                for line in (differences(value, now[key], f"{at}.{key}") if key in now
                             else [f"{at}.{key}: missing"])]  # fmt: skip
    return [] if before == now else [f"{at}: {before!r} then, {now!r} now"]


def test_there_are_runs_that_continued_as_new():
    assert len(CONTINUED) >= 2


@pytest.mark.parametrize("path", CONTINUED, ids=lambda p: p.stem)
async def test_the_next_run_is_handed_what_it_was_before(path: Path):
    """Today's code hands the next run the state a saved run handed it, in the same JSON
    shape: a worker of the version before can still take the run over."""
    handed_on = HandedOn()
    replayer = Replayer(
        workflows=[LeadWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=sandbox_runner(),
        interceptors=[handed_on],
    )
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
    continued = history.events[-1].workflow_execution_continued_as_new_event_attributes
    [recorded] = [json.loads(payload.data) for payload in continued.input.payloads]
    [[now]] = handed_on.inputs
    assert differences(recorded, now) == []
