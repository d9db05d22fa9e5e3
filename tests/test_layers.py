"""The package layers of docs/design.md hold: import-linter's contracts in pyproject.toml
(packages only import downward, no cycles between a package's modules, no I/O library
in workflow code, the lead workflow reached only through services/lead_client.py), and
the benchmarks stand on their own (no module of bench/ imports tests/)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_linter_contract_is_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    kept = run.stdout.count(" KEPT")
    assert kept == len(contracts["contracts"]) >= 5, run.stdout


def test_every_package_is_in_a_layer():
    """A new top-level package must be placed in a layer, or nothing checks its imports."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    roots = set(config["root_packages"])
    not_ours = {"tests", "bench", "testkit", "scripts", "templates", "sequences", "examples",
                "docs", "fixtures"}  # fmt: skip
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - not_ours
    assert packages <= roots, f"not in [tool.importlinter] root_packages: {packages - roots}"
    layered = {name.strip() for layer in config["contracts"][0]["layers"]
               for name in layer.split("|")}  # fmt: skip
    assert roots == layered


def test_no_benchmark_imports_the_tests():
    offenders = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n == "tests" or n.startswith("tests.")]  # fmt: skip
    assert not offenders, offenders
