"""The financial model: what leads become (lead → MQL → SQL → opportunity → won), what
they bring and cost, per group (a segment, source, sequence or campaign) and per monthly
cohort (the month the lead was created); and the pipeline forecast with its backtest.
Pure: services/financial_report.py reads the database. docs/outcomes.md ("The financial
model") works the rules through.

A lead *reached* a stage when it entered it or any later one, at the earliest of those
times: a lead whose opportunity opened with no SQL in Nurture reached SQL then. The
opportunity stage is the lead's first opportunity opening, won its first win's close.

The forecast, as of a moment D, from what was known before D only:

- the pipeline: each open opportunity, and each open SQL (a lead at `sql` or `accepted`
  with no opportunity yet);
- the rates, from the outcomes already settled: the SQL → opportunity rate over the SQLs
  that got an opportunity or left SQL without one, the win rate over the closed
  opportunities, and the revenue per win in each currency;
- expected wins: win rate per open opportunity, SQL → opportunity × win rate per open
  SQL; expected revenue: the win rate × an opportunity's own amount, else the expected
  wins × the revenue per win, in each currency (never summed across);
- the interval: the same pipeline under each past monthly cohort's own two rates (the
  cohorts with at least MIN_COHORT settled SQLs and closed opportunities), from the
  10th to the 90th percentile of those forecasts (linear between the nearest two).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

STAGES = ("mql", "sql", "opportunity", "won")
NONE = "(none)"  # a lead without a value of the dimension
TOTAL = "(all)"
OPEN_SQL_STAGES = ("sql", "accepted")  # an SQL sales has not turned down or opened yet
CLOSED = ("won", "lost")
LOW, HIGH = 0.1, 0.9  # the interval: these percentiles of the cohorts' forecasts
MIN_COHORT = 3  # settled SQLs and closed opportunities a cohort needs to count
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class LeadPath:
    """A lead that went past `lead`: its first MQL and SQL, and its stage at the moment
    the figures are for (the forecast's D)."""

    lead_id: str
    group: str
    created_at: datetime
    mql_at: datetime | None = None
    sql_at: datetime | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Deal:
    """An opportunity, with its lead's group and creation (its cohort)."""

    id: str
    lead_id: str
    group: str
    lead_created_at: datetime
    opened_at: datetime
    status: str  # open won lost
    closed_at: datetime | None = None
    amount: Decimal | None = None
    currency: str | None = None

    def closed_before(self, moment: datetime) -> bool:
        return self.status in CLOSED and (self.closed_at is None or self.closed_at < moment)

    @property
    def priced(self) -> bool:
        return self.amount is not None and self.currency is not None


@dataclass(frozen=True, slots=True)
class LeadCount:
    group: str
    cohort: str  # 2026-10
    leads: int


@dataclass(frozen=True, slots=True)
class Cost:
    month: str
    amount: Decimal
    currency: str
    dimension: str | None = None  # campaign source segment sequence; None: the month's total
    value: str | None = None


def cohort_of(moment: datetime) -> str:
    """The month of a moment in UTC, as the cohort is named: 2026-10."""
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _money(value: Decimal | float) -> float:
    return round(float(value), 2)


def _median_days(seconds: list[float]) -> float | None:
    return round(statistics.median(seconds) / DAY, 2) if seconds else None


def percentile(values: list[float], p: float) -> float:
    """The p-th quantile (0..1), linear between the nearest two of the sorted values."""
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


# --- the model: per group and per cohort -------------------------------------------------------


@dataclass
class _Tally:
    leads: int = 0
    reached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    seconds: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    cycle: list[float] = field(default_factory=list)  # SQL → won
    closed: int = 0
    wins: int = 0
    revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    priced_wins: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cost: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add_path(self, created_at: datetime, reached: dict[str, datetime | None]) -> None:
        previous = created_at
        for stage in STAGES:
            at = reached[stage]
            if at is None:  # reached times run forward: nothing later either
                break
            self.reached[stage] += 1
            self.seconds[stage].append((at - previous).total_seconds())
            previous = at
        if reached["won"] is not None and reached["sql"] is not None:
            self.cycle.append((reached["won"] - reached["sql"]).total_seconds())

    def add_deal(self, deal: Deal) -> None:
        if deal.status not in CLOSED:
            return
        self.closed += 1
        if deal.status == "won":
            self.wins += 1
            if deal.priced:
                self.revenue[deal.currency] += deal.amount
                self.priced_wins[deal.currency] += 1

    def merge(self, other: _Tally) -> None:
        self.leads += other.leads
        for stage in STAGES:
            self.reached[stage] += other.reached[stage]
            self.seconds[stage] += other.seconds[stage]
        self.cycle += other.cycle
        self.closed, self.wins = self.closed + other.closed, self.wins + other.wins
        for mine, theirs in ((self.revenue, other.revenue), (self.priced_wins, other.priced_wins),
                             (self.cost, other.cost)):  # fmt: skip
            for currency, value in theirs.items():
                mine[currency] += value

    def row(self) -> dict[str, Any]:
        counts = {"leads": self.leads} | self.reached
        names = ("leads", *STAGES)
        sqls, customers = self.reached["sql"], self.reached["won"]
        return counts | {
            "rates": {stage: _ratio(counts[stage], counts[before])
                      for before, stage in pairwise(names)}
            | {"overall": _ratio(customers, self.leads)},
            "median_days": {stage: _median_days(self.seconds[stage]) for stage in STAGES},
            "sales_cycle_days": _median_days(self.cycle),
            "opportunities": {"closed": self.closed, "won": self.wins},
            "win_rate": _ratio(self.wins, self.closed),
            "revenue": {c: _money(v) for c, v in sorted(self.revenue.items())},
            "average_deal": _per(self.revenue, self.priced_wins),
            "revenue_per_lead": _per(self.revenue, self.leads),
            "revenue_per_sql": _per(self.revenue, sqls),
            "cost": {c: _money(v) for c, v in sorted(self.cost.items())},
            "cost_per_lead": _per(self.cost, self.leads),
            "cost_per_sql": _per(self.cost, sqls),
            "cac": _per(self.cost, customers),
        }  # fmt: skip


def _per(amounts: dict[str, Decimal], count: int | dict[str, int]) -> dict[str, float | None]:
    """Each currency's amount over `count` (or its own count), None when that is 0."""
    out = {}
    for currency, amount in sorted(amounts.items()):
        n = count[currency] if isinstance(count, dict) else count
        out[currency] = _money(amount / n) if n else None
    return out


def reached_times(path: LeadPath, deals: Iterable[Deal]) -> dict[str, datetime | None]:
    """When the lead reached each stage: the earliest of its own time and any later
    stage's (so the times run forward, and reaching a stage reaches the ones before)."""
    deals = list(deals)
    opened = min((d.opened_at for d in deals), default=None)
    won = min((d.closed_at for d in deals if d.status == "won" and d.closed_at), default=None)
    own = dict(zip(STAGES, (path.mql_at, path.sql_at, opened, won), strict=True))
    out: dict[str, datetime | None] = {}
    later: datetime | None = None
    for stage in reversed(STAGES):
        at = own[stage]
        later = at if later is None else later if at is None else min(at, later)
        out[stage] = later
    return {stage: out[stage] for stage in STAGES}


def model(
    counts: Iterable[LeadCount],
    paths: Iterable[LeadPath],
    deals: Iterable[Deal],
    costs: Iterable[Cost],
    by: str,
) -> dict[str, Any]:
    """Per group, in total, and per group and cohort (the total's cohorts too): the
    funnel, its rates and median days, win rate, deal size, revenue per lead and per SQL,
    the sales cycle, and where costs are given cost per lead, per SQL and CAC. A cost on
    another dimension than `by` (or on none) counts in the total only."""
    # Each lead and deal counts once, in its group's cohort; the rest are sums of those.
    cells: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    for count in counts:
        cells[count.group, count.cohort].leads += count.leads
    by_lead: dict[str, list[Deal]] = defaultdict(list)
    for deal in deals:
        by_lead[deal.lead_id].append(deal)
        cells[deal.group, cohort_of(deal.lead_created_at)].add_deal(deal)
    for path in paths:
        reached = reached_times(path, by_lead.get(path.lead_id, ()))
        cells[path.group, cohort_of(path.created_at)].add_path(path.created_at, reached)
    tallies: dict[tuple[str, str | None], _Tally] = defaultdict(_Tally)
    for (group, cohort), cell in cells.items():
        for key in {(group, None), (TOTAL, None), (group, cohort), (TOTAL, cohort)}:
            tallies[key].merge(cell)
    for cost in costs:
        keys = [(TOTAL, None), (TOTAL, cost.month)]
        if cost.dimension == by:
            keys += [(cost.value or NONE, None), (cost.value or NONE, cost.month)]
        for key in keys:
            tallies[key].cost[cost.currency] += cost.amount
    return _model_rows(tallies, by)


def _model_rows(tallies: dict[tuple[str, str | None], _Tally], by: str) -> dict[str, Any]:
    groups = [{"key": group} | tally.row() for (group, cohort), tally in tallies.items()
              if cohort is None and group != TOTAL]  # fmt: skip
    groups.sort(key=lambda row: (-row["leads"], row["key"]))
    order = {row["key"]: i for i, row in enumerate(groups)} | {TOTAL: len(groups)}
    cohorts = [{"key": group, "cohort": cohort} | tally.row()
               for (group, cohort), tally in tallies.items() if cohort is not None]  # fmt: skip
    cohorts.sort(key=lambda row: (order.get(row["key"], len(order)), row["key"], row["cohort"]))
    total = {"key": TOTAL} | (tallies[TOTAL, None] if (TOTAL, None) in tallies else _Tally()).row()
    return {"by": by, "groups": groups, "total": total, "cohorts": cohorts}


# --- the forecast ------------------------------------------------------------------------------


@dataclass
class _Rates:
    settled: int = 0  # SQLs that got an opportunity or left SQL without one
    converted: int = 0  # of those, with an opportunity
    closed: int = 0  # opportunities
    won: int = 0

    @property
    def to_opportunity(self) -> float | None:
        return self.converted / self.settled if self.settled else None

    @property
    def win_rate(self) -> float | None:
        return self.won / self.closed if self.closed else None


@dataclass
class _Pipeline:
    sqls: set[str] = field(default_factory=set)  # lead IDs
    opportunities: set[str] = field(default_factory=set)  # deal IDs
    amounts: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    unpriced: int = 0  # open opportunities without an amount

    def add(self, deal: Deal) -> None:
        self.opportunities.add(deal.id)
        if deal.priced:
            self.amounts[deal.currency] += deal.amount
        else:
            self.unpriced += 1

    def expect(
        self, to_opportunity: float | None, win_rate: float | None, per_win: dict[str, float]
    ) -> tuple[float | None, dict[str, float | None]]:
        """(expected wins, expected revenue per currency) under these rates."""
        currencies = sorted(set(self.amounts) | set(per_win))
        if win_rate is None or (self.sqls and to_opportunity is None):
            return None, dict.fromkeys(currencies)
        from_sqls = (to_opportunity or 0.0) * win_rate * len(self.sqls)
        unpriced_wins = win_rate * self.unpriced + from_sqls
        revenue = {c: win_rate * float(self.amounts.get(c, 0)) + unpriced_wins * per_win.get(c, 0.0)
                   for c in currencies}  # fmt: skip
        return win_rate * len(self.opportunities) + from_sqls, revenue


def forecast(
    paths: Iterable[LeadPath], deals: Iterable[Deal], as_of: datetime, min_cohort: int = MIN_COHORT
) -> dict[str, Any]:
    """The open pipeline as of `as_of` and the won revenue it should bring, per group and
    in total. `deals` as they stood at `as_of` (their amounts then); anything dated at or
    after `as_of` is not known then and is left out."""
    return _forecast(paths, deals, as_of, min_cohort)[0]


def _forecast(
    paths: Iterable[LeadPath], deals: Iterable[Deal], as_of: datetime, min_cohort: int
) -> tuple[dict[str, Any], dict[str, _Pipeline]]:
    known = [deal for deal in deals if deal.opened_at < as_of]
    with_deal = {deal.lead_id for deal in known}
    overall, cohorts = _Rates(), defaultdict(_Rates)
    pipelines: dict[str, _Pipeline] = defaultdict(_Pipeline)
    for path in paths:
        if path.created_at >= as_of:
            continue
        rates = (overall, cohorts[cohort_of(path.created_at)])
        if path.lead_id in with_deal:
            for r in rates:
                r.settled, r.converted = r.settled + 1, r.converted + 1
        elif path.sql_at is not None and path.sql_at < as_of:
            if path.stage in OPEN_SQL_STAGES:
                for key in (path.group, TOTAL):
                    pipelines[key].sqls.add(path.lead_id)
            else:
                for r in rates:
                    r.settled += 1
    revenue, priced_wins = defaultdict(Decimal), 0
    for deal in known:
        if not deal.closed_before(as_of):
            for key in (deal.group, TOTAL):
                pipelines[key].add(deal)
            continue
        for r in (overall, cohorts[cohort_of(deal.lead_created_at)]):
            r.closed, r.won = r.closed + 1, r.won + (deal.status == "won")
        if deal.status == "won" and deal.priced:
            revenue[deal.currency] += deal.amount
            priced_wins += 1
    per_win = {c: float(v) / priced_wins for c, v in sorted(revenue.items())}
    used = [r for r in cohorts.values() if r.settled >= min_cohort and r.closed >= min_cohort]
    pipelines.setdefault(TOTAL, _Pipeline())
    rows = {key: _forecast_row(key, pipe, overall, used, per_win)
            for key, pipe in pipelines.items()}  # fmt: skip
    result = {
        "as_of": as_of,
        "rates": _rates_summary(overall, cohorts, per_win, min_cohort),
        "rows": sorted((row for key, row in rows.items() if key != TOTAL), key=_row_order),
        "total": rows[TOTAL],
    }
    return result, dict(pipelines)


def _row_order(row: dict[str, Any]) -> tuple:
    return (-(row["open_sqls"] + row["open_opportunities"]), row["key"])


def _forecast_row(key: str, pipe: _Pipeline, overall: _Rates, used: list[_Rates],
                  per_win: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    wins, revenue = pipe.expect(overall.to_opportunity, overall.win_rate, per_win)
    scenarios = [pipe.expect(r.to_opportunity, r.win_rate, per_win) for r in used]

    def figure(expected: float | None, values: list[float | None]) -> dict[str, float | None]:
        values = [v for v in values if v is not None]
        low = percentile(values, LOW) if values and expected is not None else None
        high = percentile(values, HIGH) if values and expected is not None else None
        return {"expected": _round(expected), "low": _round(low), "high": _round(high)}

    return {
        "key": key,
        "open_sqls": len(pipe.sqls),
        "open_opportunities": len(pipe.opportunities),
        "open_amount": {c: _money(v) for c, v in sorted(pipe.amounts.items())},
        "wins": figure(wins, [s[0] for s in scenarios]),
        "revenue": {c: figure(v, [s[1].get(c) for s in scenarios]) for c, v in revenue.items()},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _rates_summary(overall: _Rates, cohorts: dict[str, _Rates], per_win: dict[str, float],
                   min_cohort: int) -> dict[str, Any]:  # fmt: skip
    def rates(r: _Rates) -> dict[str, Any]:
        both = None if r.to_opportunity is None or r.win_rate is None else (
            r.to_opportunity * r.win_rate)  # fmt: skip
        return {"settled_sqls": r.settled, "sql_to_opportunity": _ratio(r.converted, r.settled),
                "closed_opportunities": r.closed, "win_rate": _ratio(r.won, r.closed),
                "sql_to_won": None if both is None else round(both, 4)}  # fmt: skip

    return rates(overall) | {
        "revenue_per_win": {c: _money(v) for c, v in per_win.items()},
        "interval": f"{LOW * 100:.0f}th-{HIGH * 100:.0f}th percentile of the forecasts under "
        f"each cohort's rates (cohorts with {min_cohort}+ settled SQLs and closed opportunities)",
        "cohorts": [{"cohort": name} | rates(r)
                    | {"used": r.settled >= min_cohort and r.closed >= min_cohort}
                    for name, r in sorted(cohorts.items())],
    }  # fmt: skip


# --- the backtest -------------------------------------------------------------------------------


def backtest(
    paths: Iterable[LeadPath],
    deals_then: Iterable[Deal],
    deals_now: Iterable[Deal],
    as_of: datetime,
    min_cohort: int = MIN_COHORT,
) -> dict[str, Any]:
    """The forecast as of `as_of` (from `deals_then`, the opportunities as they stood
    then) beside what its pipeline actually won after it (`deals_now`): its open
    opportunities won, and the opportunities of its open SQLs opened and won since."""
    result, pipelines = _forecast(paths, deals_then, as_of, min_cohort)
    of_deal = {deal_id: key for key, pipe in pipelines.items() if key != TOTAL
               for deal_id in pipe.opportunities}  # fmt: skip
    of_lead = {lead: key for key, pipe in pipelines.items() if key != TOTAL for lead in pipe.sqls}
    wins: dict[str, int] = defaultdict(int)
    revenue: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for deal in deals_now:
        late = deal.closed_at is None or deal.closed_at >= as_of
        if deal.status != "won" or not late:
            continue
        # An open SQL had no opportunity then: any of its lead's is a later one.
        key = of_deal.get(deal.id) or of_lead.get(deal.lead_id)
        if key is None:
            continue
        for k in (key, TOTAL):
            wins[k] += 1
            if deal.priced:
                revenue[k][deal.currency] += deal.amount
    for row in [*result["rows"], result["total"]]:
        _compare(row["wins"], wins[row["key"]])
        actual = revenue[row["key"]]
        for currency in sorted(set(row["revenue"]) | set(actual)):
            figure = row["revenue"].setdefault(currency, {"expected": 0.0, "low": None,
                                                          "high": None})  # fmt: skip
            _compare(figure, _money(actual.get(currency, 0)))
    return result


def _compare(figure: dict[str, Any], actual: float) -> None:
    figure["actual"] = actual
    low, high = figure["low"], figure["high"]
    figure["inside"] = None if low is None or high is None else low <= actual <= high
