"""Benchmark: `nurture report --attribution` (services/attribution_report.py) over a large
generated history.

Generates, seeded (every run the same data), into a fresh SQLite file or a fresh
PostgreSQL database (--database-url: the server; the database is dropped after):
--leads leads (bench/generate_leads.py's profiles and segments), an enrollment each in
its segment's sequence, --touches sends spread over them (a few busy leads, most quiet,
over the 120 days before the generator's moment), and --outcomes opportunities (40% won,
30% lost, 30% open) for as many leads, each of which became an SQL (MQL, SQL, accepted
rows) before its opportunity opened, plus half as many SQLs again without one.

Then times, each twice (a cold and a warm run), with `ReportFilter()` (all time, all
segments): the attribution report (SQLs, pipeline and revenue per currency) by sequence
and by step, position-based; `nurture report`'s funnel and segments; `nurture
financial`'s model and forecast; and, as the floor, a count of every send (one scan of
the largest table). Targets: 1,000,000 leads,
10,000,000 touches and 50,000 outcomes on PostgreSQL in under 15 s; 100,000 leads on
SQLite in under 5 s.

    .venv/bin/python -m bench.attribution                 # 100,000 leads, SQLite
    .venv/bin/python -m bench.attribution --leads 1000000 --touches 10000000 \\
        --outcomes 50000 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import create_engine, func, make_url, select, text

from bench.generate_leads import NOW, REPO, _store, generate
from bench.saturation import fresh_postgres
from models.db import (
    AMOUNT_SCALE,
    Enrollment,
    Lead,
    Message,
    Opportunity,
    StageChange,
    make_engine,
    session_factory,
)
from models.definition_set import Definitions
from services.attribution_report import attribution
from services.definitions import load_definitions
from services.financial_report import financial_model, pipeline_forecast
from services.reports import ReportFilter, build_report

DAYS = 120
TARGETS = {"postgresql": 15.0, "sqlite": 5.0}
ENROLLMENT_COLUMNS = ("id", "lead_id", "sequence_id", "sequence_version", "segment",
                      "workflow_id", "status", "started_at")  # fmt: skip
MESSAGE_COLUMNS = ("id", "send_key", "lead_id", "enrollment_id", "step_id", "channel",
                   "template", "recipient", "body", "status", "counts_for_caps",
                   "created_at", "sent_at")  # fmt: skip
STAGE_COLUMNS = ("lead_id", "change_key", "from_stage", "to_stage", "reason", "created_at")
OPPORTUNITY_COLUMNS = ("id", "crm_id", "lead_id", "status", "crm_stage", "amount_units",
                       "currency", "opened_at", "closed_at", "updated_at", "reopened",
                       "events", "refolded_at")  # fmt: skip


def history(url: str, definitions: Definitions, leads: int, touches: int, outcomes: int,
            seed: int = 11) -> float:  # fmt: skip
    """Generate the history into `url`; returns the seconds it took."""
    started = time.perf_counter()
    generate(url, definitions, leads, 0, seed=seed)
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(select(Lead.id, Lead.segment, Lead.created_at)).all()
    rows.sort()  # the database's order is not the generator's: sort for the seed's sake
    steps = _steps_by_segment(definitions)
    rng = random.Random(seed)
    _store(engine, Enrollment.__table__, ENROLLMENT_COLUMNS, _enrollments(rows, steps))
    _store(engine, Message.__table__, MESSAGE_COLUMNS, _messages(rng, rows, steps, touches))
    chosen = rng.sample(range(len(rows)), min(len(rows), outcomes * 3 // 2))
    sqls = [(rows[i][0], NOW - timedelta(days=rng.uniform(5, DAYS - 10))) for i in chosen]
    _store(engine, StageChange.__table__, STAGE_COLUMNS, _stage_changes(sqls))
    _store(engine, Opportunity.__table__, OPPORTUNITY_COLUMNS,
           _opportunities(rng, sqls[:outcomes]))  # fmt: skip
    if engine.dialect.name == "postgresql":  # as autovacuum would: index-only scans need it
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE messages")
    engine.dispose()
    return time.perf_counter() - started


def _steps_by_segment(definitions: Definitions) -> dict[str, tuple[str, list[str]]]:
    """Each segment's sequence and the IDs of its sending steps."""
    segments = [*definitions.segments.segments, definitions.segments.default]
    found = {}
    for segment in segments:
        sequence = definitions.sequences[segment.sequence]
        sends = [step.id for step in sequence.steps if step.type in ("email", "sms")]
        found[segment.id] = (sequence.id, sends)
    return found


def _enrollments(rows, steps) -> Iterator[tuple]:
    for lead_id, segment, created in rows:
        yield (f"{lead_id}-1", lead_id, steps[segment][0], 1, segment, f"lead-{lead_id}",
               "active", created)  # fmt: skip


def _messages(rng: random.Random, rows, steps, touches: int) -> Iterator[tuple]:
    """`touches` sends, lognormal activity per lead, each at a step of its sequence."""
    weights = [math.exp(rng.gauss(0, 1)) for _ in rows]
    owners = rng.choices(range(len(rows)), weights, k=touches) if rows else []
    draw, bits, span = rng.random, rng.getrandbits, DAYS * 86400
    for n, owner in enumerate(owners):
        lead_id, segment, _created = rows[owner]
        _sequence, sends = steps[segment]
        step = sends[n % len(sends)]
        sent = NOW - timedelta(seconds=draw() * span)
        yield (f"{bits(128):032x}", f"bench-{n}", lead_id, f"{lead_id}-1", step, "email",
               step, "lead@example.com", "", "sent", True, sent, sent)  # fmt: skip


def _stage_changes(sqls) -> Iterator[tuple]:
    for lead_id, at in sqls:
        for n, (before, after) in enumerate((("lead", "mql"), ("mql", "sql"),
                                             ("sql", "accepted"))):  # fmt: skip
            yield (lead_id, f"bench-{after}", before, after, "bench",
                   at + timedelta(hours=n - 24 if after == "mql" else n))  # fmt: skip


def _opportunities(rng: random.Random, sqls) -> Iterator[tuple]:
    for n, (lead_id, at) in enumerate(sqls):
        opened = at + timedelta(days=rng.uniform(1, 5))
        status = rng.choices(["won", "lost", "open"], [4, 3, 3])[0]
        closed = opened + timedelta(days=rng.uniform(3, 30)) if status != "open" else None
        amount = rng.choice([5_000, 12_000, 25_000, 60_000]) * AMOUNT_SCALE
        yield (f"{rng.getrandbits(128):032x}", f"bench-opp-{n}", lead_id, status, "stage",
               amount, rng.choice(["USD", "USD", "USD", "EUR"]), opened, closed,
               closed or opened, 0, 2, NOW)  # fmt: skip


def timed(label: str, work) -> float:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"  {label:46}{seconds:8.2f} s", flush=True)
    return seconds


def measure(url: str) -> dict[str, float]:
    engine = make_engine(url)
    sessions = session_factory(engine)
    flt, figures = ReportFilter(), {}
    with sessions() as session:
        for run in ("cold", "warm"):
            print(f" {run}:")
            figures[f"floor {run}"] = timed("floor: count every send", lambda: session.scalar(
                select(func.count()).select_from(Message)))  # fmt: skip
            for by in ("sequence", "step"):
                figures[f"{by} {run}"] = timed(
                    f"attribution, position_based, by {by}",
                    lambda by=by: attribution(session, flt, "position_based", by),
                )  # fmt: skip
            figures[f"report {run}"] = timed("nurture report: funnel and segments",
                lambda: build_report(session, flt, ("funnel", "segments")))  # fmt: skip
            figures[f"financial {run}"] = timed("nurture financial --by segment",
                lambda: financial_model(session, flt, "segment"))  # fmt: skip
            figures[f"forecast {run}"] = timed("nurture financial --forecast",
                lambda: pipeline_forecast(session, "segment", NOW))  # fmt: skip
    engine.dispose()
    return figures


def _fresh(stack: contextlib.ExitStack, args: argparse.Namespace) -> str:
    """A new database: on the PostgreSQL server given, else a SQLite file (both dropped
    afterwards unless --keep)."""
    if args.keep:
        scratch = tempfile.mkdtemp(prefix="bench-attribution-")
    else:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-attribution-"))
    if not args.database_url:
        return f"sqlite:///{scratch}/nurture.db"
    if args.keep:
        name = f"bench_attribution_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return make_url(args.database_url).set(database=name).render_as_string(False)
    return stack.enter_context(fresh_postgres(args.database_url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--touches", type=int, default=1_000_000)
    parser.add_argument("--outcomes", type=int, default=5_000)
    parser.add_argument("--database-url", help="a PostgreSQL server (a fresh database)")
    parser.add_argument(
        "--measure", metavar="URL", help="only measure, on a database generated before (see --keep)"
    )
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated database and print its URL")  # fmt: skip
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.measure or _fresh(stack, args)
        if not args.measure:
            seconds = history(url, load_definitions(REPO), args.leads, args.touches,
                              args.outcomes)  # fmt: skip
            print(f"generated {args.leads:,} leads, {args.touches:,} touches, "
                  f"{args.outcomes:,} opportunities in {seconds:.0f} s", flush=True)  # fmt: skip
            if args.keep:
                print(f"kept: --measure {url}")
        figures = measure(url)
    kind = "postgresql" if url.startswith("postgresql") else "sqlite"
    worst = max(figures[f"{by} {run}"] for by in ("sequence", "step") for run in ("cold", "warm"))
    print(f"attribution (the slowest run): {worst:.2f} s; target on {kind} "
          f"{TARGETS[kind]:g} s: {'met' if worst < TARGETS[kind] else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
