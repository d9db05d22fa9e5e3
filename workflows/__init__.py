"""Workflow code: decides, never does I/O."""

from workflows.sandbox import sandbox_runner

__all__ = ["sandbox_runner"]
