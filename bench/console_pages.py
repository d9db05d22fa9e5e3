"""Benchmark: the console's pages and the lead search, server time at 100,000 leads.

Generates, seeded (every run the same data), into a fresh PostgreSQL database
(--database-url: the server; the database is dropped after unless --keep) or a SQLite
file: --leads leads with bench/generate_leads.py's profiles and --responses responses,
an enrollment each and --sends sends (bench/attribution.py's), 5% of the leads taken
to SQL and accepted (stage changes, a handoff to a rep of sales.yaml with its events,
a third with an opportunity), and a score history for every lead (a few score changes
each; the lead's score, stage and last activity follow from them).

Then starts the API app in this process (api/app.py, its console included) on an
in-memory Temporal dev server with no worker (a lead page asks Temporal for the lead's
workflow, which the generated leads do not have), signs in as an admin through the
login form and times each console page: every GET under /console answering HTML without
path parameters, from the OpenAPI document (so pages added later are measured too), two
lead pages and one sequence page, --requests requests each, one at a time, over
in-process ASGI (server time: no network, no browser); then lead searches with several
filters. Printed: p50 and p95 per page and search, against the targets (page p95 under
200 ms; search under 300 ms).

    .venv/bin/python -m bench.console_pages --database-url \\
        postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.console_pages --leads 10000          # SQLite, smaller
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
from sqlalchemy import create_engine, make_url, select, text

from api.app import create_app
from bench.attribution import (
    ENROLLMENT_COLUMNS,
    MESSAGE_COLUMNS,
    OPPORTUNITY_COLUMNS,
    STAGE_COLUMNS,
    _enrollments,
    _messages,
    _opportunities,
    _stage_changes,
    _steps_by_segment,
)
from bench.common import ms, pct
from bench.generate_leads import NOW, REPO, _store, generate
from bench.saturation import fresh_postgres
from infra.settings import Settings
from models.db import (
    Enrollment,
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    Opportunity,
    SalesRepRow,
    ScoreChange,
    StageChange,
    as_utc,
    make_engine,
)
from models.definition_set import Definitions
from services import accounts
from services.definitions import load_definitions
from services.intake import Intake
from services.runtime import open_database
from testkit.stack import temporal_dev_server

SEED = 13
DAYS = 120
SQL_SHARE = 0.05
PAGE_TARGET = 0.200
SEARCH_TARGET = 0.300
ADMIN = ("bench-admin@example.com", "bench-admin-password-1")
SCORE_COLUMNS = ("lead_id", "event_id", "cause", "old_score", "new_score", "reason", "model",
                 "scored_at", "created_at")  # fmt: skip
HANDOFF_COLUMNS = ("id", "lead_id", "cycle", "rep_id", "score", "reason", "status",
                   "created_at", "grade", "due_at", "answered_at", "answered_by", "reminders",
                   "reassignments")  # fmt: skip
EVENT_COLUMNS = ("handoff_id", "key", "kind", "rep_id", "channel", "status", "attempts",
                 "created_at", "updated_at")  # fmt: skip
REP_COLUMNS = ("id", "name", "email", "phone", "active")


# --- the history -------------------------------------------------------------------------


def history(url: str, definitions: Definitions, leads: int, responses: int, sends: int) -> float:
    """Generate the console's history into `url`; returns the seconds it took."""
    started = time.perf_counter()
    generate(url, definitions, leads, responses, seed=SEED)
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = sorted(connection.execute(select(Lead.id, Lead.segment, Lead.created_at)).all())
    rng = random.Random(SEED)
    steps = _steps_by_segment(definitions)
    reps = definitions.sales.reps
    _store(engine, SalesRepRow.__table__, REP_COLUMNS,
           ((r.id, r.name, r.email, r.phone, True) for r in reps))  # fmt: skip
    _store(engine, Enrollment.__table__, ENROLLMENT_COLUMNS, _enrollments(rows, steps))
    _store(engine, Message.__table__, MESSAGE_COLUMNS, _messages(rng, rows, steps, sends))
    chosen = rng.sample(range(len(rows)), int(len(rows) * SQL_SHARE))
    sqls = [(rows[i][0], NOW - timedelta(days=rng.uniform(5, DAYS - 10))) for i in chosen]
    _store(engine, StageChange.__table__, STAGE_COLUMNS, _stage_changes(sqls))
    handoffs = list(_handoffs(rng, sqls, [r.id for r in reps]))
    _store(engine, Handoff.__table__, HANDOFF_COLUMNS, iter(handoffs))
    _store(engine, HandoffEvent.__table__, EVENT_COLUMNS, _handoff_events(handoffs))
    _store(engine, Opportunity.__table__, OPPORTUNITY_COLUMNS,
           _opportunities(rng, sqls[: len(sqls) // 3]))  # fmt: skip
    sql_leads = {lead_id for lead_id, _ in sqls}
    _store(engine, ScoreChange.__table__, SCORE_COLUMNS, _score_changes(rng, rows, sql_leads))
    _follow_score_changes(engine)
    engine.dispose()
    return time.perf_counter() - started


def _handoffs(rng: random.Random, sqls, rep_ids: list[str]) -> Iterator[tuple]:
    """An accepted handoff per SQL, an hour after it crossed, as rows of HANDOFF_COLUMNS."""
    for lead_id, at in sqls:
        crossed = at + timedelta(hours=1)
        rep = rng.choice(rep_ids)
        answered = crossed + timedelta(minutes=rng.uniform(5, 600))
        yield (f"{rng.getrandbits(128):032x}", lead_id, 1, rep, rng.uniform(70, 95),
               "bench: crossed SQL", "accepted", crossed, rng.choice("AB"),
               crossed + timedelta(hours=4), answered, rep, 0, 0)  # fmt: skip


def _handoff_events(handoffs: list[tuple]) -> Iterator[tuple]:
    """Each handoff's assignment, email notification and answer."""
    for row in handoffs:
        handoff = dict(zip(HANDOFF_COLUMNS, row, strict=True))
        rep, created, answered = handoff["rep_id"], handoff["created_at"], handoff["answered_at"]
        for key, kind, channel, status, at in (
            ("assigned", "assigned", None, "done", created),
            ("notify:email", "notified", "email", "sent", created),
            ("answer", "answered", None, "done", answered),
        ):
            yield (handoff["id"], key, kind, rep, channel, status, 1, at, at)


def _score_changes(rng: random.Random, rows, sql_leads: set[str]) -> Iterator[tuple]:
    """A few score changes a lead, rising then decaying; SQL leads end above 70."""
    for lead_id, _segment, created in rows:
        score, at = 0.0, as_utc(created)  # SQLite hands back naive UTC
        changes = rng.randint(1, 8)
        for n in range(changes):
            at = min(NOW, at + timedelta(hours=rng.uniform(1, 24 * DAYS / changes)))
            new = min(100.0, score + rng.uniform(-5, 20))
            if lead_id in sql_leads and n == changes - 1:
                new = max(new, rng.uniform(70, 95))
            new = round(max(0.0, new), 2)
            yield (lead_id, f"bench-{n}", "page.view", score, new, "bench", "default", at, at)
            score = new


def _follow_score_changes(engine) -> None:
    """Each lead's score, stage and last activity from its latest score change."""
    latest = ("(SELECT {column} FROM score_changes s WHERE s.lead_id = leads.id "
              "ORDER BY s.id DESC LIMIT 1)")  # fmt: skip
    with engine.begin() as connection:
        connection.execute(text(
            f"UPDATE leads SET score = {latest.format(column='new_score')}, "
            f"updated_at = {latest.format(column='created_at')}"
        ))  # fmt: skip
        connection.execute(text(
            "UPDATE leads SET stage = CASE WHEN EXISTS (SELECT 1 FROM handoffs h WHERE "
            "h.lead_id = leads.id) THEN 'accepted' WHEN score >= 35 THEN 'mql' ELSE stage END"
        ))  # fmt: skip
    if engine.dialect.name == "postgresql":  # as autovacuum would
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")


# --- the measurement ---------------------------------------------------------------------

# (label, query string of /console/leads): each filter alone, and together.
SEARCHES = [
    ("every lead, last activity first", ""),
    ("every lead, highest score first", "sort=score"),
    ("email contains", "email=lovelace"),
    ("email starts with", "email=ada.lovelace.1&match=prefix"),
    ("email that matches nothing", "email=nobody-at-all"),
    ("stage", "stage=accepted"),
    ("segment", "segment=enterprise_content"),
    ("score range", "score_min=40&score_max=60&sort=score"),
    ("sequence now", "sequence=saas_trial"),
    ("stage, score and sequence", "stage=mql&score_min=40&sequence=saas_trial&sort=score"),
    ("segment and email, page 3", "segment=general&email=chen&offset=100"),
]


def page_urls(app) -> list[str]:
    """The console's pages: every GET under /console answering HTML, without a path
    parameter, as the OpenAPI document lists them (every console route is in it); the
    sign-in page and the live feed's stream left out."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        answer = operations.get("get", {}).get("responses", {}).get("200", {})
        html = "text/html" in answer.get("content", {})
        if path.startswith("/console") and html and "{" not in path and path != "/console/login":
            found.append(path)
    return found


def lead_pages(url: str) -> list[tuple[str, str]]:
    """A typical lead's page and the busiest handed-off lead's (most responses)."""
    engine = make_engine(url)
    with engine.connect() as connection:
        half = connection.execute(text("SELECT count(*) / 2 FROM leads")).scalar()
        typical = connection.execute(
            text("SELECT id FROM leads ORDER BY id LIMIT 1 OFFSET :half"), {"half": half}
        ).scalar()
        busiest = connection.execute(text(
            "SELECT r.lead_id FROM responses r JOIN handoffs h ON h.lead_id = r.lead_id "
            "GROUP BY r.lead_id ORDER BY count(*) DESC, r.lead_id LIMIT 1")).scalar()  # fmt: skip
    engine.dispose()
    return [("a lead", f"/console/leads/{typical}"),
            ("the busiest handed-off lead", f"/console/leads/{busiest}")]  # fmt: skip


@contextlib.asynccontextmanager
async def signed_in_client(app, sessions) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of `app`, signed in as an admin through the login form."""
    with contextlib.suppress(accounts.AccountError):  # made by an earlier --measure
        accounts.add_user(sessions, "bench", ADMIN[0], "Bench admin", "admin", ADMIN[1], None,
                          set())  # fmt: skip
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is a figure
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        form = await http.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]
        answer = await http.post("/console/login", data={
            "email": ADMIN[0], "password": ADMIN[1], "csrf": csrf})  # fmt: skip
        assert answer.status_code == 303, answer.text
        yield http


async def timed(http: httpx.AsyncClient, url: str, requests: int) -> tuple[list[float], int]:
    """Server times of `requests` GETs of `url`, one at a time, after one to warm up."""
    status = (await http.get(url)).status_code
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = await http.get(url)
        times.append(time.perf_counter() - started)
        status = answer.status_code
    return times, status


async def figures_counted(http: httpx.AsyncClient, path: str, limit: float = 120) -> float:
    """Seconds until a sequence page's step figures are counted (a background count the
    page starts: pages timed while it runs share the machine with it)."""
    started = time.perf_counter()
    while "Figures counted" not in (await http.get(path)).text:
        if time.perf_counter() - started > limit:
            break
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


async def measure(url: str, requests: int) -> list[tuple[str, str, list[float], int, float]]:
    """(kind, label, times, status, target) for every page and search."""
    definitions = load_definitions(REPO)
    async with temporal_dev_server() as env, _state_dir() as state:
        settings = Settings(
            NURTURE_STATE_DIR=state, NURTURE_DEFINITIONS=REPO, DATABASE_URL=url,
            TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
            NURTURE_API_TOKEN="bench", NURTURE_SECRET_KEY="bench-secret-key",
        )  # fmt: skip
        database = open_database(settings)
        intake = Intake(definitions, database.sessions, env.client, "bench")
        app = create_app(intake, settings, relay=False)
        sequence = next(iter(sorted(definitions.sequences)))
        # The baseline, in the same run: the app's floor (an answer that reads nothing).
        pages = [("floor", "GET /health (baseline: reads nothing)", "/health")]
        pages += [("page", path, path) for path in page_urls(app)]
        pages += [("page", label, path) for label, path in lead_pages(url)]
        pages.append(("page", "a sequence", f"/console/sequences/{sequence}"))
        pages += [("search", label, f"/console/leads?{query}") for label, query in SEARCHES]
        found = []
        async with signed_in_client(app, database.sessions) as http:
            counting = await figures_counted(http, f"/console/sequences/{sequence}")
            print(f"  (a sequence's step figures counted in the background in {counting:.1f} s;"
                  " its page is timed after)", flush=True)  # fmt: skip
            for kind, label, path in pages:
                times, status = await timed(http, path, requests)
                target = PAGE_TARGET if kind == "page" else SEARCH_TARGET
                found.append((kind, label, times, status, target))
                print(_line(kind, label, times, status, target), flush=True)
        database.engine.dispose()
    return found


@contextlib.asynccontextmanager
async def _state_dir() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-console-state-") as state:
        yield state


def _line(kind: str, label: str, times: list[float], status: int, target: float) -> str:
    p95 = pct(times, 0.95)
    verdict = "ok" if p95 < target and status == 200 else "MISSED"
    return (
        f"  {kind:7}{label[:44]:45}{status:5}{ms(pct(times, 0.5)):>7}{ms(p95):>7}"
        f"{ms(target):>8}  {verdict}"
    )


def _fresh(stack: contextlib.ExitStack, args: argparse.Namespace) -> str:
    """A new database on the PostgreSQL server given, else a SQLite file; dropped
    afterwards unless --keep."""
    if args.keep:
        scratch = tempfile.mkdtemp(prefix="bench-console-")
    else:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-console-"))
    if not args.database_url:
        return f"sqlite:///{scratch}/nurture.db"
    if not args.keep:
        return stack.enter_context(fresh_postgres(args.database_url))
    name = f"bench_console_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(args.database_url).set(database=name).render_as_string(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--sends", type=int, default=500_000)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
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
            seconds = history(url, load_definitions(REPO), args.leads, args.responses, args.sends)
            print(f"generated {args.leads:,} leads, {args.responses:,} responses and "
                  f"{args.sends:,} sends in {seconds:.0f} s", flush=True)  # fmt: skip
            if args.keep:
                print(f"kept: --measure {url}")
        print(f"  {'':7}{'page or search':45}{'HTTP':>5}{'p50':>7}{'p95':>7}{'target':>8}  (ms)")
        found = asyncio.run(measure(url, args.requests))
    missed = [label for kind, label, times, status, target in found
              if kind != "floor" and (status != 200 or pct(times, 0.95) >= target)]  # fmt: skip
    print("every target met" if not missed else f"MISSED: {', '.join(missed)}")


if __name__ == "__main__":
    main()
