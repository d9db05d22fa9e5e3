"""Attribution: the share of an outcome (an SQL, an opportunity's pipeline, won revenue)
that each touch before it earns. Pure.

A touch is a moment the lead was reached, with the keys a marketer credits by: a message
Nurture sent it (its sequence, its step, the lead's segment and source), or a campaign
that brought it (its UTM campaign and medium, at its intake or on an event). Only
touches before the outcome count, in time order. The models:

- `first_touch`: all of it to the first touch;
- `last_touch`: all of it to the last;
- `linear`: an equal share to each;
- `position_based` (U-shaped): 40% to the first, 40% to the last, the other 20% shared
  by the touches between; with two touches 50% each, with one all of it.

An outcome with no touch before it is credited to `(none)`, so the shares of every
model add up to the same total. docs/outcomes.md works an example through.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

MODELS = ("first_touch", "last_touch", "linear", "position_based")
NONE = "(none)"
ENDS_SHARE = 0.4  # position_based: to each end


class Touch(NamedTuple):  # a tuple: a report builds hundreds of thousands
    at: datetime
    keys: dict[str, str]  # dimension -> value: {"sequence": "welcome", "step": "welcome/intro"}


@dataclass(frozen=True)
class Outcome:
    lead_id: str
    at: datetime
    value: float  # 1 for a count (an SQL), the amount for pipeline or revenue
    touches: tuple[Touch, ...]


@dataclass
class Credit:
    value: float = 0.0
    leads: set[str] = field(default_factory=set)  # whose outcomes gave some of it


def weights(model: str, count: int) -> list[float]:
    """Each of `count` touches' share (time order), adding up to 1."""
    if model not in MODELS:
        raise ValueError(f"no attribution model {model!r}: one of {', '.join(MODELS)}")
    if count == 0:
        return []
    if model == "first_touch":
        return [1.0] + [0.0] * (count - 1)
    if model == "last_touch":
        return [0.0] * (count - 1) + [1.0]
    if model == "linear" or count <= 2:
        return [1.0 / count] * count
    middle = (1 - 2 * ENDS_SHARE) / (count - 2)
    return [ENDS_SHARE] + [middle] * (count - 2) + [ENDS_SHARE]


def attribute(model: str, outcomes: Iterable[Outcome], dimension: str) -> dict[str, Credit]:
    """Each value of `dimension` (e.g. "sequence") and the credit its touches earned."""
    credits: dict[str, Credit] = defaultdict(Credit)
    for outcome in outcomes:
        before = sorted((t for t in outcome.touches if t.at <= outcome.at), key=lambda t: t.at)
        if not before:
            credits[NONE].value += outcome.value
            credits[NONE].leads.add(outcome.lead_id)
            continue
        for touch, share in zip(before, weights(model, len(before)), strict=True):
            if share:
                credit = credits[touch.keys.get(dimension) or NONE]
                credit.value += outcome.value * share
                credit.leads.add(outcome.lead_id)
    return dict(credits)
