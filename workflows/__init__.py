"""Workflow code: decides, never does I/O."""

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions


def sandbox_runner() -> SandboxedWorkflowRunner:
    """The sandbox with Jinja2 passed through: conditions compile to code that imports
    jinja2.runtime, which must come from the host, not be re-imported per workflow."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules("jinja2", "markupsafe")
    return SandboxedWorkflowRunner(restrictions=restrictions)
