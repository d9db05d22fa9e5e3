"""A synthetic lead history, so `nurture backtest` runs before there is real history.

Each lead gets a hidden *fit* (from its profile: seniority, company size, industry,
country, work email) and a hidden *intent*; intent drives how much it engages
(emails opened and clicked, pages, downloads, webinars, trial use) over ~120 days and
whether it *evaluates* (a burst of pricing views, a demo request answering budget,
authority, need and timeline, a reply to sales). The chance it buys rests on fit,
intent and evaluating, plus noise; a buyer's evaluation comes in the weeks before the
sale, and a lost evaluation any time. Students and a competitor engage but never buy.
Nothing here reads scoring.yaml: the truth is independent of the model, so a backtest
measures the model instead of echoing it.

The CRM's side, `opportunities`: an evaluation opens an opportunity (its amount by
company size, in USD); it is won at the sale, or lost some days after an evaluation
that did not end in one (open still if that is past the DAYS followed). A buyer that
never evaluated gets a short one too: every sale is a won opportunity.

The same seed gives the same leads, and lead i does not depend on how many are made.
Each lead's opportunities are drawn after the rest of it, so adding them changed no
other field.

    python -m scoring.synthetic --leads 5000 --seed 1 history.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 120  # how long a lead is followed
SITE = "https://www.nurture.example"

TITLES = {
    "senior": ["VP Marketing", "Head of Growth", "Director of Operations", "CTO", "Founder",
               "Chief Revenue Officer", "VP Engineering", "Director of IT"],
    "manager": ["Marketing Manager", "Product Manager", "Team Lead", "Sales Manager",
                "IT Manager", "Operations Manager"],
    "staff": ["Software Engineer", "Analyst", "Marketing Specialist", "Consultant", "Designer",
              "Account Executive", "Data Scientist"],
    "student": ["Student", "MBA Student", "Marketing Intern", "Engineering Intern"],
}  # fmt: skip
SENIORITY = {"senior": 1.0, "manager": 0.6, "staff": 0.3, "student": 0.0}
GOOD_INDUSTRIES = ["software", "financial services", "insurance", "healthcare", "logistics",
                   "retail"]  # fmt: skip
OTHER_INDUSTRIES = ["education", "government", "manufacturing", "media", "non-profit",
                    "hospitality"]  # fmt: skip
SERVED = ["US", "US", "US", "CA", "GB", "DE", "FR", "NL", "SE"]
ELSEWHERE = ["BR", "IN", "AU", "ES", "IT", "JP", "MX", "PL"]
TIMEZONES = {"US": "America/New_York", "CA": "America/Toronto", "GB": "Europe/London",
             "DE": "Europe/Berlin", "FR": "Europe/Paris", "NL": "Europe/Amsterdam",
             "SE": "Europe/Stockholm", "IN": "Asia/Kolkata", "AU": "Australia/Sydney",
             "JP": "Asia/Tokyo", "BR": "America/Sao_Paulo"}  # fmt: skip
FREE_MAIL = ["gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com"]
FIRST_NAMES = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Dennis",
               "Frances", "Edsger", "Radia", "Tim", "Guido", "Hedy", "Yuki"]  # fmt: skip
LAST_NAMES = ["Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Thompson", "Liskov",
              "Ritchie", "Allen", "Dijkstra", "Perlman", "Johnson", "Rossum"]  # fmt: skip
COMPANY_WORDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
                 "Tyrell", "Soylent", "Cyberdyne", "Wonka", "Aperture", "Massive"]  # fmt: skip
SUFFIXES = ["Corp", "Labs", "Group", "Systems", "Health", "Logistics", "Bank", "Retail"]
SOURCES = {"trial_signup": 25, "content_download": 30, "webinar": 15, "newsletter": 20,
           "paid_search": 10}  # fmt: skip
BLOG = ["/blog/lead-scoring-101", "/blog/nurture-playbook", "/blog/b2b-email-benchmarks",
        "/blog/sales-handoff", "/resources/guide", "/about", "/careers", "/customers"]  # fmt: skip
PRODUCT_PAGES = ["/product", "/product/sequences", "/product/scoring", "/integrations"]
ACTIONS = ["create_project", "import_contacts", "send_test_email", "connect_integration",
           "build_sequence", "view_report"]  # fmt: skip
LOST_REASONS = ["budget", "timing", "competitor", "no decision", "missing feature"]


def generate(n_leads: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """`n_leads` history leads (see scoring/history.py), the same ones for the same seed."""
    for index in range(n_leads):
        yield _lead(random.Random(f"{seed}:{index}"), f"syn{seed}-{index + 1:05d}")


def write(path: Path | str, leads: Iterable[dict[str, Any]]) -> int:
    """Write leads as JSON Lines ('-' for stdout); returns how many."""
    count = 0
    out = sys.stdout if str(path) == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for lead in leads:
            out.write(json.dumps(lead, separators=(",", ":")) + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    return count


# --- one lead -------------------------------------------------------------------------------


def _lead(rng: random.Random, lead_id: str) -> dict[str, Any]:
    kind = rng.choices(list(SENIORITY), weights=[18, 30, 40, 12])[0]
    student = kind == "student"
    size = None if student and rng.random() < 0.6 else int(math.exp(rng.uniform(1.5, 10)))
    good_industry = rng.random() < 0.55
    served = rng.random() < 0.75
    competitor = not student and rng.random() < 0.01
    free_mail = rng.random() < (0.7 if student else 0.12)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    company = f"{rng.choice(COMPANY_WORDS)} {rng.choice(SUFFIXES)}"
    domain = (
        "rivalsoft.example" if competitor
        else rng.choice(FREE_MAIL) if free_mail
        else company.lower().replace(" ", "") + ".example"
    )  # fmt: skip
    country = rng.choice(SERVED if served else ELSEWHERE)
    source = rng.choices(list(SOURCES), weights=list(SOURCES.values()))[0]

    # The hidden truth. Fit: who they are; intent: how much they want to solve this.
    size_fit = min(math.log10(size or 1) / 4, 1.0)
    fit = (0.45 * SENIORITY[kind] + 0.3 * size_fit + 0.15 * good_industry + 0.1 * served
           - 0.2 * free_mail)  # fmt: skip
    intent = min(rng.betavariate(1.3, 2.6) + 0.2 * max(fit, 0), 1.0)
    # Most sales follow an evaluation (talking to sales); many evaluations are lost.
    evaluates = not student and rng.random() < 0.04 + 0.8 * intent**2
    odds = -7.6 + 4.5 * fit + 3 * intent + 2.5 * evaluates + rng.gauss(0, 0.8)
    buys = rng.random() < 1 / (1 + math.exp(-odds)) and not (student or competitor)

    attributes: dict[str, Any] = {}
    if not student and rng.random() < 0.1 + 0.3 * fit:
        attributes["budget"] = rng.choice(["approved", "under review", "50k"])
    if rng.random() < 0.1 + 0.3 * intent:
        attributes["timeline"] = rng.choice(["this quarter", "next quarter", "this year"])
    created = START + timedelta(seconds=rng.randrange(365 * 86400))
    # A buyer's journey ends at the sale; everyone else is followed for DAYS.
    window = rng.uniform(20, DAYS - 10) if buys else DAYS
    responses = _responses(rng, source, intent, student, window)
    evaluation = None  # (first day, last day)
    if evaluates:
        end = window if buys else rng.uniform(10, DAYS)
        steps, start = _evaluation(rng, end, kind)
        responses += steps
        evaluation = (start, end)
    sale = created + timedelta(days=window)
    if buys:  # customers keep using the product: history the backtest must not peek at
        responses += [
            ("product.action", window + rng.uniform(0.1, 30), {"action": rng.choice(ACTIONS)})
            for _ in range(rng.randint(1, 6))
        ]
    responses.sort(key=lambda r: r[1])
    record = {
        "id": lead_id,
        "profile": {
            "email": f"{first}.{last}@{domain}".lower(),
            "first_name": first,
            "last_name": last,
            "title": rng.choice(TITLES[kind]),
            "company": None if student else company,
            "company_size": size,
            "industry": rng.choice(GOOD_INDUSTRIES if good_industry else OTHER_INDUSTRIES),
            "country": country,
            "timezone": TIMEZONES.get(country, "UTC"),
            "source": source,
            "attributes": attributes,
        },
        "created_at": _iso(created),
        "responses": [
            {"type": type_, "at": _iso(created + timedelta(days=day)), "data": data}
            for type_, day, data in responses
        ],
        "outcome": {"customer": buys, "at": _iso(sale) if buys else None},
    }
    # Last: the draws above are the same as before opportunities were added.
    deal = _opportunity(rng, created, size, evaluation, window if buys else None)
    record["opportunities"] = [{"id": f"006-{lead_id}"} | deal] if deal else []
    return record


def _responses(
    rng: random.Random, source: str, intent: float, student: bool, window: float
) -> list[tuple[str, float, dict[str, Any]]]:
    """(type, day, data) for what the lead did in its first `window` days."""
    out: list[tuple[str, float, dict[str, Any]]] = []

    def anytime() -> float:
        return rng.uniform(0, window)

    def late() -> float:  # interest grows towards the end of the journey
        return window * math.sqrt(rng.random())

    # How they came in.
    first = {"trial_signup": ("trial.started", {}),
             "content_download": ("content.download", {"asset": "scoring-guide.pdf"}),
             "webinar": ("webinar.registered", {"webinar": "nurture-live"}),
             "newsletter": ("newsletter.signup", {})}.get(source)  # fmt: skip
    if first:
        out.append((first[0], rng.uniform(0, 0.01), first[1]))
    if source == "webinar" and rng.random() < 0.3 + 0.5 * intent:
        out.append(("webinar.attended", rng.uniform(0.5, 3), {"webinar": "nurture-live"}))

    # The nurture sequence: an email every ~two weeks, opened and clicked with intent.
    for day in range(1, int(window), 14):
        sent = day + rng.uniform(0, 2)
        if rng.random() < 0.02:
            out.append(("email.bounce", sent, {}))
            break
        out.append(("email.delivered", sent, {}))
        if rng.random() < 0.15 + 0.55 * intent:
            out.append(("email.open", sent + rng.uniform(0, 2), {}))
            if rng.random() < 0.1 + 0.5 * intent:
                out.append(
                    (
                        "email.click",
                        sent + rng.uniform(0, 2),
                        {"url": SITE + rng.choice(BLOG + PRODUCT_PAGES)},
                    )
                )
            if rng.random() < 0.06 * intent:
                out.append(("email.reply", sent + rng.uniform(0, 3), {}))
        if rng.random() < 0.03 * (1 - intent):
            out.append(("email.unsubscribe", sent + rng.uniform(0, 2), {}))
            break

    # The website, downloads and webinars. Students read a lot and never buy.
    reading = intent + (0.6 if student else 0)
    for _ in range(poisson(rng, 1 + 8 * reading)):
        out.append(("page.view", anytime(), {"url": SITE + rng.choice(BLOG + PRODUCT_PAGES)}))
    for _ in range(poisson(rng, 0.2 + 1.5 * reading)):
        out.append(("content.download", anytime(), {"asset": rng.choice(["ebook", "report"])}))
    for _ in range(poisson(rng, 0.2 + 1.5 * intent**1.5)):
        out.append(("page.view", late(), {"url": SITE + "/pricing"}))
    if rng.random() < 0.05 + 0.3 * intent**2:
        out.append(("page.view", late(), {"url": SITE + "/demo"}))
    if rng.random() < 0.1 + 0.25 * intent:
        registered = anytime()
        webinar = {"webinar": "monthly-demo"}
        out.append(("webinar.registered", registered, webinar))
        if rng.random() < 0.5:
            out.append(("webinar.attended", min(registered + 7, window), webinar))
    if rng.random() < 0.1:
        out.append(("form.submitted", anytime(), {"form": "contact"}))

    # Trial users: what they do in the product.
    if source == "trial_signup":
        for _ in range(poisson(rng, 1 + 12 * intent)):
            out.append(("product.action", anytime(), {"action": rng.choice(ACTIONS)}))
        if rng.random() < 0.1 + 0.6 * intent:
            out.append(("product.action", late(), {"action": "invite_teammate"}))
    return out


def _evaluation(
    rng: random.Random, end: float, kind: str
) -> tuple[list[tuple[str, float, dict[str, Any]]], float]:
    """An evaluation ending on day `end`: pricing, the demo page, a demo request, a reply;
    and the day it started."""
    start = max(end - rng.uniform(5, 25), 0.0)

    def during() -> float:
        return rng.uniform(start, end)

    out: list[tuple[str, float, dict[str, Any]]] = [
        ("page.view", during(), {"url": SITE + "/pricing"}) for _ in range(1 + poisson(rng, 1))
    ]
    if rng.random() < 0.6:
        out.append(("page.view", during(), {"url": SITE + "/demo"}))
    if rng.random() < 0.85:
        answers = {"form": "demo_request"}
        for key, value, chance in (
            ("need", "replace spreadsheets", 0.8),
            ("timeline", "this quarter", 0.8),
            ("budget", "yes", 0.7),
            ("authority", "decision maker", 0.9 if kind == "senior" else 0.4),
        ):
            if rng.random() < chance:
                answers[key] = value
        out.append(("form.submitted", during(), answers))
    if rng.random() < 0.4:
        out.append(("email.reply", during(), {}))
    return out, start


def _opportunity(
    rng: random.Random,
    created: datetime,
    size: int | None,
    evaluation: tuple[float, float] | None,
    sale: float | None,
) -> dict[str, Any] | None:
    """The lead's opportunity in the CRM (its `id` aside), or None: opened during the
    evaluation (a buyer without one: in the days before the sale), won at the sale, else
    lost some days after the evaluation ended, if that is within the DAYS followed."""
    if evaluation is None and sale is None:
        return None
    start, end = evaluation or (max(sale - rng.uniform(1, 10), 0.0), sale)
    opened = rng.uniform(start, end)
    # Deal size grows with the company, with a spread: ~$3k at 10 people, ~$45k at 5,000.
    amount = max(round(1000 * (size or 1) ** 0.45 * rng.lognormvariate(0, 0.35), -2), 500)
    expected = created + timedelta(days=opened + rng.uniform(14, 60))
    closed, status, reason = sale, "won", None
    if sale is None:
        closed, status, reason = end + rng.uniform(1, 20), "lost", rng.choice(LOST_REASONS)
        if closed > DAYS:  # not decided while the lead was followed
            closed, status, reason = None, "open", None
    return {
        "opened_at": _iso(created + timedelta(days=opened)),
        "amount": int(amount),
        "currency": "USD",
        "expected_close_date": expected.date().isoformat(),
        "status": status,
        "closed_at": _iso(created + timedelta(days=closed)) if closed is not None else None,
        "lost_reason": reason,
    }


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw from `rng` (Knuth's method: the means here are small)."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scoring.synthetic", description="Write a synthetic lead history (JSONL)."
    )
    parser.add_argument("out", help="the JSONL file to write ('-' for stdout)")
    parser.add_argument("--leads", type=int, default=5000, help="how many leads (5000)")
    parser.add_argument("--seed", type=int, default=1, help="same seed, same leads (1)")
    args = parser.parse_args(argv)
    count = write(args.out, generate(args.leads, args.seed))
    if args.out != "-":
        print(f"wrote {count} leads to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
