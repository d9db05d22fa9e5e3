"""Screenshots of every console page for docs/console.md, taken from a real stack.

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

Starts the Temporal dev server (in memory), a worker and the API on the test definitions
and SQLite, drives real traffic through the API (leads, responses, hot leads handed off to
both reps, one answered), signs in as each role in Debian's Chromium, and saves one PNG
per page at laptop width, plus the overview and the handoff inbox at phone width.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx
from playwright.async_api import async_playwright
from sqlalchemy import select

from models.db import CompanyOwner, Handoff
from services import accounts
from testkit.stack import local_stack, temporal_dev_server

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "screenshots password"
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


async def shoot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    async with temporal_dev_server() as env:
        target = env.client.service_client.config.target_host
        async with (
            local_stack(target, task_queue="shots", token="shots")
            as stack,
            httpx.AsyncClient(base_url=stack.api_url, timeout=30,
                              headers={"Authorization": "Bearer shots"}) as http,
            async_playwright() as playwright,
        ):  # fmt: skip
            model = seed_models(stack)
            lead = await seed(stack, http)
            browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium")
            for name, role, path in PAGES:
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
