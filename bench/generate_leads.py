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
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from models import schema as migrate
from models.db import Lead, Response, make_engine
from models.definition_set import Definitions
from services.definitions import load_definitions

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # fixed, so every run is the same data
CHUNK = 10_000  # rows per executemany

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


def _pick(rng: random.Random, options: list[tuple[Any, float]]) -> Any:
    return rng.choices([o for o, _ in options], [w for _, w in options])[0]


def _profile(rng: random.Random, n: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    company = f"{rng.choice(LAST)} {rng.choice(['Labs', 'Group', 'Systems', 'Co'])} {n % 997}"
    roll = rng.random()
    if roll < 0.2:
        domain = rng.choice(FREE_MAIL)
    elif roll < 0.203:
        domain = "rivalsoft.example"
    else:
        domain = company.lower().replace(" ", "") + ".example"
    size = _pick(rng, SIZES)
    attributes: dict[str, Any] = {}
    if rng.random() < 0.15:
        attributes["budget"] = rng.choice(["<10k", "10-50k", "50k+"])
    if rng.random() < 0.1:
        attributes["timeline"] = rng.choice(["this quarter", "this year"])
    return {
        "email": f"{first}.{last}.{n}@{domain}".lower(),
        "first_name": first,
        "last_name": last,
        "title": _pick(rng, TITLES),
        "company": company,
        "company_size": int(size * rng.uniform(0.7, 1.4)) if rng.random() > 0.1 else None,
        "industry": _pick(rng, INDUSTRIES),
        "country": _pick(rng, COUNTRIES),
        "timezone": "UTC",
        "source": _pick(rng, SOURCES),
        "attributes": attributes,
    }


def _data(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind in ("page.view", "email.click"):
        return {"url": "https://example.com" + rng.choices(URLS, URL_WEIGHTS)[0]}
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
    lead_ids: list[str] = []
    trial: list[bool] = []
    segments: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    with engine.begin() as connection:
        for n in range(leads):
            profile = _profile(rng, n)
            segment, _ = definitions.choose_segment(profile)
            segments[segment] = segments.get(segment, 0) + 1
            lead_id = f"{rng.getrandbits(128):032x}"
            lead_ids.append(lead_id)
            trial.append(profile["source"] == "trial_signup")
            owned = rng.random() < sales_owned
            rows.append(profile | {
                "id": lead_id, "segment": segment, "score": 0.0, "fit_score": 0.0,
                "engagement_score": 0.0, "stage": rng.choice(["accepted", "won"]) if owned
                else "lead", "created_at": now - timedelta(days=days),
                "updated_at": now - timedelta(days=days),
            })  # fmt: skip
            if len(rows) == CHUNK:
                connection.execute(insert(Lead), rows)
                rows = []
        if rows:
            connection.execute(insert(Lead), rows)

    # A few busy leads, most quiet: lognormal activity per lead.
    weights = [math.exp(rng.gauss(0, 1)) for _ in range(leads)]
    owners = rng.choices(range(leads), weights, k=responses) if leads else []
    kinds, kind_weights = [k for k, _ in RESPONSES], [w for _, w in RESPONSES]
    product = [k for k, _ in PRODUCT] + kinds
    product_weights = [w for _, w in PRODUCT] + kind_weights
    span = days * 86400
    rows = []
    with engine.begin() as connection:
        for n, owner in enumerate(owners):
            if trial[owner]:
                kind = rng.choices(product, product_weights)[0]
            else:
                kind = rng.choices(kinds, kind_weights)[0]
            occurred = now - timedelta(seconds=rng.random() * span)
            delivered = None if rng.random() < undelivered else occurred + timedelta(seconds=2)
            rows.append({
                "id": f"{rng.getrandbits(128):032x}", "event_id": f"bench-{seed}-{n}",
                "lead_id": lead_ids[owner], "type": kind, "source": "api",
                "data": _data(rng, kind), "occurred_at": occurred, "received_at": occurred,
                "delivered_at": delivered,
            })  # fmt: skip
            if len(rows) == CHUNK:
                connection.execute(insert(Response), rows)
                rows = []
        if rows:
            connection.execute(insert(Response), rows)
    engine.dispose()
    return Generated(leads, responses, time.perf_counter() - started, segments)


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
