"""Benchmark: `nurture simulate` (services/simulate.py), wall time per simulation.

Each simulation starts its own time-skipping test server (its start-up counts, as in
the command; Python's imports do not) and runs the real workflow and activities:
- the longest sequence at the repository root, for its own length, with responses;
- the same for 90 days (the lead's points keep decaying: a rescore a day);
- a 90-day sequence (added to a temporary copy of the root definitions), with responses.
Prints the server's start-up alone and each case's best and median of --runs.
Target: a 90-day sequence in under 5 s.

    .venv/bin/python -m bench.simulate_speed            # --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from services.definitions import load_definitions
from services.simulate import parse_responses, planned_length, simulate, start_environment

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 5.0
RESPONSES = (
    "1d: email.open; 3d1h: email.click step=related_reading; 10d: webinar.registered; "
    "20d: page.view url=/pricing"
)
NINETY_DAYS = """\
id: ninety_days
name: Ninety days
steps:
  - {id: hello, type: email, template: general_hello}
  - {id: w1, type: wait, duration: 10d}
  - {id: best_of, type: email, template: general_best_of}
  - {id: w2, type: wait, duration: 20d}
  - {id: guide, type: email, template: general_guide}
  - {id: click, type: wait_for, event: email.click, timeout: 10d,
     on_event: invite, on_timeout: checkin}
  - {id: checkin, type: sms, template: general_checkin}
  - {id: w3, type: wait, duration: 30d}
  - {id: invite, type: email, template: general_invite}
  - {id: w4, type: wait, duration: 19d}
  - {id: last, type: email, template: general_best_of}
  - {id: done, type: exit, reason: ninety days}
"""
NINETY_RESPONSES = "1d: email.open; 2d: email.click; 12d: page.view url=/pricing; 45d: email.reply"


def with_ninety_days(directory: Path) -> Path:
    """A copy of the root definitions with the 90-day sequence added."""
    for name in ("segments.yaml", "scoring.yaml", "sales.yaml", "delivery.yaml"):
        shutil.copy(REPO / name, directory / name)
    for folder in ("sequences", "templates"):
        shutil.copytree(REPO / folder, directory / folder)
    (directory / "sequences" / "ninety_days.yaml").write_text(NINETY_DAYS)
    return directory


async def measure(runs: int) -> None:
    started = time.perf_counter()
    env = await start_environment()
    startup = time.perf_counter() - started
    await env.shutdown()
    print(f"test server start-up alone: {startup:.2f} s")

    root = load_definitions(REPO)
    longest = max(root.sequences.values(), key=planned_length)
    length = planned_length(longest).days
    with tempfile.TemporaryDirectory() as directory:
        extended = load_definitions(with_ninety_days(Path(directory)))
        cases = [
            (
                f"{longest.id} ({length} days, the longest at the root)",
                root,
                longest.id,
                RESPONSES,
                None,
            ),
            (f"{longest.id} for 90 days", root, longest.id, RESPONSES, 90),
            ("ninety_days (a 90-day sequence)", extended, "ninety_days", NINETY_RESPONSES, None),
        ]
        for label, definitions, sequence, spec, days in cases:
            seconds, events = [], 0
            for _run in range(runs):
                began = time.perf_counter()
                timeline = await simulate(definitions, sequence, None, parse_responses(spec), days)
                seconds.append(time.perf_counter() - began)
                events = len(timeline.events)
            verdict = "ok" if min(seconds) < TARGET_SECONDS else "SLOW"
            print(
                f"{label}: best {min(seconds):.2f} s, median {statistics.median(seconds):.2f} "
                f"s over {runs} run(s); {timeline.days:g} days, {events} timeline events "
                f"[{verdict}: target {TARGET_SECONDS:.0f} s]"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(measure(parser.parse_args().runs))


if __name__ == "__main__":
    main()
