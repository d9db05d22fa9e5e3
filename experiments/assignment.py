"""Which arm of an experiment a lead is in: decided by the experiment's name and the
lead's ID alone, so the same lead gets the same arm on every retry, replay and
continue-as-new, on every worker, with nothing stored first (the workflow records it
after). Pure: a SHA-256 of the two names, read as a number in [0, 1), against the arms'
cumulative weights. Two experiments draw independently (each hashes its own name), and
a segment's holdout uses its own salt, so being held out says nothing about an arm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SCALE = float(2**64)


def position(salt: str, lead_id: str) -> float:
    """The lead's place in [0, 1) for `salt`: uniform, and the same every time."""
    digest = hashlib.sha256(f"{salt}\x00{lead_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / SCALE


def assign(experiment: str, lead_id: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm of `arms` ((name, weight), weights > 0, any total) the lead is in."""
    if not arms:
        raise ValueError(f"experiment {experiment!r} has no arms")
    if any(weight <= 0 for _, weight in arms):
        raise ValueError(f"experiment {experiment!r}: every arm's weight must be above 0")
    total = sum(weight for _, weight in arms)
    point = position(f"experiment:{experiment}", lead_id) * total
    reached = 0.0
    for name, weight in arms:
        reached += weight
        if point < reached:
            return name
    return arms[-1][0]  # rounding at the very top


def held_out(segment: str, lead_id: str, percent: float) -> bool:
    """Whether the segment's global holdout (`percent` of its leads) keeps this lead
    from any nurture."""
    if not 0 <= percent <= 100:
        raise ValueError(f"segment {segment!r}: a holdout is a percentage, 0 to 100")
    return position(f"holdout:{segment}", lead_id) * 100 < percent
