"""`nurture status`, `nurture leads` and `nurture report`: looking at leads and results.

Registered on the `nurture` app at the end of cli/app.py. Exit codes: 0 ok; 1 the
command ran and failed (no such lead, definitions with errors); 2 bad usage. Colours
only on a terminal; `--json` (and `--csv`) for scripts, on stdout.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sys

import typer
from rich.console import Console
from rich.table import Column, Table

from cli.common import fail_on_definition_errors, load
from services.json_output import dumps, iso

errors = Console(stderr=True, soft_wrap=True)
PIPE_WIDTH = 200  # tables written to a pipe or a file: wide enough to stay whole
STAGES = (
    "lead",
    "mql",
    "pql",
    "sql",
    "accepted",
    "disqualified",
    "opportunity",
    "customer",
    "closed_lost",
)


def _console() -> Console:
    """stdout: colours only on a terminal (rich decides; NO_COLOR is honoured), and tables
    not squeezed to 80 columns when piped (COLUMNS still wins)."""
    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def _database():
    from infra.settings import get_settings
    from services.runtime import open_database

    settings = get_settings()
    return settings, open_database(settings)


def _bad_usage(message: str) -> typer.Exit:
    errors.print(message, highlight=False, markup=False)
    return typer.Exit(2)


# --- status ----------------------------------------------------------------------------------


def status(
    lead: str = typer.Argument(..., help="the lead's email address or ID"),
    as_json: bool = typer.Option(False, "--json", help="everything as one JSON document"),
    timeout: float = typer.Option(
        5.0, min=0.1, help="seconds to wait for Temporal before showing the database part alone"
    ),
) -> None:
    """Everything about one lead, from the database and from its workflow.

    Profile and consent, the score card with its reasons, the stage history,
    enrollments, each message sent with the responses it got, the other responses,
    handoffs, the experiments the lead is in (its arm, a holdout or not, when assigned);
    and from the workflow's `state` query the current sequence step, the next
    action time, what it waits for, any deferred send and the open handoff.

    If Temporal is not reachable, the database part is shown with a note (exit 0).

    Examples:
      nurture status ada@example.com
      nurture status 3f2a9c0d... --json | jq .workflow.state.next_action_at

    Exit codes: 0 shown; 1 no such lead or definitions with errors; 2 bad usage.
    """
    from models.db import Lead, utcnow
    from services.status import lead_status, print_status, workflow_status

    settings, database = _database()
    definitions = fail_on_definition_errors(lambda: load(settings))
    now = utcnow()
    try:
        with database.sessions() as session:
            row = Lead.find(session, lead)
            if row is None:
                errors.print(f"no lead {lead!r} (give an email address or a lead ID)",
                             highlight=False, markup=False)  # fmt: skip
                raise typer.Exit(1)
            data = lead_status(session, definitions, row, now)
    finally:
        database.engine.dispose()
    data["workflow"] = asyncio.run(workflow_status(settings, data["lead"]["id"], timeout))
    if as_json:
        print(dumps(data))
    else:
        print_status(_console(), data, now)


# --- leads -----------------------------------------------------------------------------------

LEAD_COLUMNS = ("id", "email", "first_name", "last_name", "company", "segment", "stage",
                "score", "grade", "created_at")  # fmt: skip


def leads(
    stage: list[str] = typer.Option(
        None, "--stage", help=f"only leads at this stage (repeat for several): {', '.join(STAGES)}"
    ),
    segment: list[str] = typer.Option(
        None, "--segment", help="only leads of this segment (repeat for several; '(none)')"
    ),
    min_score: float = typer.Option(None, "--min-score", help="only scores >= this (0-100)"),
    max_score: float = typer.Option(None, "--max-score", help="only scores <= this (0-100)"),
    sequence: str = typer.Option(None, help="only leads ever enrolled in this sequence"),
    limit: int = typer.Option(100, min=0, help="at most this many, newest first; 0: all"),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout (all columns)"),
    as_json: bool = typer.Option(False, "--json", help="a JSON array on stdout"),
) -> None:
    """List leads, newest first, filtered by stage, segment, score and sequence.

    A table (email, name, company, segment, stage, score, grade, created), or CSV or
    JSON on stdout for scripts (with the lead ID too).

    Examples:
      nurture leads --stage mql --stage sql --min-score 40
      nurture leads --segment enterprise --sequence enterprise_content --limit 0 --csv > leads.csv

    Exit codes: 0 listed (also when none match); 2 bad usage.
    """
    _check_leads_options(stage, min_score, max_score, as_csv, as_json)
    query = _leads_query(stage, segment, min_score, max_score, sequence, limit)
    rows = _fetch_leads(query)
    if as_json:
        print(dumps(rows))
    elif as_csv:
        _write_leads_csv(rows)
    else:
        _print_leads(_console(), rows, limit)


def _check_leads_options(
    stage: list[str] | None,
    min_score: float | None,
    max_score: float | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Bad usage (exit 2) before the database is opened."""
    if as_csv and as_json:
        raise _bad_usage("give --csv or --json, not both")
    unknown = [s for s in stage or () if s not in STAGES]
    if unknown:
        raise _bad_usage(f"unknown stage {unknown[0]!r}; one of {', '.join(STAGES)}")
    if min_score is not None and max_score is not None and min_score > max_score:
        raise _bad_usage(f"--min-score {min_score:g} is above --max-score {max_score:g}")


def _leads_query(
    stage: list[str] | None,
    segment: list[str] | None,
    min_score: float | None,
    max_score: float | None,
    sequence: str | None,
    limit: int,
):
    """The leads the filters select, newest first (the ID breaks ties)."""
    from sqlalchemy import or_, select

    from models.db import Enrollment, Lead

    query = select(Lead).order_by(Lead.created_at.desc(), Lead.id)
    if stage:
        query = query.where(Lead.stage.in_(stage))
    if segment:  # "(none)": the leads without one
        named = [s for s in segment if s != "(none)"]
        query = query.where(or_(Lead.segment.in_(named), *(
            [Lead.segment.is_(None)] if "(none)" in segment else []
        )))  # fmt: skip
    if min_score is not None:
        query = query.where(Lead.score >= min_score)
    if max_score is not None:
        query = query.where(Lead.score <= max_score)
    if sequence:
        enrolled = select(Enrollment.id).where(
            Enrollment.lead_id == Lead.id, Enrollment.sequence_id == sequence
        )
        query = query.where(enrolled.exists())
    if limit:
        query = query.limit(limit)
    return query


def _fetch_leads(query) -> list[dict]:
    """The selected leads as rows of LEAD_COLUMNS (JSON-ready)."""
    _settings, database = _database()
    try:
        with database.sessions() as session:
            return [
                {c: getattr(lead, c) for c in LEAD_COLUMNS}
                | {"score": round(lead.score, 2), "created_at": iso(lead.created_at)}
                for lead in session.scalars(query)
            ]  # fmt: skip
    finally:
        database.engine.dispose()


def _write_leads_csv(rows: list[dict]) -> None:
    writer = csv.DictWriter(sys.stdout, LEAD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def _print_leads(console: Console, rows: list[dict], limit: int) -> None:
    # Emails and segments fold rather than end in "…" (they are what one copies from
    # here), and an email has the room for a whole address where the terminal allows.
    email_width = min(console.width // 4, max((len(row["email"]) for row in rows), default=5))
    table = Table(Column("email", overflow="fold", min_width=email_width), "name", "company",
                  Column("segment", overflow="fold"), "stage", "score", "grade",
                  Column("created", no_wrap=True))  # fmt: skip
    for row in rows:
        name = " ".join(filter(None, (row["first_name"], row["last_name"])))
        table.add_row(row["email"], name, row["company"] or "", row["segment"] or "",
                      row["stage"], f"{row['score']:.1f}", row["grade"] or "",
                      row["created_at"][:10])  # fmt: skip
    console.print(table)
    more = " (--limit reached: --limit 0 lists all)" if limit and len(rows) == limit else ""
    console.print(f"{len(rows)} lead(s){more}", highlight=False)


# --- report ----------------------------------------------------------------------------------


def report(
    since: str = typer.Option(
        None, help="from this moment: 2024-05-01, 2024-05-01T09:30 (UTC) or 30d/12h/2w ago"
    ),
    until: str = typer.Option(
        None, help="before this moment (a bare date includes that whole day); as --since"
    ),
    segment: list[str] = typer.Option(
        None, "--segment", help="only leads of this segment (repeat for several; '(none)')"
    ),
    section: list[str] = typer.Option(
        None, "--section", help="only these parts: funnel, sequences, steps, segments (repeat)"
    ),
    as_csv: bool = typer.Option(False, "--csv", help="one CSV on stdout, with a `section` column"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
    attribution: str = typer.Option(
        None,
        "--attribution",
        metavar="MODEL",
        help="instead: SQLs, pipeline and revenue "
        "credited by MODEL (first_touch, last_touch, linear, position_based)",
    ),  # fmt: skip
    by: str = typer.Option(
        "sequence",
        "--by",
        help="with --attribution: sequence, step, segment, source, campaign or medium",
    ),
    explain_key: str = typer.Option(
        None, "--explain", metavar="KEY", help="with --attribution: the leads behind KEY"
    ),
) -> None:
    """Report the funnel, each sequence and step, and each segment, over a date range.

    The funnel lead -> MQL -> SQL -> accepted -> opportunity -> won (the last two from
    the CRM's outcomes) with conversion rates and median times between stages; per
    sequence and per step the sends and what came of them (delivered, opened, clicked,
    replied, unsubscribed, bounced) and the SQLs each was the first or last touch of;
    per sequence its goal conversion (leads enrolled, goals met, their share);
    the funnel per segment, with its won revenue per currency. A table, CSV or JSON.

    --since/--until select leads by creation (funnel, segments), sends by the time
    they went out (sequences, steps) and enrollments by their start (goals). Counts are
    explained in the README (Reports).

    Examples:
      nurture report
      nurture report --since 2024-05-01 --until 2024-05-31 --segment enterprise
      nurture report --since 30d --section steps --csv > steps.csv
      nurture report --json | jq .funnel
      nurture report --attribution position_based --by step
      nurture report --attribution linear --explain welcome

    Exit codes: 0 reported; 2 bad usage (a date that is not one, an unknown section).
    """
    flt, sections = _report_options(since, until, segment, section, as_csv, as_json)
    if attribution or explain_key:
        from cli.attribution import attribution_report

        return attribution_report(flt, attribution, by, explain_key, as_json, as_csv)
    data = _build_report(flt, sections)
    if as_json:
        print(dumps(data))
    elif as_csv:
        from services.reports import to_csv

        sys.stdout.write(to_csv(data, sections))
    else:
        _print_report(_console(), data, sections)


def _report_options(
    since: str | None,
    until: str | None,
    segment: list[str] | None,
    section: list[str] | None,
    as_csv: bool,
    as_json: bool,
):
    """The report's filter and sections (in their fixed order) from the options; bad usage
    (exit 2) before the database is opened."""
    from models.db import utcnow
    from services.reports import SECTIONS, ReportFilter, parse_moment

    if as_csv and as_json:
        raise _bad_usage("give --csv or --json, not both")
    unknown = [s for s in section or () if s not in SECTIONS]
    if unknown:
        raise _bad_usage(f"unknown section {unknown[0]!r}; one of {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in (section or SECTIONS)]
    now = utcnow()
    try:
        start = parse_moment(since, now) if since else None
        end = parse_moment(until, now, end=True) if until else None
    except ValueError as exc:
        raise _bad_usage(f"--since/--until: {exc}") from None
    if start and end and start >= end:
        raise _bad_usage(
            f"--since {start:%Y-%m-%d %H:%M} is not before --until {end:%Y-%m-%d %H:%M}"
        )
    return ReportFilter(since=start, until=end, segments=tuple(segment or ())), sections


def _build_report(flt, sections: list[str]) -> dict:
    """The report from the database, after analyzing tables PostgreSQL has no statistics
    for (without them the planner may pick a plan that runs for hours)."""
    from services.reports import analyze_never_analyzed, build_report

    _settings, database = _database()
    try:
        analyzed, problem = analyze_never_analyzed(database.engine)
        if analyzed:
            errors.print(f"analyzed {', '.join(analyzed)}: PostgreSQL had no statistics for "
                         "them yet (is autovacuum off?)", highlight=False)  # fmt: skip
        if problem:
            errors.print(f"could not analyze tables without statistics ({problem}): "
                         "the report may be slow; run ANALYZE", highlight=False,
                         markup=False)  # fmt: skip
        with database.sessions() as session:
            return build_report(session, flt, sections)
    finally:
        database.engine.dispose()


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _print_report(console: Console, data: dict, sections: list[str]) -> None:
    from services.status import duration

    flt = data["filter"]
    scope = [f"from {flt['since'][:16]}" if flt["since"] else "",
             f"until {flt['until'][:16]}" if flt["until"] else "",
             f"segments {', '.join(flt['segments'])}" if flt["segments"] else ""]  # fmt: skip
    console.print("report: " + (" ".join(p for p in scope if p) or "all time, all segments"),
                  highlight=False)  # fmt: skip
    if "funnel" in sections:
        title = "funnel (leads created in the range)"
        table = Table("stage", "leads", "from previous", "of all leads",
                      "median time from previous", title=title)  # fmt: skip
        for row in data["funnel"]["stages"]:
            median = row["median_seconds_from_previous"]
            timed = f" ({row['timed_leads']} leads)" if row["timed_leads"] else ""
            table.add_row(row["stage"], str(row["reached"]), _pct(row["rate_from_previous"]),
                          _pct(row["rate_from_leads"]),
                          (duration(median) + timed) if median is not None else "-")  # fmt: skip
        console.print(table)
    if "sequences" in sections or "steps" in sections:
        _print_sends(console, data, sections)
    if "segments" in sections:
        _print_segments(console, data["segments"])


def _print_segments(console: Console, segments: list[dict]) -> None:
    table = Table("segment", "leads", "MQL", "SQL", "accepted", "lead→MQL", "MQL→SQL",
                  "SQL→accepted", "overall", "opp.", "won", "accepted→opp.", "opp.→won",
                  "won revenue", title="by segment")  # fmt: skip
    for row in segments:
        revenue = "\n".join(f"{currency} {amount:,}"
                            for currency, amount in row["won_revenue"].items())  # fmt: skip
        table.add_row(row["segment"], str(row["leads"]), str(row["mql"]), str(row["sql"]),
                      str(row["accepted"]), _pct(row["mql_rate"]), _pct(row["sql_rate"]),
                      _pct(row["accepted_rate"]), _pct(row["overall_rate"]),
                      str(row["opportunity"]), str(row["won"]), _pct(row["opportunity_rate"]),
                      _pct(row["won_rate"]), revenue or "-")  # fmt: skip
    console.print(table)


def _print_sends(console: Console, data: dict, sections: list[str]) -> None:
    """One table per sequence (its steps, then its total), so step names have the room."""

    def cells(row: dict) -> list[str]:
        def share(name: str) -> str:
            n, of = row[name], row["recipients"]
            return f"{n} ({n / of * 100:.0f}%)" if of and n else str(n)

        return [str(row["sent"]), str(row["recipients"]), share("delivered"), share("opened"),
                share("clicked"), share("replied"), share("unsubscribed"), share("bounced"),
                str(row["sql_first_touch"]), str(row["sql_last_touch"])]  # fmt: skip

    def table(title: str, width: int) -> Table:
        return Table(Column("step", no_wrap=True, min_width=width), "ch", "sent", "leads",
                     "deliv.", "opened", "clicked", "replied", "unsub.", "bounced", "SQL 1st",
                     "SQL last", title=title, title_justify="left")  # fmt: skip

    steps = data.get("steps", [])
    names = [row["sequence"] for row in data.get("sequences", [])]
    names += [name for name in dict.fromkeys(s["sequence"] for s in steps) if name not in names]
    if not names:
        console.print("no sends in the range")
        return
    totals = {row["sequence"]: row for row in data.get("sequences", [])}
    console.print("sends in the range; the other columns count leads (each once, and its "
                  "share of the leads sent to)", highlight=False)  # fmt: skip
    for name in names:
        own = [s for s in steps if s["sequence"] == name]
        rows = table(f"sequence {name}", max([len("(all steps)")] + [len(s["step"]) for s in own]))
        for step in own:
            rows.add_row(step["step"], step["channel"], *cells(step))
        if name in totals:
            rows.add_section()
            rows.add_row("(all steps)", "", *cells(totals[name]), style="bold")
        console.print(rows)
        _print_goals(console, totals.get(name))


def _print_goals(console: Console, total: dict | None) -> None:
    """A sequence's goal conversion, when a goal was met (a sequence without goals: none)."""
    if total and total["goals_met"]:
        console.print(f"goals met: {total['goals_met']} of the {total['enrolled']} leads "
                      f"enrolled in the range ({_pct(total['goal_rate'])})",
                      highlight=False)  # fmt: skip
