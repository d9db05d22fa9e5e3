"""Benchmark: what a lead workflow costs the worker each time the sandbox starts it afresh
(a lead woken after an eviction or a restart), with the compile cache of
workflows/sandbox.py and, as the baseline in the same run, without it.

Each recorded history named (tests/histories) is replayed --times times in one process
per mode (the cache lasts a process); CPU time per replay is printed beside the
baseline's. Without the cache each replay compiles workflows/lead.py again when there is
no __pycache__ (PYTHONDONTWRITEBYTECODE, a read-only image): this machine has none.

    .venv/bin/python -m bench.replay_cost                  # exit_early, deferred_sends, ...
    .venv/bin/python -m bench.replay_cost --times 50 month_with_click
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HISTORIES = Path(__file__).parent.parent / "tests" / "histories"
DEFAULT = ["exit_early", "deferred_sends", "enrollment_rows_locally", "month_with_click"]


async def replay(names: list[str], times: int, cached: bool) -> dict[str, float]:
    """CPU ms per replay of each history, after one replay to warm up."""
    from temporalio.client import WorkflowHistory
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer

    from workflows import sandbox_runner
    from workflows.lead import LeadWorkflow
    from workflows.sandbox import CompiledOnce

    runner = sandbox_runner()
    if not cached:  # the baseline: the sandbox as Temporal ships it
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, CompiledOnce)]
    replayer = Replayer(workflows=[LeadWorkflow], workflow_runner=runner,
                        data_converter=pydantic_data_converter)  # fmt: skip
    figures = {}
    for name in names:
        history = WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())
        await replayer.replay_workflow(history)
        start = time.process_time()
        for _ in range(times):
            await replayer.replay_workflow(history)
        figures[name] = (time.process_time() - start) / times * 1000
    return figures


def in_a_process(names: list[str], times: int, cached: bool) -> dict[str, float]:
    mode = "--cached" if cached else "--plain"
    command = [sys.executable, "-m", "bench.replay_cost", mode, "--times", str(times), *names]
    answer = subprocess.run(command, capture_output=True, text=True, check=True,
                            env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})  # fmt: skip
    return json.loads(answer.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=DEFAULT, help="histories (tests/histories)")
    parser.add_argument("--times", type=int, default=30, help="replays of each")
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)  # a child
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cached or args.plain:
        print(json.dumps(asyncio.run(replay(args.names, args.times, args.cached))))
        return
    plain = in_a_process(args.names, args.times, cached=False)
    cached = in_a_process(args.names, args.times, cached=True)
    print(f"CPU ms per replay, {args.times} replays each, a new workflow in the sandbox each")
    print(f"{'history':32} {'events':>6} {'baseline':>9} {'cached':>7} {'saved':>6}")
    for name in args.names:
        events = len(json.loads((HISTORIES / f"{name}.json").read_text())["events"])
        saved = 1 - cached[name] / plain[name]
        print(f"{name:32} {events:>6} {plain[name]:>9.1f} {cached[name]:>7.1f} {saved:>6.0%}")


if __name__ == "__main__":
    main()
