"""Saved histories of real runs must replay against today's workflow code.

A failure here means a change would break leads already in flight: guard it
with `workflow.patched()` instead of changing the saved history.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

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
