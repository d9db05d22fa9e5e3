"""The console's accounts in a real browser (Chromium through Playwright) and over HTTP:
signing in and out, what each role may open, CSRF, sign-in limits, disabling a user,
API tokens and their scopes, and the audit log."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.console.web import COOKIE
from models.db import AuditEntry, User
from services import accounts
from tests.console_browser import PASSWORD, assert_accessible

pytestmark = pytest.mark.devserver


def audited(site, action: str, actor: str | None = None) -> list[AuditEntry]:
    with site.sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == action)
        if actor:
            query = query.where(AuditEntry.actor == actor)
        return list(session.scalars(query.order_by(AuditEntry.id)))


async def test_sign_in_then_out(browser, console_site):
    context = await browser.new_context(base_url=console_site.url)
    page = await context.new_page()
    await page.goto("/console/users")  # not signed in: to the sign-in page, then back
    assert "/console/login?next=%2Fconsole%2Fusers" in page.url
    await assert_accessible(page)
    await page.get_by_label("Email").fill("admin@example.com")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").wait_for()
    assert "Wrong email or password" in await page.get_by_role("alert").inner_text()

    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/users")
    assert await page.get_by_role("heading", name="Users").is_visible()
    cookie = next(c for c in await context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
    assert audited(console_site, "login", "admin@example.com")

    await page.get_by_role("button", name="Sign out", exact=True).click()
    await page.wait_for_url("**/console/login?signed_out=1")
    await page.goto("/console/users")
    assert "/console/login" in page.url  # the session ended on the server
    assert not [c for c in await context.cookies() if c["name"] == COOKIE]
    await context.close()


@pytest.mark.parametrize("role", ["rep", "viewer", "marketer"])
async def test_only_admins_open_users_and_audit(signed_in, role):
    page = await signed_in(role)
    for path in ("/console/users", "/console/audit"):
        answer = await page.goto(path)
        assert answer.status == 403
        assert "may not" in await page.get_by_role("main").inner_text()
    nav = await page.get_by_role("navigation", name="Console").inner_text()
    assert "Users" not in nav and "Audit log" not in nav


async def test_a_form_without_its_csrf_token_is_refused(signed_in, console_site):
    page = await signed_in("admin")
    form = {"email": "forged@example.com", "role": "admin", "password": "x" * 20}
    refused = await page.request.post("/console/users", form=form)
    assert refused.status == 403 and "security token" in await refused.text()
    wrong = await page.request.post("/console/users", form={**form, "csrf": "guessed"})
    assert wrong.status == 403
    with console_site.sessions() as session:
        assert session.scalar(select(User).where(User.email == "forged@example.com")) is None


async def test_admin_adds_resets_and_disables_users(signed_in, console_site, browser):
    page = await signed_in("admin")
    await page.goto("/console/users")
    await assert_accessible(page)
    form = page.get_by_role("region", name="Add a user")
    await form.get_by_label("Email").fill("newbie@example.com")
    await form.get_by_label("Name").fill("New Bie")
    await form.get_by_label("Role").select_option("viewer")
    await form.get_by_label("Password (12 characters or more)").fill("a fine long password")
    await form.get_by_role("button", name="Add the user").click()
    await page.get_by_text("Added newbie@example.com.").wait_for()

    async def newbie_signs_in(password: str):
        context = await browser.new_context(base_url=console_site.url)
        newbie = await context.new_page()
        await newbie.goto("/console/login")
        await newbie.get_by_label("Email").fill("newbie@example.com")
        await newbie.get_by_label("Password").fill(password)
        await newbie.get_by_role("button", name="Sign in").click()
        await newbie.wait_for_url("**/console/")
        return newbie

    newbie = await newbie_signs_in("a fine long password")
    reset = page.get_by_role("region", name="Reset a password")
    await reset.get_by_label("User").select_option("newbie@example.com")
    await reset.get_by_label("New password").fill("another long password")
    await reset.get_by_role("button", name="Reset and sign out everywhere").click()
    await page.get_by_text("New password for newbie@example.com.").wait_for()
    await newbie.goto("/console/")  # the reset signed the old session out
    assert "/console/login" in newbie.url
    await newbie.context.close()

    newbie = await newbie_signs_in("another long password")
    row = page.get_by_role("row").filter(has_text="newbie@example.com")
    await row.get_by_role("button", name="Disable").click()
    await page.get_by_text("Disabled newbie@example.com.").wait_for()
    await newbie.goto("/console/")  # signed out everywhere at once
    assert "/console/login" in newbie.url
    await newbie.context.close()
    with console_site.sessions() as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.target == "newbie@example.com")
                               .order_by(AuditEntry.id))  # fmt: skip
        assert [(e.actor, e.action) for e in rows] == [
            ("admin@example.com", "user.add"),
            ("admin@example.com", "user.reset_password"),
            ("admin@example.com", "user.disable"),
        ]


async def test_sign_in_is_limited_per_account(console_site):
    accounts.add_user(console_site.sessions, "tests", "limited@example.com", "", "viewer",
                      "the right password", None, set())  # fmt: skip
    async with httpx.AsyncClient(base_url=console_site.url) as http:
        form = await http.get("/console/login")
        csrf = form.cookies["nurture_login_csrf"]

        async def attempt(password: str) -> httpx.Response:
            body = {"email": "limited@example.com", "password": password, "csrf": csrf}
            # The site's per-address limit is raised: the account's own limit answers.
            return await http.post("/console/login", data=body)

        statuses = [(await attempt(f"wrong {n}")).status_code for n in range(5)]
        assert statuses == [401] * 5
        blocked = await attempt("the right password")
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        assert COOKIE not in blocked.cookies
    assert len(audited(console_site, "login.failed", "limited@example.com")) == 5


async def test_api_tokens_have_scopes(console_site):
    reps = {"alice", "bob"}
    accounts.add_user(console_site.sessions, "tests", "forms@example.com", "", "marketer",
                      "a long enough password", None, reps)  # fmt: skip
    token, scopes = accounts.create_token(console_site.sessions, "tests", "forms@example.com",
                                          "website", ["events:write"])  # fmt: skip
    assert scopes == ["events:write"]
    with pytest.raises(accounts.AccountError, match="may not have 'handoffs:answer'"):
        accounts.create_token(console_site.sessions, "tests", "forms@example.com", "x",
                              ["handoffs:answer"])  # fmt: skip
    lead_id = await console_site.lead("tokened")
    async with httpx.AsyncClient(base_url=console_site.url) as http:
        auth = {"Authorization": f"Bearer {token}"}
        event = {"lead_id": lead_id, "type": "page.view"}
        assert (await http.post("/events", json=event, headers=auth)).status_code == 202
        lead = {"email": "scoped@example.com"}
        refused = await http.post("/leads", json=lead, headers=auth)
        assert refused.status_code == 403 and "leads:write" in refused.json()["detail"]

        revoked, _ = accounts.create_token(console_site.sessions, "tests", "forms@example.com",
                                           "old", [])  # fmt: skip
        (row,) = [t for t in accounts.list_tokens(console_site.sessions) if t["name"] == "old"]
        accounts.revoke_token(console_site.sessions, "tests", row["id"])
        gone = await http.post("/events", json=event,
                               headers={"Authorization": f"Bearer {revoked}"})  # fmt: skip
        assert gone.status_code == 401
    assert [e.target for e in audited(console_site, "token.revoke")] == [row["id"]]


async def test_the_audit_log_page(signed_in, console_site):
    accounts.add_user(console_site.sessions, "cli:ops", "audited@example.com", "", "viewer",
                      "a long enough password", None, set())  # fmt: skip
    page = await signed_in("admin")
    await page.goto("/console/audit?actor=cli%3Aops")
    row = page.get_by_role("row").filter(has_text="audited@example.com")
    assert "user.add" in await row.inner_text()
    await assert_accessible(page)
    await page.goto("/console/audit?action=login")
    assert "admin@example.com" in await page.get_by_role("table").inner_text()


def test_users_commands(console_site, monkeypatch):
    from cli.app import app

    settings = console_site.stack.settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(settings.definitions_dir))
    monkeypatch.setenv("NURTURE_STATE_DIR", str(settings.state_dir))
    runner = CliRunner()
    added = runner.invoke(app, ["users", "add", "cli-rep@example.com", "--role", "rep",
                                "--rep", "bob"], input="a long enough password\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    no_rep = runner.invoke(app, ["users", "add", "x@example.com", "--role", "rep"],
                           input="a long enough password\n")  # fmt: skip
    assert no_rep.exit_code == 1 and "--rep ID" in no_rep.output
    short = runner.invoke(app, ["users", "add", "y@example.com", "--role", "viewer"],
                          input="short\n")  # fmt: skip
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    listed = runner.invoke(app, ["users", "list"])
    assert "cli-rep@example.com" in listed.output and "rep=bob" in listed.output
    token = runner.invoke(app, ["users", "token", "cli-rep@example.com", "--name", "crm"])
    assert token.exit_code == 0 and token.stdout.strip().splitlines()[-1].startswith("nt_")
    assert runner.invoke(app, ["users", "disable", "cli-rep@example.com"]).exit_code == 0
    assert "disabled" in runner.invoke(app, ["users", "list"]).output
    reset = runner.invoke(app, ["users", "reset-password", "nobody@example.com"],
                          input="a long enough password\n")  # fmt: skip
    assert reset.exit_code == 1 and "no user nobody@example.com" in reset.output
    log = runner.invoke(app, ["users", "audit", "--action", "user."])
    assert "user.disable" in log.output and "cli-rep@example.com" in log.output
    (entry,) = [
        e for e in audited(console_site, "user.disable") if e.target == "cli-rep@example.com"
    ]
    assert entry.actor.startswith("cli:")  # the machine's user who ran the command


async def test_keyboard_only_and_a_phone_screen(browser, console_site):
    """Signing in with the keyboard alone, the skip link first in the tab order, and no
    page wider than a phone's screen."""
    context = await browser.new_context(base_url=console_site.url,
                                        viewport={"width": 390, "height": 844})  # fmt: skip
    page = await context.new_page()
    await page.goto("/console/login")
    await page.keyboard.type("admin@example.com")  # the email field has the focus
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/")
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    await page.keyboard.press("Enter")
    assert page.url.endswith("#content")
    for path in ("/console/", "/console/leads", "/console/sequences", "/console/handoffs",
                 "/console/operations", "/console/users", "/console/website"):  # fmt: skip
        await page.goto(path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    await context.close()
