"""The sandbox imports the workflow modules afresh for every workflow it runs; their code
is compiled (or read from __pycache__) once per process, not once per workflow
(workflows/sandbox.py). Replayed here: each replay is a new workflow in the sandbox, as a
lead woken after an eviction is."""

import importlib.machinery
import sys
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

import workflows.lead
from workflows import sandbox_runner
from workflows.lead import LeadWorkflow
from workflows.sandbox import CachedCodeLoader, CompiledOnce

HISTORY = Path(__file__).parent / "histories" / "exit_early.json"
LEAD_MODULE = workflows.lead.__file__


async def test_the_lead_workflow_is_loaded_once_for_many_workflows(monkeypatch):
    loads: list[str] = []
    load = importlib.machinery.SourceFileLoader.get_code

    def counted(loader, fullname):
        if sys._getframe(1).f_code.co_name != "_get_module_code":  # the SDK's build id
            loads.append(loader.path)
        return load(loader, fullname)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "get_code", counted)
    replayer = Replayer(workflows=[LeadWorkflow], data_converter=pydantic_data_converter,
                        workflow_runner=sandbox_runner())  # fmt: skip
    history = WorkflowHistory.from_json("exit_early", HISTORY.read_text())
    for _ in range(4):
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None
    # Five sandboxed imports (Temporal checks the workflow once, then four replays): at
    # most one load, none if an earlier test in this process loaded it already.
    assert loads.count(LEAD_MODULE) <= 1
    assert LEAD_MODULE in CachedCodeLoader.codes


def test_only_the_project_s_own_modules_are_cached():
    sandbox_runner()
    finder = next(finder for finder in sys.meta_path
                  if isinstance(finder, CompiledOnce))  # fmt: skip
    assert isinstance(
        finder.find_spec("workflows.lead", workflows.__path__).loader, CachedCodeLoader
    )
    assert finder.find_spec("jinja2", None) is None  # the virtualenv's: the next finders'
    assert finder.find_spec("os", None) is None  # the standard library's: frozen, as ever
    assert finder.find_spec("no_such_module_anywhere", None) is None


def test_installed_once_however_many_runners():
    sandbox_runner()
    sandbox_runner()
    finders = [f for f in sys.meta_path if isinstance(f, CompiledOnce)]
    assert len(finders) == 1
