"""Web tracking (docs/tracking.md): the snippet's page views at `POST /collect`, waiting
for their visitor's lead; a form post carrying the visitor, or a view from a tracked email
link (`nt`, signed), joins the visitor to the lead, and its views become the lead's
`page.view` responses, once each, and are scored. Do-Not-Track, Global Privacy Control
and bots store nothing; pages of other sites are refused; bad views are 400/422.

The app runs in-process on SQLite and PostgreSQL with a worker on the Temporal dev server
(tests/harness.py), so joined views really reach the lead's workflow and its score.
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from api.app import create_app
from channels.links import Links
from channels.render import message_context
from infra.settings import Settings
from models.db import Lead, Response, Visitor, VisitorView, utcnow
from models.workflow_io import SendRequest, StartEnrollment, lead_workflow_id
from services import accounts, tracking
from services.runtime import build_activities, build_links, open_database
from testkit import FIXTURE_DEFINITIONS
from tests.console_browser import PASSWORD, signed_in_http
from tests.harness import Harness, eventually, running_harness

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
SITE = "https://www.example.com"  # NURTURE_TRACKING_ORIGINS here
VISITOR = "a1" * 16
PAGE_POINTS = 10  # tests/fixtures/definitions/scoring.yaml: page_view


@dataclass
class Tracked:
    harness: Harness
    app: FastAPI
    links: Links
    settings: Settings

    def client(self, address: str = "203.0.113.7", **headers: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://nurture",
                                 headers={"User-Agent": FIREFOX, **headers})  # fmt: skip

    async def view(self, http: httpx.AsyncClient, url: str, visitor: str = VISITOR,
                   **fields) -> httpx.Response:  # fmt: skip
        body = {"visitor": visitor, "url": url, "title": "A page", **fields}
        return await http.post("/collect", json=body)

    def all(self, model) -> list:
        with self.harness.database.sessions() as session:
            return list(session.scalars(select(model)))

    def views_of(self, lead_id: str) -> list[Response]:
        with self.harness.database.sessions() as session:
            return list(session.scalars(
                select(Response).where(Response.lead_id == lead_id, Response.type == "page.view")
                .order_by(Response.occurred_at)
            ))  # fmt: skip

    async def score(self, lead_id: str, points: float) -> Lead:
        """The lead once its score is `points` (the workflow scored what it was given)."""

        def scored():
            with self.harness.database.sessions() as session:
                lead = session.get(Lead, lead_id)
                return lead if lead.score == points else None

        return await eventually(scored, timeout=20, what=f"score {points}")


@pytest.fixture
async def site(dev_server_env, settings, fixture_definitions) -> AsyncIterator[Tracked]:
    configured = settings.model_copy(update={"tracking_origins": SITE})
    async with running_harness(dev_server_env, configured, fixture_definitions) as harness:
        app = create_app(harness.intake, configured, relay=False)
        yield Tracked(harness, app, build_links(configured), configured)


async def test_anonymous_views_become_the_leads_scored_views_when_its_form_is_posted(site):
    async with site.client() as http:
        first = await site.view(http, f"{SITE}/pricing?utm_source=ads&utm_campaign=spring",
                                referrer="https://search.example/")  # fmt: skip
        second = await site.view(http, f"{SITE}/demo")
        assert first.status_code == second.status_code == 204, first.text
        waiting = site.all(VisitorView)
        assert [v.url for v in waiting] == [f"{SITE}/pricing?utm_source=ads&utm_campaign=spring",
                                            f"{SITE}/demo"]  # fmt: skip
        assert site.all(Response) == []  # nobody's yet: nothing to score
        posted = await http.post("/forms/demo-request",
                                 data={"work_email": "ada@example.com",
                                       tracking.VISITOR_FIELD: VISITOR})  # fmt: skip
    assert posted.status_code == 202, posted.text
    lead_id = posted.json()["lead_id"]
    site.harness.started.append(lead_workflow_id(lead_id))
    views = site.views_of(lead_id)
    assert [v.event_id for v in views] == [f"view:{v.id}" for v in waiting]
    assert [v.data for v in views] == [
        {"url": waiting[0].url, "title": "A page", "referrer": "https://search.example/"},
        {"url": f"{SITE}/demo", "title": "A page"},
    ]
    assert views[0].utm == {"utm_source": "ads", "utm_campaign": "spring"}
    assert [v.source for v in views] == ["web", "web"]
    assert site.all(VisitorView) == []  # no longer waiting
    (visitor,) = site.all(Visitor)
    assert (visitor.id, visitor.lead_id, visitor.joined_by) == (
        VISITOR, lead_id, "form:demo-request")  # fmt: skip
    # Both views scored (the form itself scores nothing in the test model).
    await site.score(lead_id, 2 * PAGE_POINTS)

    # The lead's next view is its own at once, and scored.
    async with site.client() as http:
        assert (await site.view(http, f"{SITE}/blog")).status_code == 204
    assert len(site.views_of(lead_id)) == 3 and site.all(VisitorView) == []
    await site.score(lead_id, 3 * PAGE_POINTS)


async def test_a_tracked_email_link_joins_the_visitor_and_a_forged_one_does_not(site):
    lead_id = await site.harness.enroll(email="grace@example.com")
    other = "b2" * 16
    token = site.links.tracking_token(lead_id)
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    async with site.client() as http:
        assert (await site.view(http, f"{SITE}/", visitor=other)).status_code == 204
        # Not ours (a wrong signature), or a lead we do not have: the view stays anonymous.
        assert (await site.view(http, f"{SITE}/a?nt={forged}", visitor=other,
                                nt=forged)).status_code == 204  # fmt: skip
        unknown = site.links.tracking_token("f" * 32)
        assert (await site.view(http, f"{SITE}/b", visitor=other, nt=unknown)).status_code == 204
        assert len(site.all(VisitorView)) == 3 and site.all(Visitor) == []
        linked = await site.view(http, f"{SITE}/pricing?x=1&nt={token}", visitor=other, nt=token)
    assert linked.status_code == 204
    (visitor,) = site.all(Visitor)
    assert (visitor.lead_id, visitor.joined_by) == (lead_id, "link")
    urls = [v.data["url"] for v in site.views_of(lead_id)]
    # The three before the link's, then its own; never stored with an nt, even a forged one.
    assert urls == [f"{SITE}/", f"{SITE}/a", f"{SITE}/b", f"{SITE}/pricing?x=1"]
    assert site.all(VisitorView) == []
    await site.score(lead_id, 4 * PAGE_POINTS)


async def test_joining_again_or_delivering_again_scores_nothing_twice(site):
    async with site.client() as http:
        await site.view(http, f"{SITE}/one")
        await site.view(http, f"{SITE}/two")
        waiting = site.all(VisitorView)
        posted = await http.post("/forms/demo-request",
                                 json={"work_email": "lin@example.com",
                                       tracking.VISITOR_FIELD: VISITOR})  # fmt: skip
    lead_id = posted.json()["lead_id"]
    site.harness.started.append(lead_workflow_id(lead_id))
    await site.score(lead_id, 2 * PAGE_POINTS)
    intake = site.harness.intake
    # A crash after the views were stored but before they were deleted: they wait again.
    with site.harness.database.sessions.begin() as session:
        session.add_all(VisitorView(id=v.id, visitor_id=v.visitor_id, url=v.url,
                                    occurred_at=v.occurred_at) for v in waiting)  # fmt: skip
    assert tracking.join(intake, VISITOR, lead_id, "form:demo-request") == []
    assert site.all(VisitorView) == []
    views = site.views_of(lead_id)
    assert len(views) == 2 and [v.duplicates for v in views] == [1, 1]
    # Delivered to the workflow again (the relay after a lost mark): it has them already.
    await intake.deliver(views)
    async with site.client() as http:  # a later view shows the score it was scored on
        await site.view(http, f"{SITE}/three")
    await site.score(lead_id, 3 * PAGE_POINTS)


async def test_do_not_track_and_global_privacy_control_store_nothing(site):
    async with site.client() as http:
        for header in ({"DNT": "1"}, {"Sec-GPC": "1"}):
            answer = await http.post("/collect", headers=header,
                                     json={"visitor": VISITOR, "url": f"{SITE}/"})  # fmt: skip
            assert answer.status_code == 204
        assert site.all(VisitorView) == []
        await site.view(http, f"{SITE}/before")  # one view before the browser said so
        posted = await http.post("/forms/newsletter", headers={"Sec-GPC": "1"},
                                 data={"email": "cy@example.com",
                                       tracking.VISITOR_FIELD: VISITOR})  # fmt: skip
    assert posted.status_code == 303
    (lead,) = site.all(Lead)
    site.harness.started.append(lead_workflow_id(lead.id))
    # The form is taken, but its browser is not joined to the lead.
    assert site.all(Visitor) == [] and site.views_of(lead.id) == []
    assert len(site.all(VisitorView)) == 1


@pytest.mark.parametrize("agent", [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36",
    "curl/8.5.0",
    "",
])  # fmt: skip
async def test_bots_are_answered_as_anyone_and_nothing_is_stored(site, agent):
    async with site.client(**{"User-Agent": agent}) as http:
        answer = await site.view(http, f"{SITE}/")
    assert answer.status_code == 204
    assert site.all(VisitorView) == []


async def test_pages_of_the_configured_sites_and_our_own_only(site):
    async with site.client(Origin=SITE) as http:
        allowed = await site.view(http, f"{SITE}/")
    async with site.client(Origin="http://nurture") as http:  # the API's own host
        own = await site.view(http, f"{SITE}/own")
    async with site.client(Origin="https://elsewhere.example") as http:
        refused = await site.view(http, "https://elsewhere.example/")
    assert allowed.status_code == own.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == SITE
    assert "access-control-allow-origin" not in own.headers
    assert refused.status_code == 403
    assert "NURTURE_TRACKING_ORIGINS" in refused.json()["detail"]
    assert [v.url for v in site.all(VisitorView)] == [f"{SITE}/", f"{SITE}/own"]


async def test_bad_views_are_refused_naming_the_field_and_nothing_is_stored(site):
    async with site.client() as http:
        not_json = await http.post("/collect", content=b"visitor=1",
                                   headers={"Content-Type": "text/plain"})  # fmt: skip
        a_list = await http.post("/collect", json=[{"visitor": VISITOR}])
        answers = {
            "visitor": await site.view(http, f"{SITE}/", visitor="short"),
            "url": await site.view(http, "javascript:alert(1)"),
            "title": await site.view(http, f"{SITE}/", title="x" * 501),
            "colour": await site.view(http, f"{SITE}/", colour="red"),
        }
        too_big = await site.view(http, f"{SITE}/", referrer="x" * 20_000)
        # As sendBeacon sends it: text/plain, still a JSON view.
        beacon = f'{{"visitor": "{VISITOR}", "url": "{SITE}/plain"}}'
        plain = await http.post("/collect", content=beacon, headers={"Content-Type": "text/plain"})
    assert not_json.status_code == a_list.status_code == 400
    for field, answer in answers.items():
        assert answer.status_code == 422, answer.text
        assert [p["field"] for p in answer.json()["problems"]] == [field]
    assert too_big.status_code == 413
    assert plain.status_code == 204
    assert [v.url for v in site.all(VisitorView)] == [f"{SITE}/plain"]


async def test_the_sixth_view_in_a_minute_from_one_address_is_refused(site):
    five = site.settings.model_copy(update={"tracking_rate_limit": "5/minute"})
    site.app = create_app(site.harness.intake, five, relay=False)
    async with site.client("198.51.100.9") as http:
        answers = [(await site.view(http, f"{SITE}/{n}")).status_code for n in range(6)]
        last = await site.view(http, f"{SITE}/again")
    async with site.client("198.51.100.10") as other:
        elsewhere = await site.view(other, f"{SITE}/")
    assert answers == [204] * 5 + [429] and 1 <= int(last.headers["retry-after"]) <= 60
    assert elsewhere.status_code == 204
    assert len(site.all(VisitorView)) == 6


async def test_the_snippet_is_small_first_party_and_honours_dnt_and_gpc(site):
    async with site.client() as http:
        answer = await http.get("/t.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert len(answer.content) < 4096
    script = answer.text
    for needed in ("doNotTrack", "globalPrivacyControl", "sendBeacon", tracking.VISITOR_FIELD,
                   '"collect"', '"forms/"'):  # fmt: skip
        assert needed in script
    # Nothing from another site: its only addresses are the example in its comment.
    assert [line for line in script.splitlines() if "://" in line] == [
        '   <script src="https://www.example.com/t.js" defer></script> */'
    ]


async def test_views_never_joined_are_deleted_after_the_retention(site):
    async with site.client() as http:
        await site.view(http, f"{SITE}/old")
        await site.view(http, f"{SITE}/new")
    with site.harness.database.sessions.begin() as session:
        session.execute(update(VisitorView).where(VisitorView.url == f"{SITE}/old")
                        .values(occurred_at=utcnow() - timedelta(days=31)))  # fmt: skip
    assert tracking.expire_views(site.harness.intake, timedelta(days=30)) == 1
    assert [v.url for v in site.all(VisitorView)] == [f"{SITE}/new"]


def test_tracked_links_carry_a_signed_lead_and_keep_the_rest_of_the_url():
    links = Links("a secret", "https://nurture.example.com")
    lead_id = "0123456789abcdef" * 2
    url = links.tracked_url("https://www.example.com/p?a=1&nt=old#top", lead_id)
    assert url.startswith("https://www.example.com/p?a=1&nt=") and url.endswith("#top")
    token = url.split("nt=")[1].split("#")[0]
    assert links.read_tracking_token(token) == lead_id
    assert Links("another secret", "x").read_tracking_token(token) is None
    assert links.read_tracking_token(f"{'f' * 32}.{token.split('.')[1]}") is None
    assert links.read_tracking_token("not-a-token") is None
    assert tracking.page(f"https://www.example.com/p?utm_source=%20mail%20&nt={token}&b=2") == (
        "https://www.example.com/p?utm_source=+mail+&b=2", {"utm_source": "mail"})  # fmt: skip
    assert tracking.page("http://[0]/?utm_source=x") == ("http://[0]/?utm_source=x", {})


def test_tracking_origins_must_be_origins():
    with pytest.raises(ValueError, match="not an origin"):
        Settings(NURTURE_TRACKING_ORIGINS="https://www.example.com/landing")
    settings = Settings(NURTURE_TRACKING_ORIGINS=" https://WWW.example.com/, http://a.example:8080")
    assert settings.tracking_origin_list() == ["https://www.example.com", "http://a.example:8080"]


def test_a_template_links_to_the_website_with_the_leads_signed_nt(tmp_path):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    visit = root / "templates" / "email" / "visit"
    visit.mkdir()
    (visit / "subject.txt").write_text("Our plans")
    footer = "{{ sender.postal_address }} {{ unsubscribe_url }}"
    (visit / "body.txt").write_text(f"Plans: {{{{ track('{SITE}/pricing?a=1') }}}}\n{footer}\n")
    (visit / "body.html").write_text(f"<a href=\"{{{{ track('{SITE}/pricing') }}}}\">Plans</a>"
                                     f"<p>{footer}</p>")  # fmt: skip
    settings = Settings(NURTURE_STATE_DIR=tmp_path / "state", NURTURE_DEFINITIONS=root,
                        DATABASE_URL=f"sqlite:///{tmp_path / 'nurture.db'}")  # fmt: skip
    database = open_database(settings)
    activities = build_activities(settings, database).lead
    with database.sessions.begin() as session:
        lead = Lead(email="lin@example.com")
        session.add(lead)
        session.flush()
        lead_id = lead.id
    activities.start_enrollment(StartEnrollment(
        lead_id=lead_id, enrollment_id=f"{lead_id}:month:v1", workflow_id=f"lead-{lead_id}",
        sequence_id="month", sequence_version=1))  # fmt: skip
    request = SendRequest(lead_id=lead_id, enrollment_id=f"{lead_id}:month:v1",
                          sequence_id="month", step_id="welcome", visit=1, channel="email",
                          template="visit")  # fmt: skip
    assert activities.send_message(request).status == "sent"
    (eml,) = settings.outbox_dir.glob("*.eml")
    sent = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    text = sent.get_body(("plain",)).get_content()
    found = re.search(rf"Plans: {re.escape(SITE)}/pricing\?a=1&nt=(\S+)", text)
    assert found and build_links(settings).read_tracking_token(found[1]) == lead_id
    html = sent.get_body(("html",)).get_content()
    assert f'href="{SITE}/pricing?nt={found[1]}"' in html
    # A preview, or `nurture validate`, shows the link as written.
    context = message_context({"first_name": "Lin"}, {}, "https://u.example/x")
    assert context["track"](f"{SITE}/pricing") == f"{SITE}/pricing"
    database.engine.dispose()


async def test_the_console_shows_the_tag_to_paste_and_a_leads_views(site):
    accounts.add_user(site.harness.database.sessions, "tests", "admin@example.com", "Admin",
                      "admin", PASSWORD, None, set())  # fmt: skip
    async with site.client() as http:
        await site.view(http, f"{SITE}/pricing-page")
        posted = await http.post("/forms/demo-request",
                                 json={"work_email": "ida@example.com",
                                       tracking.VISITOR_FIELD: VISITOR})  # fmt: skip
    lead_id = posted.json()["lead_id"]
    site.harness.started.append(lead_workflow_id(lead_id))
    async with signed_in_http(site.app, "admin@example.com") as http:
        page = await http.get("/console/operations")
        lead_page = await http.get(f"/console/leads/{lead_id}")
    assert lead_page.status_code == 200
    assert "page.view" in lead_page.text and f"{SITE}/pricing-page" in lead_page.text
    assert page.status_code == 200
    assert ('&lt;script src=&#34;http://127.0.0.1:8000/t.js&#34; defer&gt;&lt;/script&gt;'
            in page.text)  # fmt: skip
    assert f"(NURTURE_TRACKING_ORIGINS): {SITE}." in page.text
