"""Fixtures for the console's browser tests (a pytest plugin: tests/conftest.py loads it).

- `console_site`: one worker and API on the Temporal dev server (SQLite, the test
  definitions), for the whole run, with a user per role (PASSWORD for all):
  admin@example.com, marketer@example.com, alice@example.com (rep alice),
  bob@example.com (rep bob), viewer@example.com. Its helpers drive real traffic through
  the API: `await site.hot_lead("x")` makes a lead, plays responses until it is handed off
  to rep alice (or `rep="bob"`), and returns the lead and its handoff rows. Tests share the
  site, so each uses its own lead names.
- `browser`: Debian's Chromium (/usr/bin/chromium, or CHROMIUM) driven by Playwright;
  never a downloaded browser.
- `signed_in`: `page = await signed_in("rep")` is a new page signed in as that role
  (rep is alice; "bob" is the other rep); closed after the test.
- `assert_accessible(page)`: axe-core (from axe-playwright-python) on the page; fails on
  any serious or critical violation, listing them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from models.db import CompanyOwner, Handoff, Lead
from services import accounts
from testkit.stack import local_stack
from tests.harness import eventually

PASSWORD = "correct horse battery staple"
TOKEN = "console-test-token"
USERS = {  # role fixture name -> (email, role, rep)
    "admin": ("admin@example.com", "admin", None),
    "marketer": ("marketer@example.com", "marketer", None),
    "rep": ("alice@example.com", "rep", "alice"),
    "bob": ("bob@example.com", "rep", "bob"),
    "viewer": ("viewer@example.com", "viewer", None),
}
# Leads of these companies are handed to their owner (sales/routing.py, rule 1).
REP_DOMAINS = {"alice": "alice-co.example", "bob": "bob-co.example"}
# 50 + 30 points: SQL at 50 (scoring.yaml). The webinar first: a reply before the handoff
# would end the sequence on its own (on_reply: exit), and the lead is shown handed off.
HOT_EVENTS = ("webinar.attended", "email.reply")


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"no Chromium at {path}: `apt-get install chromium` (.ci/run does)")
    return path


@dataclass
class ConsoleSite:
    stack: object  # devstack.stack.RunningStack
    url: str
    http: httpx.AsyncClient  # the API, with the admin bearer token
    leads: dict[str, str] = field(default_factory=dict)

    @property
    def sessions(self):
        return self.stack.database.sessions

    async def lead(self, name: str, rep: str = "alice", **fields) -> str:
        """A new lead `name@<rep's company>` enrolled through POST /leads; its ID."""
        body = {"email": f"{name}@{REP_DOMAINS[rep]}", "first_name": name.title(), **fields}
        answer = await self.http.post("/leads", json=body)
        assert answer.status_code == 201, answer.text
        self.leads[name] = answer.json()["lead_id"]
        return self.leads[name]

    async def respond(self, lead_id: str, kind: str, **data) -> None:
        answer = await self.http.post("/events", json={"lead_id": lead_id, "type": kind,
                                                       "data": data})  # fmt: skip
        assert answer.status_code == 202, answer.text

    async def hot_lead(self, name: str, rep: str = "alice") -> tuple[Lead, Handoff]:
        """A lead handed off to `rep` by real responses; the lead and handoff rows."""
        lead_id = await self.lead(name, rep)
        for kind in HOT_EVENTS:
            await self.respond(lead_id, kind)

        def handed_off():
            with self.sessions() as session:
                handoff = session.scalar(select(Handoff).where(Handoff.lead_id == lead_id))
                return handoff and (session.get(Lead, lead_id), handoff)

        return await eventually(handed_off, what=f"{name} handed off")


@pytest_asyncio.fixture(scope="session")
async def console_site(dev_server_env) -> AsyncIterator[ConsoleSite]:
    target = dev_server_env.client.service_client.config.target_host
    # Every browser here is 127.0.0.1: the per-address limit of refusals is raised, or the
    # tests of refusals would lock the others out (tests/test_api_security.py tests it).
    async with local_stack(target, task_queue="console-tests", token=TOKEN,
                           NURTURE_AUTH_FAILURE_LIMIT="10000/minute") as stack:  # fmt: skip
        with stack.database.sessions.begin() as session:
            for rep, domain in REP_DOMAINS.items():
                session.add(CompanyOwner(domain=domain, rep_id=rep))
        reps = {rep.id for rep in stack.definitions.sales.reps}
        for email, role, rep in USERS.values():
            accounts.add_user(stack.database.sessions, "tests", email, email.split("@")[0].title(),
                              role, PASSWORD, rep, reps)  # fmt: skip
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as http:
            yield ConsoleSite(stack, stack.api_url, http)


@pytest_asyncio.fixture(scope="session")
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(),
                                                    args=["--no-sandbox"])  # fmt: skip
        yield launched
        await launched.close()


async def sign_in(browser, site: ConsoleSite, role: str):
    """A new browser context and page, signed in through the login form as `role`."""
    context = await browser.new_context(base_url=site.url)
    page = await context.new_page()
    await page.goto("/console/login")
    await page.get_by_label("Email").fill(USERS[role][0])
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(lambda url: "/console/login" not in url)
    return page


@pytest_asyncio.fixture
async def signed_in(browser, console_site) -> AsyncIterator[Callable[[str], Awaitable]]:
    pages = []

    async def open_as(role: str):
        page = await sign_in(browser, console_site, role)
        pages.append(page)
        return page

    yield open_as
    for page in pages:
        await page.context.close()


CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@contextlib.asynccontextmanager
async def signed_in_http(app, email: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `app` in-process (no browser), signed in as `email` through the
    sign-in form."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture.test") as http:
        login = await http.get("/console/login")
        csrf = CSRF_FIELD.search(login.text)[1]
        form = {"email": email, "password": PASSWORD, "csrf": csrf}
        signed = await http.post("/console/login", data=form)
        assert signed.status_code == 303, signed.text
        yield http


async def assert_accessible(page) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(node["target"]) for node in v["nodes"][:3])
        for v in bad
    )
