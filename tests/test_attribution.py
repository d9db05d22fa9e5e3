"""Attribution models (sales/attribution.py) against hand-computed cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sales.attribution import MODELS, NONE, Outcome, Touch, attribute, weights

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def touch(day: int, sequence: str, step: str = "s") -> Touch:
    return Touch(T0 + timedelta(days=day), {"sequence": sequence, "step": f"{sequence}/{step}"})


@pytest.mark.parametrize(
    ("model", "count", "expected"),
    [
        ("first_touch", 3, [1, 0, 0]),
        ("last_touch", 3, [0, 0, 1]),
        ("linear", 4, [0.25, 0.25, 0.25, 0.25]),
        ("position_based", 1, [1]),
        ("position_based", 2, [0.5, 0.5]),
        ("position_based", 3, [0.4, 0.2, 0.4]),
        ("position_based", 5, [0.4, 0.2 / 3, 0.2 / 3, 0.2 / 3, 0.4]),
    ],
)
def test_weights(model, count, expected):
    assert weights(model, count) == pytest.approx(expected)


def test_the_worked_example_of_the_docs():
    """Ada: welcome (day 1), webinar (day 3), welcome (day 6), then won $9,000 on day 10,
    and a webinar touch on day 12 that came after (not counted). Bob: no touch, $1,000."""
    ada = Outcome("ada", T0 + timedelta(days=10), 9000.0, (
        touch(1, "welcome", "intro"), touch(3, "webinar", "invite"),
        touch(6, "welcome", "case-study"), touch(12, "webinar", "replay")))  # fmt: skip
    bob = Outcome("bob", T0 + timedelta(days=4), 1000.0, ())
    by_sequence = {model: {key: round(credit.value, 2) for key, credit in
                           attribute(model, [ada, bob], "sequence").items()}
                   for model in MODELS}  # fmt: skip
    assert by_sequence == {
        "first_touch": {"welcome": 9000.0, NONE: 1000.0},
        "last_touch": {"welcome": 9000.0, NONE: 1000.0},
        "linear": {"welcome": 6000.0, "webinar": 3000.0, NONE: 1000.0},
        "position_based": {"welcome": 7200.0, "webinar": 1800.0, NONE: 1000.0},
    }
    by_step = attribute("position_based", [ada], "step")
    assert by_step["welcome/intro"].value == pytest.approx(3600)
    assert by_step["welcome/intro"].leads == {"ada"}
    assert "webinar/replay" not in by_step  # after the outcome


@given(
    days=st.lists(st.integers(0, 30), max_size=12),
    model=st.sampled_from(MODELS),
    value=st.floats(0, 1e9, allow_nan=False),
)
def test_every_model_credits_the_whole_value(days, model, value):
    outcome = Outcome("x", T0 + timedelta(days=15), value,
                      tuple(touch(day, f"seq{day % 3}") for day in days))  # fmt: skip
    total = sum(credit.value for credit in attribute(model, [outcome], "sequence").values())
    assert total == pytest.approx(value, rel=1e-9, abs=1e-6)


def test_an_unknown_model_is_refused_by_name():
    with pytest.raises(ValueError, match="no attribution model 'time_decay'"):
        weights("time_decay", 3)
