"""Experiment assignment (experiments/assignment.py): deterministic from the experiment
and the lead, in the proportions of the weights over 100,000 leads, independent between
experiments and of the segment's holdout."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from scipy.stats import chisquare

from experiments.assignment import assign, held_out, position

LEADS = [uuid.UUID(int=n).hex for n in range(100_000)]
ARMS = [("control", 50.0), ("short_subject", 30.0), ("sms_first", 20.0)]


def test_proportions_follow_the_weights_over_100000_leads():
    counts = Counter(assign("welcome-subject", lead, ARMS) for lead in LEADS)
    expected = [len(LEADS) * weight / 100 for _, weight in ARMS]
    observed = [counts[name] for name, _ in ARMS]
    for seen, wanted in zip(observed, expected, strict=True):
        assert abs(seen - wanted) / len(LEADS) < 0.006, (observed, expected)
    assert chisquare(observed, expected).pvalue > 0.001  # no sample-ratio mismatch


def test_the_same_lead_gets_the_same_arm_every_time():
    first = [assign("welcome-subject", lead, ARMS) for lead in LEADS[:2000]]
    again = [assign("welcome-subject", lead, list(ARMS)) for lead in LEADS[:2000]]
    assert first == again
    # Weights in other units (a total of 1, not 100) draw the same arms.
    scaled = [(name, weight / 100) for name, weight in ARMS]
    assert first == [assign("welcome-subject", lead, scaled) for lead in LEADS[:2000]]


def test_two_experiments_draw_independently():
    a = [assign("subject", lead, [("control", 1), ("b", 1)]) == "b" for lead in LEADS]
    b = [assign("wait", lead, [("control", 1), ("b", 1)]) == "b" for lead in LEADS]
    both = sum(x and y for x, y in zip(a, b, strict=True)) / len(LEADS)
    assert abs(both - 0.25) < 0.006  # P(b in one) * P(b in the other)


def test_a_holdout_keeps_its_percentage_and_says_nothing_about_arms():
    out = [held_out("trial", lead, 10) for lead in LEADS]
    assert abs(sum(out) / len(LEADS) - 0.10) < 0.004
    arms_of_held = Counter(assign("subject", lead, [("control", 1), ("b", 1)])
                           for lead, held in zip(LEADS, out, strict=True) if held)  # fmt: skip
    assert abs(arms_of_held["b"] / sum(arms_of_held.values()) - 0.5) < 0.02
    assert not any(held_out("trial", lead, 0) for lead in LEADS[:1000])
    assert all(held_out("trial", lead, 100) for lead in LEADS[:1000])


def test_positions_are_uniform():
    points = sorted(position("x", lead) for lead in LEADS[:20_000])
    assert points[0] >= 0 and points[-1] < 1
    deciles = Counter(int(point * 10) for point in points)
    assert chisquare([deciles[d] for d in range(10)]).pvalue > 0.001


@pytest.mark.parametrize("arms", [[], [("control", 1), ("b", 0)], [("control", -1)]])
def test_arms_that_cannot_be_drawn_are_refused(arms):
    with pytest.raises(ValueError, match="experiment 'x'"):
        assign("x", "lead", arms)
    with pytest.raises(ValueError, match="percentage"):
        held_out("trial", "lead", 101)
