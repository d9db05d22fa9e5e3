"""`nurture financial`: the financial model, the pipeline forecast and its backtest
(the work is services/financial_report.py; the rules sales/financial.py).

Exit codes: 0 reported; 1 a costs file with problems (each listed); 2 bad usage.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

errors = Console(stderr=True, soft_wrap=True)
PIPE_WIDTH = 200  # as `nurture report`: tables written to a pipe stay whole


def financial(
    by: str = typer.Option("segment", "--by", help="segment, source, sequence or campaign"),
    cohort: str = typer.Option(
        None, "--cohort", metavar="month", help="also the table per monthly cohort: month"
    ),
    show_forecast: bool = typer.Option(
        False, "--forecast", help="instead: the open pipeline and the won revenue it should bring"
    ),
    as_of: str = typer.Option(
        None, "--as-of", metavar="DATE", help="the forecast as of this moment (2026-10-01)"
    ),
    backtest_forecast: bool = typer.Option(
        False,
        "--backtest-forecast",
        help="instead: the forecast as of --as-of beside what its pipeline actually won",
    ),  # fmt: skip
    costs: Path = typer.Option(
        None,
        "--costs",
        metavar="FILE",
        help="costs.yaml or a CSV (default: costs.yaml in the definitions directory, if any)",
    ),  # fmt: skip
    since: str = typer.Option(None, help="leads created from this moment (2026-01-01, 90d)"),
    until: str = typer.Option(None, help="leads created before this moment (a date: its end)"),
    as_json: bool = typer.Option(False, "--json", help="as JSON"),
) -> None:
    """What leads become in money: the funnel lead → MQL → SQL → opportunity → won per
    segment, source, sequence or campaign, and per monthly cohort; conversion rates,
    median days between stages, win rate, deal size, revenue per lead and per SQL, the
    sales cycle, and cost per lead, per SQL and CAC where costs are given. Amounts are
    per currency, never summed across.

    With --forecast: the open SQLs and opportunities × the historical
    rates × deal size, with an interval from the spread of past cohorts.
    With --backtest-forecast --as-of DATE: that forecast from what was
    known at DATE, beside what its pipeline actually won.

    Examples:
      nurture financial --by source --cohort month
      nurture financial --costs spend.csv --since 2026-01-01 --json
      nurture financial --forecast
      nurture financial --backtest-forecast --as-of 2026-06-01

    Exit codes: 0 reported; 1 a costs file with problems; 2 bad usage.
    """
    from models.db import utcnow
    from services.financial_report import DIMENSIONS
    from services.reports import ReportFilter, parse_moment

    if by not in DIMENSIONS:
        raise _usage(f"--by: one of {', '.join(DIMENSIONS)}, not {by!r}")
    if cohort not in (None, "month"):
        raise _usage(f"--cohort: month, not {cohort!r}")
    if backtest_forecast and not as_of:
        raise _usage("--backtest-forecast needs --as-of DATE")
    if as_of and not (show_forecast or backtest_forecast):
        raise _usage("--as-of goes with --forecast or --backtest-forecast")
    now = utcnow()
    try:
        moment = parse_moment(as_of, now) if as_of else None
        flt = ReportFilter(since=parse_moment(since, now) if since else None,
                           until=parse_moment(until, now, end=True) if until else None)  # fmt: skip
    except ValueError as exc:
        raise _usage(str(exc)) from None
    if show_forecast or backtest_forecast:
        data = _read(lambda s, f: (f.forecast_backtest(s, by, moment) if backtest_forecast
                                   else f.pipeline_forecast(s, by, moment)))  # fmt: skip
        data = {"backtest" if backtest_forecast else "forecast": data, "by": by}
    else:
        entries = _costs(costs)
        data = _read(lambda s, f: f.financial_model(s, flt, by, entries))
        if not cohort:
            data.pop("cohorts")
    _show(data, as_json)


def _costs(path: Path | None) -> list:
    """The cost entries of --costs, else of the definitions' costs.yaml, else none."""
    from infra.settings import get_settings
    from models.costs import COSTS_FILE, check_costs

    if path is None:
        path = Path(get_settings().definitions_dir) / COSTS_FILE
        if not path.exists():
            return []
    elif not path.is_file():
        raise _usage(f"--costs: no file {str(path)!r}")
    entries, problems = check_costs(path)
    for problem in problems:
        errors.print(f"error {problem}", highlight=False, markup=False)
    if problems:
        errors.print("fix the costs above (see docs/definitions.md, Costs)", highlight=False)
        raise typer.Exit(1)
    return entries


def _read(work):
    from infra.settings import get_settings
    from services import financial_report
    from services.runtime import open_database

    database = open_database(get_settings())
    try:
        with database.sessions() as session:
            return work(session, financial_report)
    finally:
        database.engine.dispose()


def _usage(message: str) -> typer.Exit:
    errors.print(message, highlight=False, markup=False)
    return typer.Exit(2)


def _show(data: dict, as_json: bool) -> None:
    from services.json_output import dumps

    if as_json:
        print(dumps(data))
        return
    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    if "forecast" in data:
        _forecast_table(console, data["forecast"], data["by"])
    elif "backtest" in data:
        _backtest_table(console, data["backtest"], data["by"])
    else:
        _model_tables(console, data)
        if "cohorts" in data:
            _cohort_table(console, data)


# --- the tables ----------------------------------------------------------------------------------


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:g}d"


def _currencies(row: dict, *names: str) -> list[str]:
    return sorted({c for name in names for c in row[name]}) or ["-"]


def _model_tables(console: Console, data: dict) -> None:
    rows = [*data["groups"], data["total"]]
    funnel = Table(data["by"], "leads", "MQL", "SQL", "opp.", "won", "→MQL", "→SQL", "→opp.",
                   "→won", "SQL→won", title="funnel: reached (rate from the stage before), "
                   "median days from the stage before", title_justify="left")  # fmt: skip
    for row in rows:
        reached = [f"{row[s]} ({_pct(row['rates'][s])})" for s in ("mql", "sql", "opportunity",
                                                                     "won")]  # fmt: skip
        days = [_days(row["median_days"][s]) for s in ("mql", "sql", "opportunity", "won")]
        funnel.add_row(row["key"], str(row["leads"]), *reached, *days,
                       _days(row["sales_cycle_days"]))  # fmt: skip
    console.print(funnel)
    money = Table(data["by"], "currency", "win rate", "avg deal", "revenue", "per lead",
                  "per SQL", "cost", "cost/lead", "cost/SQL", "CAC",
                  title="money (win rate: won of closed opportunities)",
                  title_justify="left")  # fmt: skip
    for row in rows:
        for currency in _currencies(row, "revenue", "cost"):
            cells = [_num(row[name].get(currency)) if currency in row[name] else "-"
                     for name in ("average_deal", "revenue", "revenue_per_lead",
                                  "revenue_per_sql", "cost", "cost_per_lead", "cost_per_sql",
                                  "cac")]  # fmt: skip
            money.add_row(row["key"], currency, _pct(row["win_rate"]), *cells)
    console.print(money)


def _cohort_table(console: Console, data: dict) -> None:
    table = Table(data["by"], "cohort", "leads", "MQL", "SQL", "opp.", "won", "win rate",
                  "revenue", "cost", "CAC", title="by monthly cohort (the month leads were "
                  "created)", title_justify="left")  # fmt: skip
    for row in data["cohorts"]:
        money = [", ".join(f"{c} {_num(v)}" for c, v in row[name].items()) or "-"
                 for name in ("revenue", "cost", "cac")]  # fmt: skip
        table.add_row(row["key"], row["cohort"], str(row["leads"]), str(row["mql"]),
                      str(row["sql"]), str(row["opportunity"]), str(row["won"]),
                      _pct(row["win_rate"]), *money)  # fmt: skip
    console.print(table)


def _figure(figure: dict, digits: int = 2) -> list[str]:
    low, high = figure["low"], figure["high"]
    interval = "-" if low is None or high is None else f"{_num(low, digits)} - {_num(high, digits)}"
    return [_num(figure["expected"], digits), interval]


def _rates_line(console: Console, forecast: dict) -> None:
    rates = forecast["rates"]
    used = [c["cohort"] for c in rates["cohorts"] if c["used"]]
    console.print(
        f"as of {str(forecast['as_of'])[:16]}: "
        f"SQL → opportunity {_pct(rates['sql_to_opportunity'])} "
        f"({rates['settled_sqls']} settled SQLs), win rate {_pct(rates['win_rate'])} "
        f"({rates['closed_opportunities']} closed); interval: {rates['interval']}: "
        f"{', '.join(used) or 'none yet'}", highlight=False, markup=False,
    )  # fmt: skip


def _measures(row: dict) -> list[tuple[str, dict]]:
    return [("wins", row["wins"])] + [(f"revenue {c}", f) for c, f in row["revenue"].items()]


def _forecast_table(console: Console, forecast: dict, by: str) -> None:
    _rates_line(console, forecast)
    table = Table(by, "open SQLs", "open opp.", "measure", "expected", "interval",
                  title="pipeline forecast", title_justify="left")  # fmt: skip
    for row in [*forecast["rows"], forecast["total"]]:
        for index, (name, figure) in enumerate(_measures(row)):
            first = index == 0
            table.add_row(row["key"] if first else "", str(row["open_sqls"]) if first else "",
                          str(row["open_opportunities"]) if first else "", name,
                          *_figure(figure))  # fmt: skip
    console.print(table)


def _backtest_table(console: Console, backtest: dict, by: str) -> None:
    _rates_line(console, backtest)
    table = Table(by, "measure", "forecast", "interval", "actual", "inside",
                  title="forecast as of then, and what its pipeline won since",
                  title_justify="left")  # fmt: skip
    for row in [*backtest["rows"], backtest["total"]]:
        for index, (name, figure) in enumerate(_measures(row)):
            inside = {True: "yes", False: "no", None: "-"}[figure["inside"]]
            table.add_row(row["key"] if index == 0 else "", name, *_figure(figure),
                          _num(figure["actual"]), inside)  # fmt: skip
    console.print(table)
