"""Opportunity events converge to one state whatever order they arrive in (sales/outcomes.py),
and bad events are refused naming the field."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sales.outcomes import KINDS, OutcomeEventIn, converge

START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def event(kind: str, day: int, **fields) -> OutcomeEventIn:
    return OutcomeEventIn(opportunity_id="opp-1", kind=kind, email="ann@example.com",
                          occurred_at=START + timedelta(days=day), **fields)  # fmt: skip


def test_won_stays_won_until_the_crm_reopens_it():
    history = [
        event("created", 0, amount=Decimal("1000"), currency="usd", crm_stage="qualified"),
        event("won", 5, amount=Decimal("1200"), currency="USD"),
        event("stage_changed", 6, crm_stage="negotiation"),  # after the win: kept, no effect
        event("lost", 7, lost_reason="budget"),  # the other close: no effect either
    ]
    state = converge(history)
    assert (state.status, state.amount, state.currency) == ("won", Decimal("1200"), "USD")
    assert state.crm_stage == "qualified" and state.close_date == date(2026, 11, 6)
    assert state.ignored == [history[2].key(), history[3].key()]

    reopened = converge([*history, event("reopened", 8), event("lost", 9, lost_reason="timing")])
    assert (reopened.status, reopened.lost_reason, reopened.reopened) == ("lost", "timing", 1)
    assert reopened.closed_at == START + timedelta(days=9)


def test_a_second_win_corrects_the_amount_and_dates():
    state = converge([event("won", 2, amount=Decimal("10"), currency="EUR"),
                      event("won", 3, amount=Decimal("12"), currency="EUR",
                            close_date=date(2026, 11, 3))])  # fmt: skip
    assert (state.amount, state.close_date, state.ignored) == (Decimal("12"), date(2026, 11, 3), [])
    assert state.closed_at == START + timedelta(days=2)  # when it closed: the first win


def test_events_of_the_same_moment_take_the_order_of_their_kinds():
    """A CRM that stamps `created` and `won` with one time: created first, so won stands."""
    assert converge([event("won", 1), event("created", 1)]).status == "won"
    assert KINDS.index("created") < KINDS.index("won")


events_strategy = st.lists(
    st.builds(
        lambda kind, day, amount: event(kind, day, amount=Decimal(amount), currency="USD"),
        st.sampled_from(KINDS), st.integers(0, 5), st.integers(0, 10**6),
    ),
    min_size=1, max_size=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(events=events_strategy, order=st.randoms(use_true_random=False))
def test_any_order_converges_to_the_same_state(events, order):
    shuffled = list(events)
    order.shuffle(shuffled)
    assert converge(shuffled) == converge(events)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"occurred_at": "2026-11-01T09:00:00"}, "occurred_at"),
        ({"kind": "closed"}, "kind"),
        ({"amount": "-1", "currency": "USD"}, "amount"),
        ({"amount": "100"}, "currency"),
        ({"currency": "dollars"}, "currency"),
        ({"email": None}, "lead_id, handoff_id or email"),
        ({"lost_reason": "budget"}, "lost_reason"),
        ({"opportunity_id": ""}, "opportunity_id"),
        ({"probability": 0.5}, "probability"),
    ],
)
def test_a_bad_event_is_refused_naming_the_field(fields, named):
    data = {"opportunity_id": "opp-1", "kind": "won", "email": "ann@example.com",
            "occurred_at": "2026-11-01T09:00:00Z"} | fields  # fmt: skip
    with pytest.raises(ValidationError) as caught:
        OutcomeEventIn.model_validate(data)
    assert named in str(caught.value)


def test_the_same_content_derives_the_same_key():
    assert event("won", 1).key() == event("won", 1).key() != event("won", 2).key()
    assert event("won", 1, event_id="crm-77").key() == "crm-77"


@pytest.mark.parametrize("name", ["occurred_at", "close_date", "expected_close_date"])
def test_a_time_given_as_a_number_is_refused_not_read_as_seconds(name):
    data = {"opportunity_id": "opp-1", "kind": "won", "email": "ann@example.com",
            "occurred_at": "2026-11-01T09:00:00Z", name: 0}  # fmt: skip
    with pytest.raises(ValidationError, match="ISO 8601"):
        OutcomeEventIn.model_validate(data)
