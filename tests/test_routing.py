"""Sales routing: rules, pools, round-robin, the rep's working time, and sales.yaml checks."""

from __future__ import annotations

import logging
import shutil
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from models.definitions import SalesRep, SalesTeam, SendWindow
from sales.hours import add_working_time, is_working, next_working_start
from sales.routing import (
    FREE_MAIL_DOMAINS,
    NoRepAvailable,
    RepLoad,
    company_domain,
    route,
)
from services.definitions import load_definitions
from services.validate import validate
from tests.conftest import FIXTURE_DEFINITIONS

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday: 13:00 in Berlin, 07:00 in New York


def rep(rep_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": rep_id, "name": rep_id.title(), "email": f"{rep_id}@sales.example",
            "working_hours": "always"} | fields  # fmt: skip


def team(*reps: dict[str, Any], **fields: Any) -> SalesTeam:
    return SalesTeam.model_validate({"reps": list(reps)} | fields)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# --- routing rules -------------------------------------------------------------------------

RULES = team(
    *(rep(name) for name in ("big", "small", "trial", "emea", "vip", "us_trial", "rest")),
    pools={name: [name] for name in ("big", "small", "trial", "emea", "vip", "us_trial", "rest")},
    routing=[
        {"pool": "big", "company_size_at_least": 1000},
        {"pool": "small", "company_size_below": 50},
        {"pool": "us_trial", "segment": "saas_trial", "country": ["us"]},  # both must hold
        {"pool": "trial", "segment": ["saas_trial"]},
        {"pool": "emea", "country": ["DE", "FR"]},
        {"pool": "vip", "when": "lead.attributes.get('vip') == true"},
        {"pool": "rest"},  # no field: every lead
    ],
)


@pytest.mark.parametrize(
    ("lead", "pool", "rule"),
    [
        # First match wins: a big trial company is "big", not "trial".
        ({"company_size": 5000, "segment": "saas_trial"}, "big", "rule 1: company_size >= 1000"),
        ({"company_size": 1000}, "big", "rule 1"),
        ({"company_size": 10, "country": "DE"}, "small", "rule 2: company_size < 50"),
        ({"company_size": 50, "segment": "saas_trial", "country": "US"}, "us_trial",
         "rule 3: segment in saas_trial and country in US"),
        ({"segment": "saas_trial", "country": "GB"}, "trial", "rule 4: segment in saas_trial"),
        ({"country": "de"}, "emea", "rule 5: country in DE, FR"),  # any case
        ({"country": "US", "attributes": {"vip": True}}, "vip", "rule 6: when lead.attributes"),
        ({"country": "US", "attributes": {}}, "rest", "rule 7: every lead"),
    ],
)  # fmt: skip
def test_each_rule_type_first_match_wins(lead, pool, rule):
    lead = {"email": "ada@acme.example", "attributes": {}} | lead
    routing = route(RULES, lead, NOW, {})
    assert (routing.rep_id, routing.pool) == (pool, pool)
    assert routing.reason.startswith(f"round-robin in pool {pool} ({rule}")


def test_a_size_rule_does_not_match_an_unknown_size():
    routing = route(RULES, {"company_size": None, "attributes": {}}, NOW, {})
    assert routing.pool == "rest"


def test_a_when_that_fails_for_this_lead_does_not_match():
    # `lead.attributes.get` fails when the lead has no attributes: the rule is skipped.
    assert route(RULES, {"country": "US"}, NOW, {}).pool == "rest"


def test_no_rule_matching_goes_to_the_fallback_pool():
    sales = team(rep("a"), rep("b"), pools={"x": ["a"]}, routing=[{"pool": "x", "country": "DE"}])
    routing = route(sales, {"country": "US"}, NOW, {})
    assert (routing.rep_id, routing.pool) == ("a", "everyone")
    assert routing.reason == "round-robin in fallback pool everyone (no routing rule matched)"


def test_the_minimal_team_shape_still_loads_and_routes():
    sales = load_definitions(FIXTURE_DEFINITIONS).sales
    assert [r.id for r in sales.reps] == ["alice", "bob", "carol"]
    assert sales.pool_ids == ["everyone"] and sales.routing == []
    assert sales.sla.answer_within == 900 and sales.recycle.cool_down == 30 * 86400
    routing = route(sales, {"email": "x@acme.example"}, NOW, {})
    assert (routing.rep_id, routing.pool) == ("alice", "everyone")
    carol = SalesRep(id="carol", name="Carol", email="carol@example.com")
    assert carol.working_hours.describe() == "weekdays 09:00-17:00" and carol.timezone == "UTC"
    assert carol.capacity == 20 and carol.notify == ("email",)


# --- eligibility ---------------------------------------------------------------------------


def test_territories_and_segments_limit_who_takes_a_lead():
    sales = team(rep("jonas", territories=["DE", "AT"]), rep("maya", territories=["US"]),
                 rep("sofia", segments=["saas_trial"]))  # fmt: skip
    german = route(sales, {"country": "DE", "segment": "general"}, NOW, {})
    assert german.rep_id == "jonas"
    assert german.skipped == {"maya": "territory US (lead in DE)",
                              "sofia": "segments saas_trial (lead in general)"}  # fmt: skip
    american = route(sales, {"country": "US", "segment": "saas_trial"}, NOW, {})
    assert american.rep_id == "maya"
    assert american.skipped == {"jonas": "territory DE, AT (lead in US)"}
    french_trial = route(sales, {"country": "FR", "segment": "saas_trial"}, NOW, {})
    assert french_trial.rep_id == "sofia"
    assert french_trial.skipped == {
        "jonas": "territory DE, AT (lead in FR)",
        "maya": "territory US (lead in FR)",
    }
    nobody = {"country": "FR", "segment": "general"}
    with pytest.raises(NoRepAvailable, match="sofia: segments saas_trial \\(lead in general\\)"):
        route(sales, nobody, NOW, {})
    # A lead whose country we do not know is in everyone's territory.
    busy = {"jonas": RepLoad(last_assigned_at=NOW)}
    assert route(sales, {"segment": "general"}, NOW, busy).rep_id == "maya"


OFFICE = {"days": "weekdays", "hours": "09:00-17:00"}
NY = {"timezone": "America/New_York", "working_hours": OFFICE}
BERLIN = {"timezone": "Europe/Berlin", "working_hours": OFFICE}
ENTERPRISE = team(
    rep("maya", **NY),
    rep("omar", capacity=5),
    rep("lena", active=False),
    rep("sofia", **BERLIN),
    pools={"enterprise": ["maya", "omar", "lena"], "everyone": ["maya", "omar", "lena", "sofia"]},
    routing=[{"pool": "enterprise", "company_size_at_least": 1000}],
    fallback_pool="everyone",
)
BIG = {"email": "cto@bigcorp.example", "company_size": 5000, "country": "US"}


def test_inactive_full_and_off_duty_reps_are_skipped_to_the_fallback_pool():
    routing = route(ENTERPRISE, BIG, NOW, {"omar": RepLoad(open_handoffs=5)})
    assert (routing.rep_id, routing.pool) == ("sofia", "everyone")
    assert routing.reason == (
        "fallback pool everyone: nobody in enterprise available "
        "(maya: outside working hours, omar: full 5/5, lena: inactive)"
    )
    assert routing.skipped == {"maya": "outside working hours", "omar": "full 5/5",
                               "lena": "inactive"}  # fmt: skip
    # With room again, omar takes it in his own pool.
    routing = route(ENTERPRISE, BIG, NOW, {"omar": RepLoad(open_handoffs=4)})
    assert (routing.rep_id, routing.pool) == ("omar", "enterprise")
    assert routing.skipped == {"maya": "outside working hours", "lena": "inactive"}


def test_excluded_reps_are_passed_over():
    routing = route(ENTERPRISE, BIG, NOW, {}, exclude=frozenset({"omar"}))
    assert routing.rep_id == "sofia" and routing.skipped["omar"] == "excluded"


def test_nobody_working_goes_to_who_starts_first_in_the_matched_pool_first():
    night = utc(2026, 3, 4, 3)  # 04:00 in Berlin, 22:00 the day before in New York
    sales = team(rep("maya", **NY), rep("jonas", **BERLIN), rep("sofia", **BERLIN),
                 pools={"enterprise": ["maya"]},
                 routing=[{"pool": "enterprise", "company_size_at_least": 1000}])  # fmt: skip
    # Berlin starts six hours before New York, but the matched pool comes first.
    routing = route(sales, BIG, night, {})
    assert (routing.rep_id, routing.pool) == ("maya", "enterprise")
    assert routing.reason.startswith("nobody working now: first to start work in pool enterprise")
    # Among the fallback pool, whoever starts first; between equals, the round-robin.
    small = {"company_size": 10}
    loads = {"jonas": RepLoad(last_assigned_at=night)}
    routing = route(sales, small, night, loads)
    assert (routing.rep_id, routing.pool) == ("sofia", "everyone")
    assert routing.skipped == {"maya": "outside working hours", "jonas": "outside working hours"}


def test_everyone_full_goes_to_the_least_overloaded_then_nobody():
    full = {"maya": RepLoad(open_handoffs=30), "omar": RepLoad(open_handoffs=6),
            "sofia": RepLoad(open_handoffs=25)}  # fmt: skip
    routing = route(ENTERPRISE, BIG, NOW, full)
    # omar is 1 over his 5, maya 10 over 20, sofia 5 over 20.
    assert (routing.rep_id, routing.pool) == ("omar", "enterprise")
    assert routing.reason.startswith("everyone full: least overloaded in pool enterprise")
    with pytest.raises(NoRepAvailable) as raised:
        route(ENTERPRISE, BIG, NOW, full, exclude=frozenset({"maya", "omar", "sofia"}))
    assert isinstance(raised.value, ValueError)
    assert str(raised.value) == (
        "no sales rep can take the lead in enterprise or everyone "
        "(maya: excluded, omar: excluded, lena: inactive, sofia: excluded)"
    )


# --- the company's owner -------------------------------------------------------------------


def test_the_company_owner_gets_the_lead_whatever_their_hours_load_or_territory():
    loads = {"maya": RepLoad(open_handoffs=99)}
    routing = route(ENTERPRISE, BIG | {"country": "JP"}, NOW, loads, owner_rep_id="maya")
    assert routing == route(ENTERPRISE, BIG, NOW, loads, owner_rep_id="maya")
    assert (routing.rep_id, routing.pool) == ("maya", None) and routing.skipped == {}
    assert routing.reason == "owner of bigcorp.example"


def test_an_inactive_excluded_or_unknown_owner_is_routed_around():
    inactive = route(ENTERPRISE, BIG, NOW, {}, owner_rep_id="lena")
    assert inactive.rep_id == "omar" and inactive.pool == "enterprise"
    assert inactive.skipped["lena"] == "owner of bigcorp.example, but inactive"
    excluded = route(ENTERPRISE, BIG, NOW, {}, owner_rep_id="omar", exclude=frozenset({"omar"}))
    assert excluded.rep_id == "sofia"
    assert excluded.skipped["omar"] == "owner of bigcorp.example, but excluded"
    gone = route(ENTERPRISE, BIG, NOW, {}, owner_rep_id="someone")
    assert gone.rep_id == "omar" and "not a rep" in gone.skipped["someone"]


def test_company_domains_and_free_mail():
    assert company_domain("Ada@Acme.Example") == "acme.example"
    assert company_domain("ada@mail.acme.example.") == "mail.acme.example"
    webmail = ("ada@gmail.com", "Ada@GMail.com", "x@outlook.com", "y@gmx.de", "z@qq.com",
               "a@proton.me", "b@yahoo.com", "c@163.com", "d@mail.ru", "e@web.de")  # fmt: skip
    for address in webmail:
        assert company_domain(address) is None, address  # webmail never has an owner
    for junk in (None, "", "not-an-email", "ada@", "ada@localhost"):
        assert company_domain(junk) is None
    assert {"gmail.com", "hotmail.com", "icloud.com", "aol.com", "live.com", "msn.com",
            "protonmail.com", "yandex.ru"} <= FREE_MAIL_DOMAINS  # fmt: skip
    # An owner passed for a webmail lead (the lead's own) is still honoured, named so.
    routing = route(ENTERPRISE, {"email": "ada@gmail.com"}, NOW, {}, owner_rep_id="omar")
    assert (routing.rep_id, routing.reason) == ("omar", "the lead's owner")


# --- round-robin ---------------------------------------------------------------------------


def test_round_robin_is_fair_over_many_assignments():
    sales = team(rep("a"), rep("b"), rep("c", territories=["US", "DE"]), rep("d", active=False),
                 rep("e", territories=["FR"]), rep("f", capacity=1))  # fmt: skip
    loads = {"f": RepLoad(open_handoffs=1)}  # f is full throughout
    counts: Counter[str] = Counter()
    at = NOW
    for i in range(300):
        lead = {"email": f"lead{i}@company{i}.example", "country": ("US", "DE")[i % 2]}
        routing = route(sales, lead, at, loads)
        counts[routing.rep_id] += 1
        current = loads.get(routing.rep_id, RepLoad())
        loads[routing.rep_id] = RepLoad(current.open_handoffs, last_assigned_at=at)
        at += timedelta(seconds=7)
    assert set(counts) == {"a", "b", "c"}
    assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == 300


def test_round_robin_order_never_assigned_first_then_longest_ago_then_id():
    sales = team(rep("a"), rep("b"), rep("c"))
    loads = {"a": RepLoad(last_assigned_at=NOW - timedelta(hours=1)),
             "b": RepLoad(last_assigned_at=NOW - timedelta(hours=2))}  # fmt: skip
    assert route(sales, {}, NOW, loads).rep_id == "c"
    loads["c"] = RepLoad(last_assigned_at=NOW)
    assert route(sales, {}, NOW, loads).rep_id == "b"
    naive = {name: RepLoad(last_assigned_at=NOW.replace(tzinfo=None)) for name in "abc"}
    assert route(sales, {}, NOW, naive).rep_id == "a"  # naive times are UTC (SQLite)


def test_the_shipped_team_routes_sensibly():
    sales = load_definitions(REPO).sales
    # Wednesday 15:00 UTC: 10:00 in New York, 16:00 in Berlin.
    at = utc(2026, 3, 4, 15)
    assert route(sales, {"company_size": 5000, "country": "US"}, at, {}).rep_id == "maya"
    assert route(sales, {"company_size": 5000, "country": "DE"}, at, {}).rep_id == "jonas"
    trial = route(sales, {"segment": "saas_trial", "country": "US"}, at, {})
    assert trial.pool == "trial" and trial.rep_id in ("omar", "sofia")
    emea = route(sales, {"segment": "general", "country": "NO"}, at, {})
    assert emea.pool == "emea" and emea.rep_id in ("jonas", "sofia")
    assert sales.sla_seconds("maya") == 900 and sales.sla.reminders == 1
    assert sales.recycle.sequence == "general" and sales.crm_webhook is not None


# --- edges (found by mutation testing: scripts/mutation.py, docs/testing.md) ----------------


def test_everyone_full_prefers_the_least_over_capacity():
    # "a" is 2 over its capacity of 2, "b" exactly at its 5: "b", though "a" comes first.
    sales = team(rep("a", capacity=2), rep("b", capacity=5))
    loads = {"a": RepLoad(open_handoffs=4), "b": RepLoad(open_handoffs=5)}
    routing = route(sales, {}, NOW, loads)
    assert routing.rep_id == "b"
    assert (
        routing.reason == "everyone full: least overloaded in fallback pool everyone "
        "(no routing rule matched)"
    )
    assert routing.skipped == {"a": "full 4/2"}


@pytest.fixture
def local_time_is_not_utc(monkeypatch):
    """A naive time read as the machine's local time would not be UTC here."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_naive_and_non_utc_times_route_exactly_as_utc(local_time_is_not_utc):
    # 12:00 UTC on a Wednesday: 13:00 in Berlin (jonas and sofia work), 07:00 in New York.
    sales = team(rep("jonas", **BERLIN), rep("maya", **NY), rep("sofia", **BERLIN))
    jonas_at, sofia_at = utc(2026, 3, 4, 10), utc(2026, 3, 4, 9)  # sofia: longest ago
    expected = route(sales, {}, NOW, {"jonas": RepLoad(last_assigned_at=jonas_at),
                                      "sofia": RepLoad(last_assigned_at=sofia_at)})  # fmt: skip
    assert (expected.rep_id, expected.skipped) == ("sofia", {"maya": "outside working hours"})
    new_york, tokyo = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")
    nows = [NOW.replace(tzinfo=None), NOW.astimezone(new_york), NOW.astimezone(tokyo)]
    assigned = [
        (jonas_at.replace(tzinfo=None), sofia_at.replace(tzinfo=None)),  # SQLite: naive
        (jonas_at.astimezone(new_york), sofia_at.astimezone(tokyo)),
        (jonas_at.replace(tzinfo=None), sofia_at),  # naive and aware together
        (jonas_at, sofia_at.replace(tzinfo=None)),
    ]
    for now in [NOW, *nows]:
        for jonas, sofia in assigned:
            loads = {"jonas": RepLoad(last_assigned_at=jonas),
                     "sofia": RepLoad(last_assigned_at=sofia)}  # fmt: skip
            assert route(sales, {}, now, loads) == expected, (now, jonas, sofia)


def test_company_domain_is_after_the_last_at_sign_as_written_then_lower_case():
    assert company_domain('"a@b"@corp.com') == "corp.com"
    assert company_domain("Ada@Xerox.COM") == "xerox.com"
    assert company_domain("ada@ Acme.Example. ") == "acme.example"


def test_a_rule_naming_an_unknown_pool_falls_back():
    sales = team(rep("a"), routing=[{"pool": "north"}])
    routing = route(sales, {}, NOW, {})
    assert (routing.rep_id, routing.pool) == ("a", "everyone")
    assert routing.reason == "fallback pool everyone: nobody in north available"


def test_the_fallback_reason_says_how_its_rep_was_chosen():
    night = utc(2026, 3, 4, 3)  # nobody works
    sales = team(rep("maya", **NY), rep("jonas", **BERLIN), pools={"us": ["maya"]},
                 routing=[{"pool": "us", "country": ["US"]}])  # fmt: skip
    routing = route(sales, {"country": "US"}, night, {"maya": RepLoad(open_handoffs=20)})
    assert routing.rep_id == "jonas"
    assert routing.reason == ("fallback pool everyone: nobody in us available (maya: full 20/20)"
                              "; nobody working now: first to start work")  # fmt: skip


def test_a_matched_pool_that_is_the_fallback_is_tried_once():
    sales = team(rep("a"), pools={"all": ["a"]}, fallback_pool="all", routing=[{"pool": "all"}])
    with pytest.raises(NoRepAvailable) as raised:
        route(sales, {}, NOW, {}, exclude=frozenset({"a"}))
    assert str(raised.value) == "no sales rep can take the lead in all (a: excluded)"
    nobody = team(rep("a"), pools={"ghosts": ["zed"]}, fallback_pool="ghosts")
    with pytest.raises(NoRepAvailable) as raised:
        route(nobody, {}, NOW, {})
    assert str(raised.value) == "no sales rep can take the lead in ghosts (no reps)"


def test_why_a_rep_does_not_cover_the_lead():
    sales = team(rep("jonas", territories=["DE"], segments=["saas_trial", "enterprise"]),
                 rep("maya"))  # fmt: skip
    routing = route(sales, {"segment": "general"}, NOW, {})  # country unknown: territory is fine
    assert routing.skipped == {"jonas": "segments saas_trial, enterprise (lead in general)"}


def test_a_rule_that_fails_for_this_lead_is_logged(caplog):
    lead = {"id": "L-1", "country": "US"}  # no attributes: rule 6 cannot be evaluated
    with caplog.at_level(logging.WARNING, logger="nurture.routing"):
        assert route(RULES, lead, NOW, {}).pool == "rest"
    (record,) = caplog.records
    assert record.getMessage().startswith("routing rule 6 skipped for lead L-1: condition ")


# --- working time --------------------------------------------------------------------------

BERLIN_REP = SalesRep(id="jonas", name="Jonas", email="jonas@example.com", **BERLIN)
NY_REP = SalesRep(id="maya", name="Maya", email="maya@example.com", **NY)


def test_is_working_at_the_edges_of_the_day_and_week():
    # January: Berlin is UTC+1, so 09:00-17:00 there is 08:00-16:00 UTC.
    assert not is_working(BERLIN_REP, utc(2026, 1, 7, 7, 59, 59))
    assert is_working(BERLIN_REP, utc(2026, 1, 7, 8))
    assert is_working(BERLIN_REP, utc(2026, 1, 7, 15, 59, 59))
    assert not is_working(BERLIN_REP, utc(2026, 1, 7, 16))
    assert not is_working(BERLIN_REP, utc(2026, 1, 10, 12))  # Saturday
    assert is_working(NY_REP, utc(2026, 1, 7, 21, 59))  # 16:59 in New York
    assert is_working(NY_REP, datetime(2026, 1, 7, 14, 0))  # naive: read as UTC


def test_next_working_start():
    assert next_working_start(BERLIN_REP, utc(2026, 1, 7, 12)) == utc(2026, 1, 7, 12)
    assert next_working_start(BERLIN_REP, utc(2026, 1, 7, 17)) == utc(2026, 1, 8, 8)
    assert next_working_start(BERLIN_REP, utc(2026, 1, 9, 16)) == utc(2026, 1, 12, 8)
    assert next_working_start(NY_REP, utc(2026, 1, 10, 3)).tzinfo is UTC


def test_working_time_over_the_night():
    # 16:50 Berlin on a Wednesday + 15 working minutes: 10 today, 5 tomorrow at 09:05.
    assert add_working_time(BERLIN_REP, utc(2026, 1, 7, 15, 50), 15 * 60) == utc(2026, 1, 8, 8, 5)
    # Ends exactly when the day does.
    assert add_working_time(BERLIN_REP, utc(2026, 1, 7, 15, 45), 15 * 60) == utc(2026, 1, 7, 16)
    # Two full days and an hour, from Monday 09:00: Wednesday 10:00.
    monday = utc(2026, 1, 5, 8)
    assert add_working_time(BERLIN_REP, monday, (16 + 1) * 3600) == utc(2026, 1, 7, 9)


def test_working_time_over_the_weekend():
    # Friday 16:50 in New York (21:50 UTC) + 15 minutes: Monday 09:05 (14:05 UTC).
    assert add_working_time(NY_REP, utc(2026, 1, 9, 21, 50), 900) == utc(2026, 1, 12, 14, 5)
    # Handed over on Saturday: the clock starts Monday 09:00.
    assert add_working_time(NY_REP, utc(2026, 1, 10, 15), 900) == utc(2026, 1, 12, 14, 15)
    assert add_working_time(NY_REP, utc(2026, 1, 10, 15), 0) == utc(2026, 1, 10, 15)
    with pytest.raises(ValueError):
        add_working_time(NY_REP, utc(2026, 1, 10, 15), -1)


def test_working_time_across_daylight_saving_changes():
    # Berlin springs forward on Sunday 29 March 2026: Friday 16:50 CET (15:50 UTC) + 15m
    # is Monday 09:05 CEST, which is 07:05 UTC, not 08:05.
    assert add_working_time(BERLIN_REP, utc(2026, 3, 27, 15, 50), 900) == utc(2026, 3, 30, 7, 5)
    # New York springs forward on Sunday 8 March 2026: 16:50 EST Friday (21:50 UTC)
    # + 15m is Monday 09:05 EDT (13:05 UTC).
    assert add_working_time(NY_REP, utc(2026, 3, 6, 21, 50), 900) == utc(2026, 3, 9, 13, 5)
    # And falls back on Sunday 1 November: Monday 09:00 EST is 14:00 UTC again.
    assert next_working_start(NY_REP, utc(2026, 10, 30, 22)) == utc(2026, 11, 2, 14)
    # Around the clock, the 23-hour local Sunday still gives 24 real hours for 24 hours.
    always = BERLIN_REP.model_copy(update={"working_hours": SendWindow.model_validate("always")})
    assert is_working(always, utc(2026, 3, 29, 1, 30))
    assert add_working_time(always, utc(2026, 3, 28, 12), 86400) == utc(2026, 3, 29, 12)


def test_a_window_inside_the_skipped_hour_is_empty_that_day():
    night = SalesRep(id="n", name="N", email="n@example.com", timezone="Europe/Berlin",
                     working_hours={"days": "every day", "hours": "02:00-03:00"})  # fmt: skip
    # 02:00-03:00 does not exist in Berlin on 29 March 2026: next is 30 March 02:00 CEST.
    assert next_working_start(night, utc(2026, 3, 28, 23, 30)) == utc(2026, 3, 30, 0)
    assert add_working_time(night, utc(2026, 3, 28, 1, 30), 3600) == utc(2026, 3, 30, 0, 30)


# --- sales.yaml validation -----------------------------------------------------------------


@pytest.fixture
def defs(tmp_path) -> Path:
    root = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    return root


def write_sales(root: Path, content: str) -> None:
    (root / "sales.yaml").write_text(textwrap.dedent(content).lstrip())


def problems(root: Path, severity: str = "error") -> dict[tuple[int | None, str], str]:
    found = {}
    for problem in validate(root):
        if problem.severity == severity:
            assert problem.file == str(root / "sales.yaml"), str(problem)
            found[(problem.line, problem.field)] = problem.message
    return found


def test_cross_checks_name_file_line_and_field(defs):
    write_sales(defs, """
        reps:
          - {id: alice, name: Alice, email: alice@example.com, segments: [europe, nope]}
          - {id: bob, name: Bob, email: bob@example.com}
          - {id: alice, name: Other Alice, email: alice2@example.com}
        pools:
          east: [alice, zed]
          west: [bob]
        routing:
          - {pool: east, country: [DE]}
          - {pool: north, segment: [europe, ghosts]}
          - {pool: west, when: "lead.no_such_field > 3"}
          - {pool: west, when: "lead.country ==="}
        fallback_pool: south
        recycle:
          sequence: nowhere
          cool_down: 10d
    """)  # fmt: skip
    found = problems(defs)
    assert found.pop((2, "reps.0.segments.1")).startswith("no segment 'nope' in segments.yaml")
    assert found.pop((4, "reps.2.id")) == "duplicate rep id 'alice'"
    assert found.pop((6, "pools.east.1")).startswith("pool 'east' names 'zed', who is not a rep")
    assert found.pop((10, "routing.1.pool")) == "no pool 'north' (pools: east, west, everyone)"
    assert found.pop((10, "routing.1.segment.1")).startswith("no segment 'ghosts'")
    assert "no_such_field" in found.pop((11, "routing.2.when"))
    assert "invalid condition" in found.pop((12, "routing.3.when"))
    assert found.pop((13, "fallback_pool")) == "no pool 'south' (pools: east, west, everyone)"
    assert found.pop((15, "recycle.sequence")).startswith("no sequence 'nowhere' (known: ")
    assert found == {}
    text = [str(p) for p in validate(defs) if p.field == "fallback_pool"]
    assert text == [f"{defs}/sales.yaml:13:16: fallback_pool: no pool 'south' "
                    "(pools: east, west, everyone)"]  # fmt: skip


def test_field_errors_name_file_line_and_field(defs):
    write_sales(defs, """
        reps:
          - id: alice
            name: Alice
            email: not-an-email
            phone: "12"
            timezone: Mars/Olympus
            territories: [UK]
            working_hours: {days: weekdays, hours: "17:00-09:00"}
            capacity: 0
            sla: soon
          - id: bob
            name: Bob
            email: bob@example.com
            notify: [email, sms]
          - {id: carol, name: Carol, email: c@example.com, webhook_url: "ftp://hooks.example.com"}
        routing:
          - {pool: everyone, company_size_at_least: 500, company_size_below: 100}
        sla: {answer_within: 0m, reminders: -1}
        crm_webhook: {url: "https://crm.example.com/x", secret: hunter2}
    """)  # fmt: skip
    found = problems(defs)
    assert "not a valid email address" in found.pop((4, "reps.0.email"))
    assert found.pop((5, "reps.0.phone")).startswith("phone '12' is not a phone number")
    assert found.pop((6, "reps.0.timezone")).startswith("unknown time zone 'Mars/Olympus'")
    assert "(the United Kingdom is GB)" in found.pop((7, "reps.0.territories"))
    assert "end after they start" in found.pop((8, "reps.0.working_hours.hours"))
    assert "greater than or equal to 1" in found.pop((9, "reps.0.capacity"))
    assert "not a duration" in found.pop((10, "reps.0.sla"))
    assert found.pop((14, "reps.1.notify.1")) == "notify by sms needs the rep's phone"
    assert "not an http(s) URL" in found.pop((15, "reps.2.webhook_url"))
    assert "no company size is at least 500 and below 100" in found.pop(
        (17, "routing.0.company_size_below")
    )
    assert "longer than zero" in found.pop((18, "sla.answer_within"))
    assert "greater than or equal to 0" in found.pop((18, "sla.reminders"))
    assert "never write the secret in the file" in found.pop((19, "crm_webhook.secret"))
    assert found == {}


def test_warnings_pool_without_active_rep_and_rule_never_reached(defs):
    write_sales(defs, """
        reps:
          - {id: alice, name: Alice, email: alice@example.com}
          - {id: carol, name: Carol, email: carol@example.com, active: false}
        pools:
          gone: [carol]
        routing:
          - {pool: everyone}
          - {pool: gone, country: [DE]}
    """)  # fmt: skip
    assert problems(defs) == {}
    assert problems(defs, "warning") == {
        (5, "pools.gone"): "pool 'gone' has no active rep: its leads go to the fallback pool",
        (8, "routing.1.pool"): "rule 2 never matches: rule 1 above it takes every lead",
    }


def test_the_shipped_and_fixture_teams_are_valid():
    for root in (REPO, FIXTURE_DEFINITIONS):
        assert [str(p) for p in validate(root) if p.file.endswith("sales.yaml")] == []
    with pytest.raises(ValidationError):
        SalesTeam.model_validate({"reps": []})
