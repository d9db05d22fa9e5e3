"""The console's Models page (api/console/pages/models.py).

In a real browser (Debian's Chromium, tests/console_browser.py): a viewer sees every
trained model with its test figures beside the rules', a refused one with why, and a
model's deciles; axe-core finds no serious violation. The site's models stay candidates:
its worker scores leads for the other console tests, which an active model would change.

In-process, on a database of its own: a marketer activates, activates another, rolls
back and retires, each audited; a refused model cannot be activated (409, the page says
why); a viewer may look but not change (403), a rep may not look.
"""

from __future__ import annotations

import functools

import pytest
from sqlalchemy import select

from api.app import create_app
from models.db import AuditEntry, PredictiveModelRecord
from scoring import synthetic
from scoring.history import HistoryLead
from scoring.model_store import store
from scoring.predictive import Training, train
from services import accounts
from services.definitions import load_definitions
from services.intake import Intake
from services.runtime import open_database
from testkit import REPO
from tests.console_browser import CSRF_FIELD, PASSWORD, USERS, assert_accessible, signed_in_http


@functools.cache
def trained(seed: int, min_auc: float = 0.6) -> Training:
    """A model of a small synthetic history (a different one per seed)."""
    definitions = load_definitions(REPO)
    history = [HistoryLead.model_validate(lead) for lead in synthetic.generate(2500, seed)]
    settings = definitions.scoring.predictive.model_copy(update={"min_auc": min_auc})
    return train(history, definitions, settings)


def stored(sessions, *trainings: Training) -> list[str]:
    with sessions.begin() as session:
        return [store(session, training, "tests").fingerprint for training in trainings]


def status_of(sessions, fingerprint: str) -> str:
    with sessions() as session:
        return session.get(PredictiveModelRecord, fingerprint).status


@pytest.mark.devserver
async def test_the_models_page_shows_each_model_against_the_rules(console_site, signed_in):
    good, refused = stored(console_site.sessions, trained(1), trained(2, min_auc=0.99))
    page = await signed_in("viewer")
    await page.goto("/console/models")
    row = page.locator("tbody tr", has_text=good)
    figures = trained(1).model.summary["metrics"]
    assert "candidate" in await row.inner_text()
    assert (
        f"{figures['model']['roc_auc']} / {figures['rules']['roc_auc']}" in await row.inner_text()
    )
    refused_row = page.locator("tbody tr", has_text=refused)
    assert "predictive.min_auc (0.99)" in await refused_row.inner_text()
    assert await page.get_by_role("button", name="Activate").count() == 0  # a viewer
    await assert_accessible(page)

    await page.get_by_role("link", name=good).click()
    await page.get_by_role("heading", name="The model on the test period").wait_for()
    deciles = page.locator("section", has_text="The model on the test period").locator("tbody tr")
    assert await deciles.count() == 10
    assert "Lift" in await page.locator("section", has_text="The rules on").inner_text()
    await assert_accessible(page)


@pytest.fixture
async def models_console(sqlite_settings, fixture_definitions, dev_server_env):
    """The API in-process on a database of its own, with three models stored and the
    marketer, viewer and rep of the console tests."""
    database = open_database(sqlite_settings)
    intake = Intake(fixture_definitions, database.sessions, dev_server_env.client,
                    sqlite_settings.task_queue)  # fmt: skip
    for role in ("marketer", "viewer", "rep"):
        email, role_name, rep = USERS[role]
        accounts.add_user(database.sessions, "tests", email, role, role_name, PASSWORD, rep,
                          {rep} if rep else set())  # fmt: skip
    fingerprints = stored(database.sessions, trained(1), trained(3), trained(2, min_auc=0.99))
    yield create_app(intake, sqlite_settings, relay=False), database.sessions, fingerprints
    database.engine.dispose()


@pytest.mark.devserver
async def test_a_marketer_activates_rolls_back_and_retires(models_console):
    app, sessions, (first, second, refused) = models_console
    async with signed_in_http(app, USERS["marketer"][0]) as http:

        async def post(path: str):
            csrf = CSRF_FIELD.search((await http.get("/console/models")).text)[1]
            return await http.post(path, data={"csrf": csrf})

        answer = await post(f"/console/models/{first}/activate")
        assert answer.status_code == 303 and status_of(sessions, first) == "active"
        assert "Activated" in (await http.get(answer.headers["location"])).text
        assert (await post(f"/console/models/{second}/activate")).status_code == 303
        assert (status_of(sessions, first), status_of(sessions, second)) == ("candidate", "active")

        assert (await post("/console/models/previous/activate")).status_code == 303
        assert (status_of(sessions, first), status_of(sessions, second)) == ("active", "candidate")

        refusal = await post(f"/console/models/{refused}/activate")
        assert refusal.status_code == 409 and "was refused when it was trained" in refusal.text
        assert status_of(sessions, first) == "active"  # nothing changed

        assert (await post(f"/console/models/{first}/retire")).status_code == 303
        assert status_of(sessions, first) == "retired"
        unknown = await post("/console/models/pm-0000000000000000/activate")
        assert unknown.status_code == 404

    with sessions() as session:
        actions = session.scalars(select(AuditEntry.action).where(
            AuditEntry.actor == USERS["marketer"][0]).order_by(AuditEntry.id)).all()  # fmt: skip
    assert [a for a in actions if a.startswith("model.")] == [
        "model.activate", "model.activate", "model.rollback", "model.retire"]  # fmt: skip


@pytest.mark.devserver
async def test_a_viewer_looks_and_a_rep_may_not(models_console):
    app, sessions, (first, _, _) = models_console
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        listing = await http.get("/console/models")
        assert (
            listing.status_code == 200 and first in listing.text and "Activate" not in listing.text
        )
        csrf = CSRF_FIELD.search(listing.text)
        data = {"csrf": csrf[1]} if csrf else {}
        refused = await http.post(f"/console/models/{first}/activate", data=data)
        assert refused.status_code == 403 and status_of(sessions, first) == "candidate"
    async with signed_in_http(app, USERS["rep"][0]) as http:
        assert (await http.get("/console/models")).status_code == 403
