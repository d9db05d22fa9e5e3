"""Mutation testing of the pure modules (issue 14, point 12). Not run in CI: it takes minutes.

    make mutation                                       # the four modules, one after another
    .venv/bin/python scripts/mutation.py sales/routing.py   # one module
    .venv/bin/python scripts/mutation.py --keep ...     # keep the scratch copy (`mutmut browse`)

Needs mutmut 3 (`.venv/bin/pip install -e ".[mutation]"`). Each module runs on its own, in
a scratch copy of the working tree (so mutmut's `mutants/` never lands in the tree), with
`[tool.mutmut]` from pyproject.toml plus that module and its targeted tests (TARGETS). One
worker by default (`--max-children`). Survivors are then re-checked with plain pytest, the
mutant written into the copy's source: only those plain pytest also lets through count as
survivors. The kill rate sets the equivalent mutants (EQUIVALENT, explained in
docs/testing.md) aside; the run fails if a module is under --min (90%).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The tests that target each module: pure and fast, since every mutant runs them.
TARGETS: dict[str, list[str]] = {
    "scoring/engine.py": ["tests/test_scoring.py"],
    "channels/policy.py": [
        "tests/test_policy.py",
        *(
            f"tests/test_delivery.py::{name}"  # its pure part, not the database and workflow tests
            for name in (
                "test_sms_window_in_the_leads_time_zone",
                "test_window_across_a_daylight_saving_change",
                "test_email_any_time_is_never_held",
                "test_window_opening_is_the_first_allowed_moment",
                "test_caps_release_when_the_oldest_counted_send_leaves_the_period",
                "test_caps_and_quiet_hours_together",
            )
        ),
    ],
    "sales/routing.py": ["tests/test_routing.py"],
    "models/consent.py": ["tests/test_consent.py"],
}

# Mutants no test can kill, because the mutated program behaves the same (docs/testing.md
# says why for each). Names are mutmut's; they shift when the module's code changes, so a
# name that no longer survives is reported, to be checked and removed.
EQUIVALENT: dict[str, str] = {
    # scoring/engine.py
    "scoring.engine.x__clamp_line__mutmut_6": "raw >= kept: only called when raw != kept",
    "scoring.engine.x__lead_view__mutmut_17": "'XXXX' for no email: no @ either",
    "scoring.engine.x_decide_stage__mutmut_19": "ranks from 2: only their order matters",
    "scoring.engine.x_decide_stage__mutmut_70": "break for continue: SQL is the last stage",
    "scoring.engine.x__fit__mutmut_7": "matched = None: falsy like False",
    "scoring.engine.x__tally__mutmut_53": "ties in a once rule are equal values",
    "scoring.engine.x__engagement__mutmut_25": "points >= 0: a capped sum is never 0",
    # channels/policy.py
    "channels.policy.x_earliest_send_time__mutmut_5": "range(101): a few rounds always do",
    "channels.policy.x_earliest_send_time__mutmut_40": "message of an unreachable raise",
    "channels.policy.x_window_opening__mutmut_5": "range(9): 8 days reach every weekday",
    "channels.policy.x_window_opening__mutmut_15": "midnight's tzinfo is replaced anyway",
    "channels.policy.x_window_opening__mutmut_19": "midnight's tzinfo is replaced anyway",
    "channels.policy.x_window_opening__mutmut_28": "moment <= start: start is moment",
    "channels.policy.x_window_opening__mutmut_30": "message of an unreachable raise",
    "channels.policy.x_window_opening__mutmut_31": "message of an unreachable raise",
    "channels.policy.x_window_opening__mutmut_32": "message of an unreachable raise",
    # sales/routing.py
    "sales.routing.x__fairness__mutmut_3": "never assigned as 1: datetime.min sorts first",
    "sales.routing.x__fairness__mutmut_4": "naive datetime.min: compared only with itself",
    "sales.routing.x__fairness__mutmut_10": "aware times compare by instant in any zone",
    "sales.routing.x__fairness__mutmut_11": "assigned as 2: only the order against 0 counts",
    "sales.routing.x_route__mutmut_4": "naive now: sales.hours reads naive times as UTC",
    "sales.routing.x_route__mutmut_6": "now in local time: sales.hours converts to UTC",
    "sales.routing.x__owner__mutmut_28": "Routing.skipped defaults to {}",
    "sales.routing.x__matched_rule__mutmut_21": "hit = None: falsy like False",
    **dict.fromkeys(
        [f"sales.routing.x__passes__mutmut_{n}" for n in (3, 4, 24, 25, 44, 45)],
        "the passes' names are never read",
    ),
    "sales.routing.x__passes__mutmut_46": "lambda rep: 0: falsy like None",
    # models/consent.py
    **dict.fromkeys(
        [f"models.consent.x_classify_response__mutmut_{n}" for n in (99, 101, 104, 105)],
        "a missing bounce_type: any default but a soft one means hard",
    ),
    "models.consent.x_classify_response__mutmut_132": "'XXXX' is no drop reason either",
    "models.consent.x_sms_keyword__mutmut_6": "'XXXX' is no keyword either",
}

SCRATCH_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "mutants", ".nurture", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "*.egg-info", "build", "html",
)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"default: all of {', '.join(TARGETS)}")  # fmt: skip
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (default 1)")
    parser.add_argument("--min", type=float, default=90.0, help="least kill rate, in percent")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--no-recheck", action="store_true", help="skip the plain-pytest re-check")
    args = parser.parse_args()
    unknown = [module for module in args.modules if module not in TARGETS]
    if unknown:
        parser.error(f"no targeted tests for {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    if not (BIN / "mutmut").exists():
        print(f"no {BIN / 'mutmut'}: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2

    summaries = [run_module(m, args) for m in (args.modules or list(TARGETS))]
    print("\nmodule                 mutants  killed  equivalent  survived  kill rate")
    failed = False
    for module, total, killed, equivalent, survivors in summaries:
        rate = 100.0 * killed / max(total - equivalent, 1)
        failed |= rate < args.min
        print(f"{module:22} {total:7}  {killed:6}  {equivalent:10}  {len(survivors):8}"
              f"  {rate:8.1f}%")  # fmt: skip
    return 1 if failed else 0


def run_module(module: str, args: argparse.Namespace):
    scratch = Path(tempfile.mkdtemp(prefix=f"nurture-mutation-{Path(module).stem}-"))
    print(f"\n=== {module} (scratch copy: {scratch})", flush=True)
    try:
        shutil.copytree(REPO, scratch, ignore=SCRATCH_IGNORE, dirs_exist_ok=True)
        configure(scratch / "pyproject.toml", module)
        mutmut = [str(BIN / "mutmut")]
        log = scratch / "mutmut-run.log"  # its progress display, kept out of this output
        with log.open("w") as out:
            run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)],
                                 cwd=scratch, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        if run.returncode != 0:
            print(log.read_text()[-5000:])
            raise SystemExit(f"mutmut run failed for {module} ({run.returncode})")
        meta = json.loads((scratch / "mutants" / f"{module}.meta").read_text())
        codes: dict[str, int | None] = meta["exit_code_by_key"]
        # Killed by a failing test, a timeout or a crash (mutmut's exit codes); anything else
        # (survived, no tests) is a survivor.
        killed = {name for name, code in codes.items() if code in (1, 3, 24, -24, 152, 255, 36)}
        survivors = sorted(set(codes) - killed)
        no_tests = sum(codes[name] in (5, 33) for name in survivors)
        print(f"{len(codes)} mutants: {len(killed)} killed, {len(survivors)} survived "
              f"({no_tests} reached by no test)", flush=True)  # fmt: skip
        if not args.no_recheck:
            survivors = recheck(scratch, module, survivors)
        equivalent = [name for name in survivors if name in EQUIVALENT]
        for name in sorted(set(EQUIVALENT) - set(survivors)):
            if name.startswith(module_prefix(module)):
                print(f"  listed as equivalent but {'killed' if name in codes else 'gone'}: {name}")
        for name in survivors:
            if name not in EQUIVALENT:
                diff = subprocess.run([*mutmut, "show", name], cwd=scratch, capture_output=True,
                                      text=True).stdout  # fmt: skip
                print(f"\n--- survivor {name}\n{diff}")
        killed_count = len(codes) - len(survivors)
        return (
            module,
            len(codes),
            killed_count,
            len(equivalent),
            [s for s in survivors if s not in EQUIVALENT],
        )
    finally:
        if args.keep:
            print(f"kept {scratch}: cd there and run {BIN / 'mutmut'} browse")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def configure(pyproject: Path, module: str) -> None:
    """[tool.mutmut] of the copy: the project's, for `module` and its targeted tests only."""
    text = pyproject.read_text()
    settings = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    settings["only_mutate"] = [module]
    settings["pytest_add_cli_args_test_selection"] = TARGETS[module]
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    pyproject.write_text(text.rstrip() + "\n\n[tool.mutmut]\n" + "\n".join(lines) + "\n")


def module_prefix(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".") + "."


def recheck(scratch: Path, module: str, survivors: list[str]) -> list[str]:
    """The survivors that plain pytest, with the mutant written into the source, lets through."""
    source = scratch / module
    original = source.read_bytes()
    confirmed = []
    print(f"re-checking {len(survivors)} survivors with plain pytest", flush=True)
    try:
        for number, name in enumerate(survivors, start=1):
            print(f"  {number}/{len(survivors)} {name}", end="\r", flush=True)
            subprocess.run([str(BIN / "mutmut"), "apply", name], cwd=scratch, check=True,
                           capture_output=True)  # fmt: skip
            tests = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", *pytest_args(scratch),
                 *TARGETS[module]],
                cwd=scratch, capture_output=True,
            )  # fmt: skip
            if tests.returncode == 0:
                confirmed.append(name)
            else:
                print(f"  killed by plain pytest: {name}")
            source.write_bytes(original)
    finally:
        source.write_bytes(original)
    return confirmed


def pytest_args(scratch: Path) -> list[str]:
    settings = tomllib.loads((scratch / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(settings.get("pytest_add_cli_args", []))


if __name__ == "__main__":
    sys.exit(main())
