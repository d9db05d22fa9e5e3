"""Screenshots of every console page for docs/console.md, taken from a real stack.

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

Starts the Temporal dev server (in memory), a worker and the API on the test definitions
and SQLite, drives real traffic through the API (leads, responses, hot leads handed off to
both reps, one answered), signs in as each role in Debian's Chromium, and saves one PNG
per page at laptop width, plus the overview and the handoff inbox at phone width. The
Experiments pages are shot last but users and the audit log, on experiments seeded into
the database just before (leads assigned to arms, and what they did), so that their
leads are on no other page.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.async_api import async_playwright
from sqlalchemy import select

from experiments.assignment import assign, held_out
from models.db import (
    AMOUNT_SCALE,
    CompanyOwner,
    ExperimentAssignment,
    ExperimentRecord,
    Handoff,
    Lead,
    Message,
    Opportunity,
    Response,
    StageChange,
)
from services import accounts
from testkit import FIXTURE_DEFINITIONS
from testkit.stack import local_stack, temporal_dev_server

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "screenshots password"
PLANNED = "baseline=8&effect=2&arms=3&leads_per_day=400"  # the planning form, answered
PAGES = [  # (file, role, path)
    ("overview", "admin", "/console/"),
    ("sequences", "marketer", "/console/sequences"),
    ("sequence", "marketer", "/console/sequences/quick"),
    ("leads", "admin", "/console/leads"),
    ("lead", "admin", "/console/leads/{lead}"),
    ("handoffs", "rep", "/console/handoffs"),
    ("operations", "admin", "/console/operations"),
    ("models", "marketer", "/console/models"),
    ("model", "marketer", "/console/models/{model}"),
    ("experiments", "marketer", f"/console/experiments?{PLANNED}"),
    ("experiment", "marketer", "/console/experiments/trial_subject"),
    ("users", "admin", "/console/users"),
    ("audit", "admin", "/console/audit"),
    ("login", None, "/console/login"),
]
PHONE = ["overview", "handoffs"]
USERS = {"admin": ("ada@example.com", "admin", None), "marketer": ("mo@example.com", "marketer",
         None), "rep": ("alice@example.com", "rep", "alice")}  # fmt: skip


def seed_models(stack) -> str:
    """Three predictive models of synthetic histories: one active (before any lead is
    scored, so the lead pages show `predicted`), a candidate and a refused one."""
    from scoring.history import HistoryLead
    from scoring.model_store import store
    from scoring.predictive import train
    from scoring.synthetic import generate

    definitions = stack.definitions
    trainings = []
    for seed, min_auc in ((1, 0.6), (2, 0.6), (3, 0.99)):
        history = [HistoryLead.model_validate(lead) for lead in generate(2500, seed)]
        settings = definitions.scoring.predictive.model_copy(update={"min_auc": min_auc})
        trainings.append(train(history, definitions, settings))
    with stack.database.sessions.begin() as session:
        records = [store(session, training, "mo@example.com") for training in trainings]
        records[0].status = "active"
    return records[0].fingerprint


async def seed(stack, http: httpx.AsyncClient) -> str:
    """Leads with responses, three hot ones (two for alice, one for bob); a lead ID."""
    with stack.database.sessions.begin() as session:
        session.add(CompanyOwner(domain="alice-co.example", rep_id="alice"))
        session.add(CompanyOwner(domain="bob-co.example", rep_id="bob"))
    reps = {rep.id for rep in stack.definitions.sales.reps}
    for email, role, rep in USERS.values():
        name = email.split("@")[0].title()
        accounts.add_user(stack.database.sessions, "screenshots", email, name,
                          role, PASSWORD, rep, reps)  # fmt: skip
    names = ["grace", "linus", "barbara", "edsger", "frances", "ken", "margaret", "dennis"]
    ids = {}
    for n, name in enumerate(names):
        domain = ("alice-co.example", "bob-co.example", "example.org")[n % 3]
        answer = await http.post(
            "/leads",
            json={"email": f"{name}@{domain}", "first_name": name.title(), "company": "Acme"},
        )
        ids[name] = answer.json()["lead_id"]
        await http.post("/events", json={"lead_id": ids[name], "type": "page.view",
                                         "data": {"url": "/pricing"}})  # fmt: skip
    for name in ("grace", "linus", "frances"):
        for kind in ("email.reply", "webinar.attended"):
            await http.post("/events", json={"lead_id": ids[name], "type": kind})
    for _ in range(100):
        with stack.database.sessions() as session:
            if len(session.scalars(select(Handoff)).all()) >= 3:
                break
        await asyncio.sleep(0.2)
    return ids["grace"]


# A split step no lead's segment reaches (the experiments' leads are seeded), and a
# holdout for the europe segment (no other seeded lead is in it).
SPLIT = """
id: trial
name: Trial
steps:
  - {id: welcome, type: email, template: hello}
  - id: subject
    type: split
    metric: sql
    arms:
      - {name: plain, weight: 2, next: followup}
      - {name: bold, weight: 2, next: followup}
      - {name: quiet, weight: 1, holdout: true}
  - {id: followup, type: email, template: followup}
"""
# Per arm, the chance that a lead: is sent the arm's next email, opens it, clicks (of
# those who opened), turns MQL, SQL, is accepted (of the SQLs), gets an opportunity (of
# those accepted), wins it (of those).
ARM_RATES = {"plain": (1, .42, .25, .30, .08, .7, .5, .4),
             "bold": (1, .47, .30, .34, .13, .7, .55, .45),
             "quiet": (0, 0, 0, .22, .05, .7, .5, .4),
             "nurtured": (1, .44, .27, .31, .10, .7, .5, .4),
             "holdout": (0, 0, 0, .20, .05, .7, .5, .4)}  # fmt: skip


def experiment_definitions(root: Path) -> Path:
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "trial.yaml").write_text(SPLIT)
    segments = root / "segments.yaml"
    segments.write_text(
        segments.read_text().replace(
            "sequence: exit_early", "sequence: exit_early\n    holdout: 10"
        )
    )
    return root


def seed_experiments(stack) -> None:
    """The split `trial_subject` (2,500 leads) and the holdout of europe (1,200), started
    three weeks ago; each lead's arm drawn as the workflow draws it, and what it did after."""
    rng = random.Random(20)
    started = datetime.now(UTC) - timedelta(days=21)
    split = [("plain", 2.0), ("bold", 2.0), ("quiet", 1.0)]
    with stack.database.sessions.begin() as session:
        session.add(ExperimentRecord(
            name="trial_subject", kind="split", sequence_id="trial", step_id="subject",
            control="plain", metric="sql", started_at=started,
            arms=[{"name": arm, "weight": weight, "holdout": arm == "quiet"}
                  for arm, weight in split]))  # fmt: skip
        session.add(ExperimentRecord(
            name="holdout:europe", kind="holdout", sequence_id="exit_early", segment="europe",
            control="holdout", metric="sql", started_at=started + timedelta(days=2),
            arms=[{"name": "holdout", "weight": 10.0, "holdout": True},
                  {"name": "nurtured", "weight": 90.0, "holdout": False}]))  # fmt: skip
        for n in range(3700):
            lead = Lead(email=f"trial{n}@example.net", segment="everyone" if n < 2500 else "europe")
            session.add(lead)
            session.flush()
            at = started + timedelta(minutes=n * 8)
            if n < 2500:
                experiment, arm = "trial_subject", assign("trial_subject", lead.id, split)
            else:
                experiment = "holdout:europe"
                arm = "holdout" if held_out("europe", lead.id, 10) else "nurtured"
            session.add(ExperimentAssignment(experiment=experiment, lead_id=lead.id, arm=arm,
                                             holdout=arm in ("quiet", "holdout"),
                                             assigned_at=at, recorded_at=at))  # fmt: skip
            seed_outcomes(session, rng, lead.id, at, ARM_RATES[arm])


def seed_outcomes(session, rng: random.Random, lead_id: str, at: datetime, rates) -> None:
    sends, opened, clicked, mql, sql, accepted, opportunity, won = (rng.random() < r for r in rates)
    hour = timedelta(hours=1)
    if sends:
        session.add(Message(send_key=f"shot-{lead_id}", lead_id=lead_id, channel="email",
                            template="hello", recipient="x@example.net", body="Hi",
                            status="sent", sent_at=at + hour))  # fmt: skip
    for did, kind in ((opened, "email.open"), (opened and clicked, "email.click")):
        if did:
            session.add(Response(event_id=f"shot-{kind}-{lead_id}", lead_id=lead_id, type=kind,
                                 occurred_at=at + 2 * hour))  # fmt: skip
    for did, stage in ((mql or sql, "mql"), (sql, "sql")):
        if did:
            session.add(StageChange(lead_id=lead_id, change_key=f"shot-{stage}-{lead_id}",
                                    from_stage="lead", to_stage=stage, reason="screenshots",
                                    created_at=at + 3 * hour))  # fmt: skip
    if sql and accepted:
        session.add(Handoff(lead_id=lead_id, cycle=1, rep_id="alice", score=80, reason="hot",
                            status="accepted", created_at=at + 4 * hour,
                            answered_at=at + 5 * hour))  # fmt: skip
    if sql and accepted and opportunity:
        amount = rng.randrange(5_000, 60_000, 500) if won else None
        session.add(Opportunity(crm_id=f"shot-{lead_id}", lead_id=lead_id,
                                status="won" if won else "open", currency="USD",
                                amount_units=(amount or 20_000) * AMOUNT_SCALE,
                                opened_at=at + 6 * hour,
                                closed_at=at + 240 * hour if won else None))  # fmt: skip


async def shoot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        await shoot_with(out, experiment_definitions(Path(temporary) / "definitions"))


async def shoot_with(out: Path, definitions: Path) -> None:
    async with temporal_dev_server() as env:
        target = env.client.service_client.config.target_host
        async with (
            local_stack(target, task_queue="shots", token="shots", definitions=definitions)
            as stack,
            httpx.AsyncClient(base_url=stack.api_url, timeout=30,
                              headers={"Authorization": "Bearer shots"}) as http,
            async_playwright() as playwright,
        ):  # fmt: skip
            model = seed_models(stack)
            lead = await seed(stack, http)
            browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium")
            for name, role, path in PAGES:
                if name == "experiments":
                    seed_experiments(stack)
                for phone in (False, True) if name in PHONE else (False,):
                    size = (
                        {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
                    )
                    context = await browser.new_context(base_url=stack.api_url, viewport=size)
                    page = await context.new_page()
                    if role:
                        await page.goto("/console/login")
                        await page.get_by_label("Email").fill(USERS[role][0])
                        await page.get_by_label("Password").fill(PASSWORD)
                        await page.get_by_role("button", name="Sign in").click()
                        await page.wait_for_url(lambda url: "/login" not in url)
                    await page.goto(path.format(lead=lead, model=model))
                    for frame in await page.locator("iframe").all():
                        await frame.scroll_into_view_if_needed()  # frames draw once seen
                    await page.wait_for_timeout(600)  # charts and frames drawn
                    file = out / f"{name}{'-phone' if phone else ''}.png"
                    await page.screenshot(path=str(file), full_page=True)
                    print(file.relative_to(REPO))
                    await context.close()
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console")
    asyncio.run(shoot(parser.parse_args().out))


if __name__ == "__main__":
    main()
