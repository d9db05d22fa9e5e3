"""A seeded generator of leads and their responses, bulk-inserted into any database URL.

Profiles vary (titles, company sizes, industries, countries, sources, free-mail and
competitor addresses, a few BANT attributes); each lead gets its segment from the
definitions' `segments.yaml`, as intake would. Responses are spread unevenly (a few
leads are very busy, most are not) over the `days` before `now`, with realistic types
and data (pricing and demo pages, demo-request forms, invites in the product...), and
almost all are delivered (`delivered_at` set). Leads start unscored (score 0, `lead`),
except a small share already owned by sales.

    .venv/bin/python -m bench.generate_leads --database-url sqlite:////tmp/leads.db \
        --leads 10000 --responses 100000
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Connection, Engine, Table, insert

from models import schema as migrate
from models.db import Lead, Response, make_engine
from models.definition_set import Definitions
from services.definitions import load_definitions

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # fixed, so every run is the same data
CHUNK = 10_000  # rows per executemany (SQLite)
LEAD_COLUMNS = (
    "id", *(name for name in Lead.PROFILE_FIELDS if name != "phone"), "segment", "score",
    "fit_score", "engagement_score", "stage", "created_at", "updated_at", "email_consent",
    "sms_consent",
)  # fmt: skip
RESPONSE_COLUMNS = (
    "id", "event_id", "lead_id", "type", "source", "data", "occurred_at", "received_at",
    "delivered_at", "duplicates",
)  # fmt: skip

TITLES = [
    ("VP Engineering", 4), ("Head of Marketing", 4), ("Director of IT", 5), ("CTO", 2),
    ("Founder", 2), ("Marketing Manager", 10), ("Team Lead", 6), ("Product Manager", 8),
    ("Software Engineer", 20), ("Analyst", 12), ("Consultant", 8), ("Student", 4),
    ("Intern", 2), (None, 13),
]  # fmt: skip
SIZES = [(5, 15), (20, 20), (60, 20), (150, 15), (400, 12), (800, 8), (2500, 6), (10000, 4)]
INDUSTRIES = [
    ("software", 25), ("financial services", 10), ("insurance", 5), ("healthcare", 10),
    ("logistics", 5), ("retail", 10), ("education", 10), ("manufacturing", 10), (None, 15),
]  # fmt: skip
COUNTRIES = [("US", 35), ("GB", 10), ("DE", 10), ("FR", 8), ("CA", 5), ("NL", 4), ("SE", 3),
             ("IN", 10), ("BR", 5), ("JP", 5), (None, 5)]  # fmt: skip
SOURCES = [("trial_signup", 25), ("content_download", 25), ("newsletter", 20),
           ("webinar", 15), ("referral", 10), ("ads", 5)]  # fmt: skip
FREE_MAIL = ["gmail.com", "yahoo.com", "hotmail.com", "outlook.com"]
FIRST = ["Ada", "Lin", "Sam", "Noor", "Kai", "Mia", "Omar", "Ines", "Theo", "Yuki", "Ravi", "Zoe"]
LAST = ["Lovelace", "Chen", "Okafor", "Berg", "Silva", "Rossi", "Kim", "Haddad", "Novak", "Diaz"]

# (type, weight, data maker); trial leads get product usage on top (PRODUCT).
URLS = ["/pricing", "/demo", "/blog/scoring", "/docs/start", "/customers", "/", "/careers"]
URL_WEIGHTS = [10, 5, 30, 20, 10, 20, 5]
RESPONSES: list[tuple[str, float]] = [
    ("email.delivered", 14), ("email.open", 30), ("email.click", 9), ("page.view", 30),
    ("email.reply", 0.8), ("email.unsubscribe", 0.4), ("email.bounce", 0.2),
    ("email.spamreport", 0.02), ("content.download", 4), ("form.submitted", 1.5),
    ("webinar.registered", 2), ("webinar.attended", 1), ("newsletter.signup", 1),
    ("sms.reply", 0.3), ("sms.stop", 0.1),
]  # fmt: skip
PRODUCT: list[tuple[str, float]] = [("product.action", 20), ("trial.started", 1)]
ACTIONS = ["invite_user", "create_project", "import_contacts", "export", "login"]
FORMS = ["demo-request", "contact", "newsletter", "ebook"]


@dataclass
class Generated:
    leads: int
    responses: int
    seconds: float
    segments: dict[str, int]


def _cumulative(options: list[tuple[Any, float]]) -> tuple[list[Any], list[float]]:
    return [o for o, _ in options], list(accumulate(w for _, w in options))


def _picker(rng: random.Random, options: list[tuple[Any, float]]) -> Callable[[], Any]:
    """`rng.choices(values, weights)[0]` with the sums made once: the same draws (choices
    does exactly this with `cum_weights`), a third of the cost."""
    values, cumulative = _cumulative(options)
    draw, total, hi = rng.random, cumulative[-1] + 0.0, len(values) - 1
    return lambda: values[bisect(cumulative, draw() * total, 0, hi)]


def _profile(rng: random.Random, pick: dict[str, Callable[[], Any]], n: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    company = f"{rng.choice(LAST)} {rng.choice(['Labs', 'Group', 'Systems', 'Co'])} {n % 997}"
    roll = rng.random()
    if roll < 0.2:
        domain = rng.choice(FREE_MAIL)
    elif roll < 0.203:
        domain = "rivalsoft.example"
    else:
        domain = company.lower().replace(" ", "") + ".example"
    size = pick["size"]()
    attributes: dict[str, Any] = {}
    if rng.random() < 0.15:
        attributes["budget"] = rng.choice(["<10k", "10-50k", "50k+"])
    if rng.random() < 0.1:
        attributes["timeline"] = rng.choice(["this quarter", "this year"])
    return {
        "email": f"{first}.{last}.{n}@{domain}".lower(),
        "first_name": first,
        "last_name": last,
        "title": pick["title"](),
        "company": company,
        "company_size": int(size * rng.uniform(0.7, 1.4)) if rng.random() > 0.1 else None,
        "industry": pick["industry"](),
        "country": pick["country"](),
        "timezone": "UTC",
        "locale": None,  # the definitions' default language (no random draw: same data)
        "source": pick["source"](),
        "attributes": attributes,
    }


def _data(rng: random.Random, kind: str, url: Callable[[], str]) -> dict[str, Any]:
    if kind in ("page.view", "email.click"):
        return {"url": "https://example.com" + url()}
    if kind == "form.submitted":
        form = rng.choice(FORMS)
        data: dict[str, Any] = {"form": form}
        if form == "demo-request" and rng.random() < 0.5:
            data |= {"need": "lead scoring", "timeline": rng.choice(["now", "Q3"])}
            if rng.random() < 0.5:
                data["budget"] = "approved"
        return data
    if kind == "product.action":
        return {"action": rng.choice(ACTIONS)}
    if kind == "email.reply":
        return {"text": "Sounds interesting, tell me more."}
    return {}


def generate(
    url: str,
    definitions: Definitions,
    leads: int,
    responses: int,
    *,
    seed: int = 7,
    now: datetime = NOW,
    days: int = 120,
    sales_owned: float = 0.01,
    undelivered: float = 0.005,
) -> Generated:
    """Insert `leads` leads and `responses` responses into the database at `url`."""
    started = time.perf_counter()
    rng = random.Random(seed)
    engine = make_engine(url)
    migrate.upgrade(engine)  # the schema the code needs, stamped
    segments: dict[str, int] = {}
    lead_ids: list[str] = []
    trial: list[bool] = []
    made = _lead_rows(rng, definitions, leads, now - timedelta(days=days), sales_owned,
                      segments, lead_ids, trial)  # fmt: skip
    _store(engine, Lead.__table__, LEAD_COLUMNS, made)
    rows = _response_rows(rng, lead_ids, trial, seed, now, days, undelivered, responses)
    _store(engine, Response.__table__, RESPONSE_COLUMNS, rows)
    engine.dispose()
    return Generated(leads, responses, time.perf_counter() - started, segments)


def _lead_rows(
    rng: random.Random,
    definitions: Definitions,
    leads: int,
    created: datetime,
    sales_owned: float,
    segments: dict[str, int],
    lead_ids: list[str],
    trial: list[bool],
) -> Iterator[tuple]:
    """The leads as rows of LEAD_COLUMNS; fills `segments`, `lead_ids` and `trial`."""
    pick = {name: _picker(rng, options) for name, options in (
        ("size", SIZES), ("title", TITLES), ("industry", INDUSTRIES), ("country", COUNTRIES),
        ("source", SOURCES))}  # fmt: skip
    for n in range(leads):
        profile = _profile(rng, pick, n)
        segment, _ = definitions.choose_segment(profile)
        segments[segment] = segments.get(segment, 0) + 1
        lead_id = f"{rng.getrandbits(128):032x}"
        lead_ids.append(lead_id)
        trial.append(profile["source"] == "trial_signup")
        owned = rng.random() < sales_owned
        stage = rng.choice(["accepted", "won"]) if owned else "lead"
        yield (lead_id, *(profile[name] for name in Lead.PROFILE_FIELDS if name != "phone"),
               segment, 0.0, 0.0, 0.0, stage, created, created, True, True)  # fmt: skip


def _response_rows(
    rng: random.Random,
    lead_ids: list[str],
    trial: list[bool],
    seed: int,
    now: datetime,
    days: int,
    undelivered: float,
    responses: int,
) -> Iterator[tuple]:
    """The responses as rows of RESPONSE_COLUMNS: a few busy leads, most quiet
    (lognormal activity per lead)."""
    weights = [math.exp(rng.gauss(0, 1)) for _ in range(len(lead_ids))]
    owners = rng.choices(range(len(lead_ids)), weights, k=responses) if lead_ids else []
    kind_of, product_kind = _picker(rng, RESPONSES), _picker(rng, PRODUCT + RESPONSES)
    url = _picker(rng, list(zip(URLS, URL_WEIGHTS, strict=True)))
    draw, bits, span, two = rng.random, rng.getrandbits, days * 86400, timedelta(seconds=2)
    for n, owner in enumerate(owners):
        kind = product_kind() if trial[owner] else kind_of()
        occurred = now - timedelta(seconds=draw() * span)
        delivered = None if draw() < undelivered else occurred + two
        response_id = f"{bits(128):032x}"  # drawn before the data, as always
        yield (response_id, f"bench-{seed}-{n}", lead_ids[owner], kind, "api",
               _data(rng, kind, url), occurred, occurred, delivered, 0)  # fmt: skip


def _store(engine: Engine, table: Table, columns: tuple[str, ...], rows: Iterator[tuple]) -> None:
    """PostgreSQL: COPY, with the table's indexes built once at the end; else executemany."""
    if engine.dialect.name != "postgresql":
        with engine.begin() as connection:
            while chunk := list(islice(rows, CHUNK)):
                dicts = [dict(zip(columns, row, strict=True)) for row in chunk]
                connection.execute(insert(table), dicts)
        return
    json_columns = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON)]
    as_json = _json_texts()
    names = ", ".join(columns)
    with engine.begin() as connection, _indexes_built_after(connection, table.name):
        cursor = connection.connection.driver_connection.cursor()
        with cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                row = list(row)
                for i in json_columns:
                    row[i] = as_json(row[i])
                copy.write_row(row)
    with engine.begin() as connection:  # statistics for the planner, as autovacuum would
        connection.exec_driver_sql(f"ANALYZE {table.name}")


def _json_texts() -> Callable[[dict[str, Any]], str]:
    """json.dumps (as SQLAlchemy's JSON type writes it), once per distinct payload: the
    responses carry a few dozen."""
    known: dict[tuple, str] = {}

    def as_json(data: dict[str, Any]) -> str:
        key = tuple(data.items())
        text = known.get(key)
        if text is None:
            text = known[key] = json.dumps(data)
        return text

    return as_json


@contextmanager
def _indexes_built_after(connection: Connection, table: str) -> Iterator[None]:
    """Drop the table's indexes and constraints (but those other tables' foreign keys
    need) for the load, then build each once: keeping random-keyed indexes up to date
    row by row costs several times the load itself."""
    owned = connection.exec_driver_sql(
        "SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " WHERE conrelid = %(t)s::regclass AND contype IN ('p', 'u', 'f') AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid"
        " AND c.contype <> 'f') ORDER BY contype = 'f'",
        {"t": table},
    ).all()
    indexes = connection.exec_driver_sql(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
        " WHERE indrelid = %(t)s::regclass AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = indexrelid)",
        {"t": table},
    ).all()
    for name, _ in reversed(owned):  # foreign keys first
        connection.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        connection.exec_driver_sql(f"DROP INDEX {name}")
    yield
    for name, definition in owned:  # keys before the foreign keys
        connection.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    for _, definition in indexes:
        connection.exec_driver_sql(definition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--definitions", type=Path, default=REPO)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--responses", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    made = generate(args.database_url, load_definitions(args.definitions), args.leads,
                    args.responses, seed=args.seed)  # fmt: skip
    print(f"generated {made.leads} leads and {made.responses} responses in "
          f"{made.seconds:.1f} s; segments {made.segments}")  # fmt: skip


if __name__ == "__main__":
    main()
