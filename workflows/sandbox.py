"""The workflow sandbox our workers run, and a compile cache for the modules it imports.

The sandbox imports every workflow module afresh for each workflow it starts or replays:
after an eviction or a restart, that is once per woken lead. Python reads a module's
compiled bytecode from `__pycache__` when it can, but a container built with
PYTHONDONTWRITEBYTECODE (common, and so is this machine) or a read-only image has none,
and every import then compiled workflows/lead.py from source again: 12% of the worker's
CPU in a mass wake-up (bench/in_flight.py, py-spy). The cache keeps each of the
project's own modules' code object, compiled once per process; the sandbox still runs
each module afresh, so nothing is shared between workflows but that immutable code.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from types import CodeType

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

# The project's own source tree (workflows/, and bench/ for its baselines).
PROJECT = str(Path(__file__).parent.parent) + "/"


def sandbox_runner() -> SandboxedWorkflowRunner:
    """The sandbox with Jinja2 passed through (conditions compile to code that imports
    jinja2.runtime, which must come from the host, not be re-imported per workflow), and
    the project's modules compiled once per process."""
    if not any(isinstance(finder, CompiledOnce) for finder in sys.meta_path):
        sys.meta_path.insert(0, CompiledOnce())
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        "jinja2", "markupsafe", __name__
    )
    return SandboxedWorkflowRunner(restrictions=restrictions)


class CompiledOnce(importlib.abc.MetaPathFinder):
    """Finds the project's modules as Python would, with a loader that compiles each
    source file once per process."""

    def find_spec(self, fullname, path, target=None):
        """The project's modules only: anything else (the standard library's frozen
        modules, the virtualenv's) is left to the finders after this one."""
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = spec.loader if spec is not None else None
        if type(loader) is not importlib.machinery.SourceFileLoader or not _own(loader.path):
            return None
        spec.loader = CachedCodeLoader(fullname, loader.path)
        return spec


def _own(path: str) -> bool:
    return path.startswith(PROJECT) and "/site-packages/" not in path  # not the venv's


class CachedCodeLoader(importlib.machinery.SourceFileLoader):
    codes: dict[str, CodeType] = {}  # source path -> its module's code, for the process

    def get_code(self, fullname):
        code = self.codes.get(self.path)
        if code is None:
            code = self.codes[self.path] = super().get_code(fullname)
        return code
