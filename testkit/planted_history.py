"""A lead history with a planted signal: every lead's chance of buying is known exactly.

The realistic generator (scoring/synthetic.py) hides its truth in noise and journeys,
so a test can only say a model did "well". Here each lead does everything in its first
week: `k ~ Poisson(pricing_rate)` views of the pricing page, and some noise (blog
views, email opens, a tour of the product; at least one response, so it has a
moment). It is won at day 20-40 with probability

    p = sigmoid(intercept + pricing * log1p(k) + senior * [senior title])

and nothing else matters. The history ends FOLLOWED_DAYS after the last lead was
created (a quiet lead, `pl-end`, marks it), so every lead's week and win are known: at
its last response moment (`per_lead=1`, the horizon longer than 40 days) what the model
sees decides `p`, and `truth[lead_id]` is the exact probability a perfect model would
give. (`log1p(k)`: the model reads counts on a log scale, so the truth is one it can
express; the test is of the pipeline, not of the model family.)

Options for the tests:
- `pricing_url`: where the signal's views go; under a path the features do not split
  (`/product/pricing` counts as `/product`, with the tour) only rules that glob the
  URL see it, so the model is worse than the rules (more so with a busier tour,
  `tour_rate` views on average);
- `leak`: each winner views pricing `leak` more times after its win: what a leak-free
  model must never read.

The same seed gives the same leads; lead i does not depend on how many are made.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from scoring.history import HistoryLead, parse_leads
from scoring.synthetic import poisson

START = datetime(2024, 1, 1, tzinfo=UTC)
SITE = "https://www.planted.example"
SPREAD_DAYS = 420  # leads are created over this many days (cohorts for the time split)
# The history ends this long after the last lead was created (a quiet lead then marks
# it): every planted lead's week and win are known for horizons up to 90 days, and the
# end is the same with or without a leak.
FOLLOWED_DAYS = 100


@dataclass(frozen=True)
class Signal:
    """The planted truth: log-odds of buying, and how often pricing is viewed."""

    intercept: float = -2.4
    pricing: float = 1.6  # per log1p(pricing views)
    senior: float = 1.0  # a senior title
    pricing_rate: float = 1.2  # mean pricing views
    senior_share: float = 0.3

    def probability(self, pricing_views: int, senior: bool) -> float:
        odds = self.intercept + self.pricing * math.log1p(pricing_views) + self.senior * senior
        return 1.0 / (1.0 + math.exp(-odds))


NO_SIGNAL = Signal(pricing=0.0, senior=0.0, intercept=-1.2)


@dataclass
class Planted:
    leads: list[HistoryLead]
    truth: dict[str, float]  # lead id -> its true probability of being won
    rows: list[dict[str, Any]]  # the leads as history JSON (to write or change)


def planted_history(
    n_leads: int,
    seed: int = 0,
    signal: Signal = Signal(),  # noqa: B008 - frozen
    *,
    pricing_url: str = "/pricing",
    tour_rate: float = 1.0,
    leak: int = 0,
) -> Planted:
    """`n_leads` leads whose outcome was drawn with a known probability (see above)."""
    rows, truth = [], {}
    for index in range(n_leads):
        rng = random.Random(f"{seed}:{index}")
        row, probability = _lead(rng, index, signal, pricing_url, tour_rate, leak)
        rows.append(row)
        truth[row["id"]] = probability
    rows.append(_end_marker())
    truth[rows[-1]["id"]] = 0.0
    return Planted(list(parse_leads(rows, "<planted>")), truth, rows)


def _lead(
    rng: random.Random, index: int, signal: Signal, pricing_url: str, tour_rate: float, leak: int
) -> tuple[dict[str, Any], float]:
    senior = rng.random() < signal.senior_share
    created = START + timedelta(days=rng.uniform(0, SPREAD_DAYS))
    k = poisson(rng, signal.pricing_rate)
    probability = signal.probability(k, senior)
    won = rng.random() < probability
    win_day = rng.uniform(20, 40)

    def week() -> float:
        return rng.uniform(0, 7)

    responses = [("page.view", week(), {"url": SITE + pricing_url}) for _ in range(k)]
    responses += [("page.view", week(), {"url": SITE + "/blog/post"})
                  for _ in range(1 + poisson(rng, 1.5))]  # fmt: skip
    responses += [("email.open", week(), {}) for _ in range(poisson(rng, 1.5))]
    responses += [("page.view", week(), {"url": SITE + "/product/tour"})
                  for _ in range(poisson(rng, tour_rate))]  # fmt: skip
    if won and leak:  # after the win: a customer at work, never a reason it bought
        responses += [("page.view", win_day + rng.uniform(0.1, 20), {"url": SITE + "/pricing"})
                      for _ in range(leak)]  # fmt: skip
    lead_id = f"pl-{index + 1:06d}"
    row = {
        "id": lead_id,
        "profile": {
            "email": f"{lead_id}@acme{index % 50}.example",
            "title": "VP Sales" if senior else "Analyst",
            "company_size": 300,
            "industry": "software",
            "country": "US",
            "source": "newsletter",
        },
        "created_at": _iso(created),
        "responses": [
            {"type": kind, "at": _iso(created + timedelta(days=day)), "data": data}
            for kind, day, data in sorted(responses, key=lambda r: r[1])
        ],  # fmt: skip
        "outcome": {
            "customer": won,
            "at": _iso(created + timedelta(days=win_day)) if won else None,
        },  # fmt: skip
    }
    return row, probability


def _end_marker() -> dict[str, Any]:
    """A lead created (and opening an email) FOLLOWED_DAYS after the others: it ends the
    history there, and its only moment is too recent to be an example."""
    end = START + timedelta(days=SPREAD_DAYS + FOLLOWED_DAYS)
    return {"id": "pl-end", "profile": {"email": "end@acme.example", "source": "newsletter"},
            "created_at": _iso(end), "responses": [{"type": "email.open", "at": _iso(end)}],
            "outcome": {"customer": False}}  # fmt: skip


def _iso(moment: datetime) -> str:
    return moment.isoformat()
