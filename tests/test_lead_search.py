"""The console's lead search (services/lead_search.py) on SQLite and PostgreSQL, over
hand-made leads: each filter, combinations, the two orders, pages, the capped count, a
rep's own leads, and bad input refused with the field to fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from models.db import Enrollment, Handoff, Lead
from services.lead_search import (
    COUNT_CAP,
    STAGES,
    LeadSearch,
    SearchError,
    search_leads,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# email, first name, stage, segment, score, hours before T0 of the last activity
LEADS = [
    ("ada.lovelace@analytical.example", "Ada", "mql", "everyone", 48.0, 5),
    ("lin.chen@acme.example", "Lin", "sql", "europe", 82.5, 1),
    ("caroline.lin@beta.example", "Caroline", "lead", "everyone", 12.0, 3),
    ("sam_okafor@gamma.example", "Sam", "mql", "europe", 40.0, 2),
    ("samxokafor@delta.example", "Samx", "lead", "everyone", 40.0, 4),
    ("noor.berg@acme.example", "Noor", "accepted", "everyone", 90.0, 6),
]


def found(session, **search) -> list[str]:
    """The emails a search finds, in its order."""
    return [row.email for row in search_leads(session, LeadSearch(**search)).rows]


@pytest.fixture
def leads(database) -> dict[str, str]:
    """The LEADS, with enrollments (Lin moved from `month` to `quick`) and handoffs (Lin's
    to alice, Noor's reassigned from alice to bob). Email -> lead ID."""
    ids = {}
    with database.sessions.begin() as session:
        for email, first, stage, segment, score, _hours in LEADS:
            lead = Lead(
                email=email,
                first_name=first,
                last_name="Test",
                stage=stage,
                segment=segment,
                score=score,
                created_at=T0 - timedelta(days=9),
            )
            session.add(lead)
            session.flush()
            ids[email] = lead.id
        enrollments = [("ada", "month", 0), ("lin", "month", 0), ("lin", "quick", 1),
                       ("noor", "quick", 0)]  # fmt: skip
        for who, sequence, n in enrollments:
            lead_id = next(i for e, i in ids.items() if e.startswith(who))
            session.add(Enrollment(id=f"{lead_id}-{n}", lead_id=lead_id, sequence_id=sequence,
                                   sequence_version=1, workflow_id=f"lead-{lead_id}",
                                   started_at=T0 - timedelta(days=5 - n)))  # fmt: skip
        session.add(Handoff(lead_id=ids["lin.chen@acme.example"], cycle=1, rep_id="alice",
                            score=82.5, reason="test"))  # fmt: skip
        session.add(Handoff(lead_id=ids["noor.berg@acme.example"], cycle=1, rep_id="bob",
                            score=90, reason="test", reassignments=1))  # fmt: skip
    # updated_at last: the ORM sets it on every write above.
    with database.sessions.begin() as session:
        for email, *_rest, hours in LEADS:
            session.get(Lead, ids[email]).updated_at = T0 - timedelta(hours=hours)
    return ids


def test_each_filter_alone(database, leads):
    with database.sessions() as session:
        assert found(session, email="LIN") == [
            "lin.chen@acme.example", "caroline.lin@beta.example"]  # fmt: skip
        assert found(session, email="lin", match="prefix") == ["lin.chen@acme.example"]
        # A LIKE wildcard typed is a character looked for, not "any character".
        assert found(session, email="sam_") == ["sam_okafor@gamma.example"]
        assert found(session, email="%") == []
        assert found(session, stage="mql") == [
            "sam_okafor@gamma.example", "ada.lovelace@analytical.example"]  # fmt: skip
        assert found(session, segment="europe") == [
            "lin.chen@acme.example", "sam_okafor@gamma.example"]  # fmt: skip
        # Both bounds are included.
        assert found(session, score_min=40, score_max=48) == [
            "sam_okafor@gamma.example", "samxokafor@delta.example",
            "ada.lovelace@analytical.example"]  # fmt: skip
        assert found(session, score_min=85) == ["noor.berg@acme.example"]
        assert found(session, score_max=12) == ["caroline.lin@beta.example"]


def test_sequence_is_the_current_enrollments(database, leads):
    """Lin was in `month`, then `quick`: found under `quick` only."""
    with database.sessions() as session:
        assert found(session, sequence="month") == ["ada.lovelace@analytical.example"]
        assert found(session, sequence="quick") == [
            "lin.chen@acme.example", "noor.berg@acme.example"]  # fmt: skip
        rows = {row.email: row for row in search_leads(session, LeadSearch()).rows}
    assert rows["lin.chen@acme.example"].sequence == "quick"
    assert rows["caroline.lin@beta.example"].sequence is None  # never enrolled
    assert rows["lin.chen@acme.example"].name == "Lin Test"
    assert rows["lin.chen@acme.example"].last_activity == T0 - timedelta(hours=1)


def test_filters_combine(database, leads):
    with database.sessions() as session:
        assert found(session, stage="mql", segment="europe") == ["sam_okafor@gamma.example"]
        assert found(session, email="acme", sequence="quick", score_min=85) == [
            "noor.berg@acme.example"]  # fmt: skip
        assert found(session, email="sam", stage="lead", score_min=40, score_max=40) == [
            "samxokafor@delta.example"]  # fmt: skip
        assert found(session, stage="sql", segment="everyone") == []


def test_a_rep_finds_only_the_leads_handed_off_to_it(database, leads):
    """Noor's handoff was reassigned from alice to bob: it is bob's now."""
    with database.sessions() as session:
        assert found(session, rep_id="alice") == ["lin.chen@acme.example"]
        assert found(session, rep_id="bob") == ["noor.berg@acme.example"]
        assert found(session, rep_id="bob", email="lin") == []
        assert found(session, rep_id="carol") == []


def test_orders_and_pages(database, leads):
    by_activity = [email for email, *_rest in sorted(LEADS, key=lambda lead: lead[-1])]
    with database.sessions() as session:
        assert found(session) == by_activity
        by_score = found(session, sort="score")
        assert by_score == [
            "noor.berg@acme.example", "lin.chen@acme.example", "ada.lovelace@analytical.example",
            # a tie on score: the larger ID first, the same on every page
            *sorted(["sam_okafor@gamma.example", "samxokafor@delta.example"],
                    key=lambda email: leads[email], reverse=True),
            "caroline.lin@beta.example",
        ]  # fmt: skip
        pages = [search_leads(session, LeadSearch(sort="score", limit=4, offset=offset))
                 for offset in (0, 4)]  # fmt: skip
    assert [row.email for page in pages for row in page.rows] == by_score
    assert pages[0].has_older and not pages[1].has_older
    assert pages[0].total == pages[1].total == 6 and pages[0].total_text == "6"


def test_the_count_stops_at_the_cap(database, leads):
    """Past COUNT_CAP leads the total is "1,000+", and paging on past it still works."""
    extra = COUNT_CAP + 5
    rows = [{"id": f"bulk{n:06d}", "email": f"bulk{n}@many.example", "stage": "lead",
             "score": 1.0, "updated_at": T0 - timedelta(days=30, seconds=n),
             "created_at": T0 - timedelta(days=40), "timezone": "UTC", "attributes": {}}
            for n in range(extra)]  # fmt: skip
    with database.sessions.begin() as session:
        session.execute(insert(Lead), rows)
    with database.sessions() as session:
        result = search_leads(session, LeadSearch(email="many", limit=10))
        assert result.capped and result.total_text == "1,000+" and result.has_older
        assert [row.email for row in result.rows] == [f"bulk{n}@many.example" for n in range(10)]
        far = search_leads(session, LeadSearch(email="many", limit=10, offset=COUNT_CAP + 2))
        assert [row.email for row in far.rows] == [
            f"bulk{n}@many.example" for n in range(COUNT_CAP + 2, extra)]  # fmt: skip
        exact = search_leads(session, LeadSearch(email="many", score_min=1, stage="sql"))
        assert exact.total == 0 and exact.rows == [] and not exact.has_older


@pytest.mark.parametrize(
    ("search", "field", "message"),
    [
        ({"score_min": 60, "score_max": 40}, "score_min", "minimum 60 is above the maximum 40"),
        ({"stage": "hot"}, "stage", f"unknown stage 'hot'; one of {', '.join(STAGES)}"),
        ({"score_max": 101}, "score_max", "101 is not a score: scores run from 0 to 100"),
        ({"score_min": float("nan")}, "score_min", "nan is not a score"),
        ({"sort": "name"}, "sort", "'name' is not one of activity, score"),
        ({"match": "regex"}, "match", "'regex' is not one of contains, prefix"),
        ({"limit": 0}, "limit", "0 is not between 1 and 200"),
        ({"offset": -1}, "offset", "-1 is not between 0 and 10000"),
    ],
)
def test_bad_searches_say_what_to_fix(search, field, message):
    with pytest.raises(SearchError) as refused:
        LeadSearch(**search)
    assert refused.value.field == field
    assert message in refused.value.message
