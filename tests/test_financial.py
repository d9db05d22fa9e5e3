"""The financial model's engine (sales/financial.py), on hand-computed cases: the funnel,
rates, medians, money and costs per group and cohort; the forecast, its interval and its
backtest on a planted pipeline whose answer is known; nothing after the as-of moment."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sales.financial import (
    Cost,
    Deal,
    LeadCount,
    LeadPath,
    backtest,
    forecast,
    model,
    percentile,
    reached_times,
)

JAN, FEB = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)


def at(start: datetime, days: float) -> datetime:
    return start + timedelta(days=days)


# --- the model ----------------------------------------------------------------------------------

# smb, created 1 Jan: (mql, sql, opportunity opened, closed, status, amount) in days.
SMB = {
    "a1": (2, 4, 8, 18, "won", 10_000),
    "a2": (4, 8, 14, 24, "lost", None),
    "a3": (1, 2, 4, 24, "won", 20_000),
    "a4": (10, None, None, None, None, None),
}  # and a5: a lead, nothing more


def funnel_history():
    counts = [LeadCount("smb", "2026-01", 5), LeadCount("ent", "2026-02", 2)]
    paths, deals = [], []
    for lead, (mql, sql, opened, closed, status, amount) in SMB.items():
        paths.append(LeadPath(lead, "smb", JAN, at(JAN, mql), sql and at(JAN, sql)))
        if opened is not None:
            deals.append(Deal(f"o-{lead}", lead, "smb", JAN, at(JAN, opened), status,
                              at(JAN, closed), amount and Decimal(amount), "USD"))  # fmt: skip
    # b1: an opportunity from the CRM, with no MQL or SQL in Nurture; won in euros.
    paths.append(LeadPath("b1", "ent", FEB))
    deals.append(Deal("o-b1", "b1", "ent", FEB, at(FEB, 3), "won", at(FEB, 13), Decimal(8000),
                      "EUR"))  # fmt: skip
    costs = [Cost("2026-01", Decimal(5000), "USD", "segment", "smb"),
             Cost("2026-02", Decimal(1000), "USD", "campaign", "launch")]  # fmt: skip
    return counts, paths, deals, costs


def test_the_funnel_its_rates_and_median_days_per_group():
    result = model(*funnel_history(), by="segment")
    smb, ent = result["groups"]  # by leads, most first
    assert (smb["key"], smb["leads"], smb["mql"], smb["sql"], smb["opportunity"],
            smb["won"]) == ("smb", 5, 4, 3, 3, 2)  # fmt: skip
    assert smb["rates"] == {"mql": 0.8, "sql": 0.75, "opportunity": 1.0, "won": 0.6667,
                            "overall": 0.4}  # fmt: skip
    # lead→MQL 2,4,1,10; MQL→SQL 2,4,1; SQL→opportunity 4,6,2; opportunity→won 10,20
    assert smb["median_days"] == {"mql": 3.0, "sql": 2.0, "opportunity": 4.0, "won": 15.0}
    assert smb["sales_cycle_days"] == 18.0  # SQL→won: 14 and 22
    # b1 reached MQL, SQL and opportunity when its opportunity opened (day 3).
    assert (ent["mql"], ent["sql"], ent["opportunity"], ent["won"]) == (1, 1, 1, 1)
    assert ent["median_days"] == {"mql": 3.0, "sql": 0.0, "opportunity": 0.0, "won": 10.0}


def test_money_per_currency_and_costs_where_given():
    result = model(*funnel_history(), by="segment")
    smb, ent = result["groups"]
    assert smb["opportunities"] == {"closed": 3, "won": 2} and smb["win_rate"] == 0.6667
    assert smb["revenue"] == {"USD": 30000.0} and smb["average_deal"] == {"USD": 15000.0}
    assert smb["revenue_per_lead"] == {"USD": 6000.0} and smb["revenue_per_sql"] == {"USD": 10000.0}
    assert smb["cost"] == {"USD": 5000.0}
    assert (smb["cost_per_lead"], smb["cost_per_sql"], smb["cac"]) == (
        {"USD": 1000.0}, {"USD": 1666.67}, {"USD": 2500.0})  # fmt: skip
    assert ent["revenue"] == {"EUR": 8000.0} and ent["cost"] == {} and ent["cac"] == {}
    total = result["total"]  # the campaign's cost is on another dimension: the total only
    assert (total["leads"], total["won"], total["win_rate"]) == (7, 3, 0.75)
    assert total["revenue"] == {"EUR": 8000.0, "USD": 30000.0}  # never summed across
    assert total["cost"] == {"USD": 6000.0} and total["cac"] == {"USD": 2000.0}
    assert total["cost_per_lead"] == {"USD": 857.14} and total["cost_per_sql"] == {"USD": 1500.0}


def test_cohorts_are_the_months_leads_were_created():
    cohorts = {(r["key"], r["cohort"]): r for r in model(*funnel_history(), "segment")["cohorts"]}
    assert set(cohorts) == {("smb", "2026-01"), ("ent", "2026-02"), ("(all)", "2026-01"),
                            ("(all)", "2026-02")}  # fmt: skip
    assert cohorts["smb", "2026-01"]["cac"] == {"USD": 2500.0}
    assert cohorts["(all)", "2026-02"]["cost"] == {"USD": 1000.0}
    assert cohorts["(all)", "2026-02"]["cac"] == {"USD": 1000.0}  # b1, the one customer


def test_a_stage_reached_counts_for_those_before_it():
    path = LeadPath("x", "g", JAN, mql_at=at(JAN, 5), sql_at=None)
    deal = Deal("o", "x", "g", JAN, at(JAN, 3), "open")
    assert reached_times(path, [deal]) == {"mql": at(JAN, 3), "sql": at(JAN, 3),
                                           "opportunity": at(JAN, 3), "won": None}  # fmt: skip


def test_percentile_is_linear_between_the_nearest_two():
    assert percentile([10.0, 25.0, 33.75], 0.1) == pytest.approx(13.0)
    assert percentile([10.0, 25.0, 33.75], 0.9) == pytest.approx(32.0)
    assert percentile([4.0], 0.9) == 4.0


# --- the forecast -------------------------------------------------------------------------------

AS_OF = datetime(2026, 4, 1, tzinfo=UTC)
# A planted history (tests/test_financial_report.py plants the same in a database): per
# lead, its segment, the month it was created (MQL a day later, SQL two), its stage on
# 1 April and its opportunity (opened day 3, closed day 10): (status then, amount).
PIPELINE_HISTORY = (
    [(f"jan{i}", "smb", 1, "customer" if s == "won" else "closed_lost", (s, a))
     for i, (s, a) in enumerate([("won", 10_000), ("won", 10_000), ("lost", None),
                                 ("lost", None)])]
    + [(f"feb{i}", "smb", 2, "customer" if s == "won" else "closed_lost", (s, a))
       for i, (s, a) in enumerate([("won", 10_000), ("lost", None), ("lost", None),
                                   ("lost", None)])]
    + [(f"febr{i}", "smb", 2, "lead", None) for i in range(4)]  # turned down by sales
    + [(f"mar{i}", "smb", 3, "customer" if s == "won" else "closed_lost", (s, a))
       for i, (s, a) in enumerate([("won", 10_000), ("won", 10_000), ("won", 10_000),
                                   ("lost", None)])]
    + [(f"mard{i}", "smb", 3, "disqualified", None) for i in range(2)]
    + [("open10", "smb", 3, "opportunity", ("open", 10_000)),
       ("open20", "smb", 3, "opportunity", ("open", 20_000)),
       ("sql1", "ent", 3, "sql", None), ("sql2", "ent", 3, "accepted", None)]
)  # fmt: skip
# Settled SQLs → opportunity: Jan 4/4, Feb 4/8, Mar 6/8 (two still open); in all 14/20.
# Win rate: Jan 2/4, Feb 1/4, Mar 3/4; in all 6/12. Revenue per win: $10,000.
# smb (two open opportunities, $30,000): wins 0.5 × 2 = 1; $15,000. Under each cohort's
# rates: 1, 0.5, 1.5 wins; $15,000, $7,500, $22,500.
# ent (two open SQLs): 0.7 × 0.5 × 2 = 0.7 wins, $7,000; cohorts: 1, 0.25, 1.125 wins.
# In all: 1.7 wins, $22,000; cohorts: $25,000, $10,000, $33,750.
EXPECTED = {
    "smb": ((1.0, 0.6, 1.4), (15000.0, 9000.0, 21000.0)),
    "ent": ((0.7, 0.4, 1.1), (7000.0, 4000.0, 11000.0)),
    "(all)": ((1.7, 1.0, 2.5), (22000.0, 13000.0, 32000.0)),
}
# After 1 April: open10 won at $12,000 (its amount changed), open20 lost, sql1 opened an
# opportunity and won $12,000, sql2 turned down, jan2 reopened and won, a new lead won.
ACTUAL = {"smb": (1, 12000.0, True), "ent": (1, 12000.0, False), "(all)": (2, 24000.0, True)}


def planted(history=PIPELINE_HISTORY):
    paths, deals = [], []
    for lead, segment, month, stage, deal in history:
        created = datetime(2026, month, 1, tzinfo=UTC)
        paths.append(LeadPath(lead, segment, created, at(created, 1), at(created, 2), stage))
        if deal is not None:
            status, amount = deal
            closed = None if status == "open" else at(created, 10)
            deals.append(Deal(f"o-{lead}", lead, segment, created, at(created, 3), status,
                              closed, amount and Decimal(amount), amount and "USD"))  # fmt: skip
    return paths, deals


def figures(row: dict) -> tuple:
    wins, revenue = row["wins"], row["revenue"]["USD"]
    return tuple(wins[k] for k in ("expected", "low", "high")), tuple(
        revenue[k] for k in ("expected", "low", "high"))  # fmt: skip


def test_the_forecast_of_a_planted_pipeline():
    result = forecast(*planted(), AS_OF)
    rates = result["rates"]
    assert (rates["sql_to_opportunity"], rates["win_rate"], rates["sql_to_won"]) == (0.7, 0.5, 0.35)
    assert rates["revenue_per_win"] == {"USD": 10000.0}
    assert [(c["cohort"], c["sql_to_opportunity"], c["win_rate"]) for c in rates["cohorts"]] == [
        ("2026-01", 1.0, 0.5), ("2026-02", 0.5, 0.25), ("2026-03", 0.75, 0.75)]  # fmt: skip
    rows = {row["key"]: row for row in [*result["rows"], result["total"]]}
    assert {key: figures(row) for key, row in rows.items()} == EXPECTED
    assert (rows["smb"]["open_opportunities"], rows["smb"]["open_amount"]) == (2, {"USD": 30000.0})
    assert (rows["ent"]["open_sqls"], rows["(all)"]["open_sqls"]) == (2, 2)


def late_outcomes():
    """What happened after 1 April, as it stands now (deals) and the leads it added."""
    paths, deals = planted()
    now = {deal.id: deal for deal in deals}
    apr = AS_OF

    def won(deal_id, lead, segment, created, opened, closed, amount):
        now[deal_id] = Deal(deal_id, lead, segment, created, opened, "won", closed,
                            Decimal(amount), "USD")  # fmt: skip

    mar = datetime(2026, 3, 1, tzinfo=UTC)
    won("o-open10", "open10", "smb", mar, at(mar, 3), at(apr, 19), 12_000)
    now["o-open20"] = Deal("o-open20", "open20", "smb", mar, at(mar, 3), "lost", at(apr, 24))
    won("o-sql1", "sql1", "ent", mar, at(apr, 9), at(apr, 34), 12_000)
    won("o-jan2", "jan2", "smb", JAN, at(JAN, 3), at(apr, 19), 5_000)  # reopened, won
    won("o-new", "new", "ent", at(apr, 1), at(apr, 3), at(apr, 29), 50_000)
    late_paths = [LeadPath("new", "ent", at(apr, 1), at(apr, 1.5), at(apr, 2), "customer")]
    return paths + late_paths, deals, list(now.values())


def test_the_backtest_compares_with_what_the_pipeline_won_after():
    paths, then, now = late_outcomes()
    result = backtest(paths, then, now, AS_OF)
    rows = {row["key"]: row for row in [*result["rows"], result["total"]]}
    assert {key: figures(row) for key, row in rows.items()} == EXPECTED
    for key, (wins, revenue, inside) in ACTUAL.items():
        assert (rows[key]["wins"]["actual"], rows[key]["wins"]["inside"]) == (wins, True)
        usd = rows[key]["revenue"]["USD"]
        assert (usd["actual"], usd["inside"]) == (revenue, inside), key


def test_nothing_known_only_after_the_moment_changes_the_forecast():
    paths, deals = planted()
    before = forecast(paths, deals, AS_OF)
    created = datetime(2026, 3, 1, tzinfo=UTC)
    late = [
        LeadPath("new", "ent", at(AS_OF, 1), at(AS_OF, 2), at(AS_OF, 3), "sql"),  # created after
        LeadPath("slow", "ent", created, at(created, 1), at(AS_OF, 2), "sql"),  # SQL after
    ]
    late_deals = [
        Deal("o-late", "mard0", "smb", created, at(AS_OF, 1), "won", at(AS_OF, 5),
             Decimal(99_000), "USD"),  # opened after
    ]  # fmt: skip
    # An opportunity closed after the moment was still open then, whatever its status now.
    reclosed = [replace(d, status="lost", closed_at=at(AS_OF, 3)) if d.id == "o-open20" else d
                for d in deals]  # fmt: skip
    assert forecast(paths + late, reclosed + late_deals, AS_OF) == before


def test_no_closed_opportunity_yet_means_no_forecast():
    paths, deals = planted([("sql1", "ent", 3, "sql", None), ("o", "smb", 3, "opportunity",
                                                              ("open", 1000))])  # fmt: skip
    total = forecast(paths, deals, AS_OF)["total"]
    assert total["wins"] == {"expected": None, "low": None, "high": None}
    assert total["revenue"] == {"USD": {"expected": None, "low": None, "high": None}}
