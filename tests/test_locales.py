"""Languages (issue 21, point 5): a lead's locale, the templates' variants by the fallback
chain (de-AT -> de -> default), Babel's formats, and what validate and preview make of them."""

from __future__ import annotations

import email
import email.policy
import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from jinja2 import DictLoader, UndefinedError
from pydantic import ValidationError
from sqlalchemy import func, select

from api.app import create_app
from channels.render import message_context, render_email, render_sms
from channels.template_sets import TemplateVersions
from models.db import Lead, Message
from models.jinja import sandboxed_environment
from models.locales import (
    candidates,
    fallback_chain,
    locale_from_accept_language,
    normalise_locale,
    split_variant,
)
from models.workflow_io import SendRequest, StartEnrollment
from services.importer import LeadImporter, open_csv, parse_maps, plan_columns
from services.intake import Intake, LeadIn
from services.preview import PreviewError, preview
from services.runtime import build_activities
from services.validate import validate
from tests.conftest import FIXTURE_DEFINITIONS

SENDER = {"name": "Ada", "email": "ada@example.com", "company": "Co", "postal_address": "1 St"}
UNSUBSCRIBE = "https://example.com/u/x"


# --- tags and the chain ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "normalised"),
    [("de-AT", "de-AT"), ("de-at", "de-AT"), ("de_AT", "de-AT"), ("DE", "de"),
     ("zh-Hant-TW", "zh-Hant-TW"), ("es-419", "es-419"), (" pt-BR ", "pt-BR")],
)  # fmt: skip
def test_tags_are_normalised(tag, normalised):
    assert normalise_locale(tag) == normalised


@pytest.mark.parametrize("tag", ["xx", "de-XX", "german", "de AT", "", "en-US-x-twain"])
def test_unknown_tags_are_refused(tag):
    with pytest.raises(ValueError, match="unknown locale .* BCP 47"):
        normalise_locale(tag)


def test_the_fallback_chain_goes_from_specific_to_general():
    assert fallback_chain("de-AT") == ["de-AT", "de"]
    assert fallback_chain("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh"]
    assert fallback_chain(None) == []
    assert candidates("email/w/body.html", "de-AT") == [
        "email/w/body.de-AT.html", "email/w/body.de.html", "email/w/body.html"]  # fmt: skip
    assert candidates("sms/nudge.txt", None) == ["sms/nudge.txt"]


def test_variant_file_names_are_told_from_default_ones():
    assert split_variant("email/w/body.de-AT.html") == ("email/w/body.html", "de-AT")
    assert split_variant("sms/nudge.de.txt") == ("sms/nudge.txt", "de")
    assert split_variant("email/w/body.html") == ("email/w/body.html", None)
    assert split_variant("email/w/body.de_at.html")[1] is None  # not a normalised tag
    assert split_variant("email/_layout.html") == ("email/_layout.html", None)


def test_accept_language_gives_the_best_locale_templates_exist_for():
    available = {"en", "de"}
    assert locale_from_accept_language("de-AT,de;q=0.9,en;q=0.8", available) == "de-AT"
    assert locale_from_accept_language("fr-CH, fr;q=0.9, de;q=0.7, *;q=0.5", available) == "de"
    assert locale_from_accept_language("en;q=0.3, de-ch;q=0.8", available) == "de-CH"
    assert locale_from_accept_language("de;q=0, en", available) == "en"
    assert locale_from_accept_language("fr, xx-YY, ;q=bad", available) is None
    assert locale_from_accept_language(None, available) is None


# --- rendering -------------------------------------------------------------------------------


def email_files(**variants: str) -> dict[str, str]:
    """The email `w` with a default and, for each tag given, a complete variant."""
    files = {"email/w/subject.txt": "Hello", "email/w/body.html": "<p>Hello</p>",
             "email/w/body.txt": "Hello", "sms/s.txt": "Hello"}  # fmt: skip
    for tag, word in variants.items():
        tag = tag.replace("_", "-")
        files |= {f"email/w/subject.{tag}.txt": word, f"email/w/body.{tag}.html": f"<p>{word}</p>",
                  f"email/w/body.{tag}.txt": word, f"sms/s.{tag}.txt": word}  # fmt: skip
    return files


def rendered(files: dict[str, str], locale: str | None, default: str = "en"):
    env = sandboxed_environment(DictLoader(files))
    context = message_context({"locale": locale}, SENDER, UNSUBSCRIBE, default)
    message = render_email(env, "w", context)
    body = message.html.split("<body>")[1].split("</body>")[0]  # the inliner adds the rest
    return message.subject, body, message.text, render_sms(env, "s", context)


def test_a_de_at_lead_gets_the_de_variant():
    assert rendered(email_files(de="Hallo"), "de-AT") == ("Hallo", "<p>Hallo</p>", "Hallo", "Hallo")


def test_a_lead_in_a_language_without_variants_gets_the_default():
    assert rendered(email_files(de="Hallo"), "fr") == ("Hello", "<p>Hello</p>", "Hello", "Hello")
    assert rendered(email_files(de="Hallo"), None) == ("Hello", "<p>Hello</p>", "Hello", "Hello")


def test_the_de_at_variant_is_preferred_when_there_is_one():
    files = email_files(de="Hallo", de_AT="Servus")
    assert rendered(files, "de-AT")[0] == "Servus"
    assert rendered(files, "de-DE")[0] == "Hallo"


def test_each_part_falls_back_on_its_own():
    files = email_files(de="Hallo") | {"email/w/subject.de-AT.txt": "Servus"}
    assert rendered(files, "de-AT")[:3] == ("Servus", "<p>Hallo</p>", "Hallo")


def test_the_default_locale_picks_the_variant_for_leads_without_one():
    assert rendered(email_files(de="Hallo"), None, default="de")[0] == "Hallo"


def formatted(template: str, locale: str | None, timezone: str = "UTC", **values) -> str:
    env = sandboxed_environment()
    lead = {"locale": locale, "timezone": timezone}
    return env.from_string(template).render(message_context(lead, SENDER, UNSUBSCRIBE) | values)


def test_dates_times_and_numbers_are_written_for_the_locale():
    template = "{{ d | date }} {{ d | date('long') }} {{ n | number }} {{ a | currency('EUR') }}"
    values = {"d": "2026-03-14", "n": 1234567.891, "a": Decimal("1234.5")}
    assert formatted(template, "de-AT", **values) == (
        "14.03.2026 14. März 2026 1.234.567,891 €\u00a01.234,50"
    )  # Austria: € first
    assert formatted(template, None, **values) == (
        "Mar 14, 2026 March 14, 2026 1,234,567.891 €1,234.50")  # fmt: skip
    assert formatted("{{ p | percent }}", "fr", p=0.25) == "25\u00a0%"


def test_times_are_in_the_leads_time_zone():
    moment = datetime(2026, 3, 14, 8, 30, tzinfo=UTC)
    assert formatted("{{ t | time }}", "de", "Europe/Vienna", t=moment) == "09:30"
    assert formatted("{{ t | datetime('short') }}", "en-GB", "Europe/London", t=moment) == (
        "14/03/2026, 08:30")  # fmt: skip
    assert formatted("{{ t | date }}", "de", "Pacific/Auckland", t=moment) == "14.03.2026"
    assert formatted("{{ t | date }}", "en", t=date(2026, 1, 2)) == "Jan 2, 2026"


def test_what_is_no_date_or_number_is_an_error_not_a_guess():
    with pytest.raises(UndefinedError, match="no attribute 'trial_ends'"):
        formatted("{{ lead.trial_ends | date }}", "de")
    with pytest.raises(ValueError, match="not a date"):
        formatted("{{ 'soon' | date }}", "de")
    with pytest.raises(ValueError, match="not a number"):
        formatted("{{ 'many' | number }}", "de")


def test_an_sms_keeps_to_gsm_7_with_formatted_amounts():
    env = sandboxed_environment(DictLoader({"sms/s.txt": "{{ 1234.5 | currency('EUR') }}"}))
    context = message_context({"locale": "fr"}, SENDER, UNSUBSCRIBE)
    assert render_sms(env, "s", context) == "1 234,50 €"  # no-break spaces would be UCS-2


# --- the lead's locale at intake and import ---------------------------------------------------


def test_intake_normalises_the_locale_and_refuses_an_unknown_one():
    assert LeadIn(email="a@example.com", locale="de_at").locale == "de-AT"
    assert LeadIn(email="a@example.com", locale=" ").locale is None
    with pytest.raises(ValidationError) as raised:
        LeadIn(email="a@example.com", locale="klingon")
    (error,) = raised.value.errors()
    assert error["loc"] == ("locale",) and "unknown locale 'klingon'" in error["msg"]


def test_the_api_stores_the_locale_and_refuses_a_bad_one(settings, database, fixture_definitions):
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    client = TestClient(create_app(intake, settings, relay=False))
    auth = {"Authorization": "Bearer test-token"}
    refused = client.post("/leads", json={"email": "x@example.com", "locale": "xx"}, headers=auth)
    assert refused.status_code == 422
    assert refused.json()["problems"] == [{"field": "locale", "message": (
        "unknown locale 'xx' (use a BCP 47 language tag such as de or de-AT)")}]  # fmt: skip
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0
    lead, _created = intake.upsert_lead(LeadIn(email="y@example.com", locale="de-at"))
    with database.sessions() as session:
        assert session.get(Lead, lead.id).profile()["locale"] == "de-AT"


def test_an_import_row_with_a_bad_language_is_rejected_naming_the_field(
    tmp_path, fixture_definitions
):
    path = tmp_path / "leads.csv"
    path.write_text("email,language\na@example.com,de-AT\nb@example.com,Deutsch\n")
    source = open_csv(path)
    plan = plan_columns(source.headers, parse_maps([]), [])
    intake = Intake(fixture_definitions, None, None, "unused")
    report = LeadImporter(source, plan, intake, dry_run=True).run_sync()
    (row,) = report.rejected
    assert (row.line, row.field) == (3, "locale")
    assert "unknown locale 'Deutsch'" in row.reason


# --- a real send, from the version the lead was enrolled with ---------------------------------


TRIAL_ENDS = "lead.attributes.get('trial_ends', '2026-01-01')"  # the sample lead has none


def definitions_with_variants(tmp_path: Path) -> Path:
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    hello = root / "templates" / "email" / "hello"
    (hello / "subject.de.txt").write_text("Hallo {{ lead.first_name }}")
    (hello / "body.de.html").write_text(
        f"<p>Ihre Testphase endet am {{{{ {TRIAL_ENDS} | date('long') }}}}; "
        "{{ lead.attributes.get('seats', 1) | number }} Plätze.</p>"
        '<p>{{ sender.postal_address }} <a href="{{ unsubscribe_url }}">Abmelden</a></p>'
    )
    (hello / "body.de.txt").write_text(
        f"Ihre Testphase endet am {{{{ {TRIAL_ENDS} | date }}}}.\n"
        "{{ sender.postal_address }}\nAbmelden: {{ unsubscribe_url }}"
    )
    (root / "templates" / "sms" / "ping.de.txt").write_text(
        "Hallo {{ lead.first_name }}: {{ 1234.5 | currency('EUR') }}. STOP zum Abmelden"
    )
    return root


def enrolled_send(activities, lead_id: str, channel: str, template: str, digest: str):
    activities.start_enrollment(StartEnrollment(
        lead_id=lead_id, enrollment_id=f"{lead_id}:month:v1", workflow_id=f"lead-{lead_id}",
        sequence_id="month", sequence_version=1))  # fmt: skip
    return SendRequest(lead_id=lead_id, enrollment_id=f"{lead_id}:month:v1", sequence_id="month",
                       step_id=f"{channel}-step", visit=1, channel=channel, template=template,
                       templates=digest)  # fmt: skip


def test_a_send_renders_the_variant_enrolled_with_and_babels_formats(settings, database, tmp_path):
    root = definitions_with_variants(tmp_path)
    settings = settings.model_copy(update={"definitions_dir": root})
    activities = build_activities(settings, database).lead
    digest = TemplateVersions(root / "templates", database.sessions).current()
    # Edited after enrolling: the lead still gets the variant as it was.
    (root / "templates" / "email" / "hello" / "subject.de.txt").write_text("Edited")
    with database.sessions.begin() as session:
        lead = Lead(email="lena@example.at", first_name="Lena", locale="de-AT",
                    phone="+436641234567", timezone="Europe/Vienna",
                    attributes={"trial_ends": "2026-03-14", "seats": 1200})  # fmt: skip
        session.add(lead)
        session.flush()
        lead_id = lead.id

    outcome = activities.send_message(enrolled_send(activities, lead_id, "email", "hello", digest))
    assert outcome.status == "sent"
    with database.sessions() as session:
        message = session.get(Message, outcome.message_id)
        assert message.subject == "Hallo Lena"
        assert message.body.startswith("Ihre Testphase endet am 14.03.2026.")
    (eml,) = settings.outbox_dir.glob("*.eml")
    html = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    html = html.get_body(("html",)).get_content()
    assert "endet am 14. März 2026; 1.200 Plätze." in html

    sms = enrolled_send(activities, lead_id, "sms", "ping", digest)
    sms = sms.model_copy(update={"enrollment_id": f"{lead_id}:month:v1", "step_id": "nudge"})
    outcome = activities.send_message(sms)
    with database.sessions() as session:
        body = session.get(Message, outcome.message_id).body
    assert body == "Hallo Lena: € 1.234,50. STOP zum Abmelden"  # de-AT: the sign first


# --- validate and preview -----------------------------------------------------------------------


def test_validate_reports_incomplete_variants_and_a_missing_unsubscribe_link(tmp_path):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    hello = root / "templates" / "email" / "hello"
    (hello / "body.de.html").write_text("<p>Hallo</p><p>{{ sender.postal_address }}</p>")
    problems = {(Path(p.file).name, p.field, p.severity): p.message for p in validate(root)}
    assert problems[("body.de.html", "unsubscribe_url", "error")].startswith(
        "the HTML part has no unsubscribe link: add {{ unsubscribe_url }}"
    )
    incomplete = problems[("body.de.html", "subject.de.txt", "warning")]
    assert incomplete.startswith(
        "the de variant of email 'hello' has no subject.de.txt: "
        "a de lead gets subject.txt, in the default language"
    )
    assert ("body.de.html", "body.de.txt", "warning") in problems
    # The month sequence's other send steps have no German at all.
    gaps = [p for p in validate(root) if p.field.endswith(".template")]
    assert gaps and all(p.severity == "warning" and "has no de variant" in p.message
                        for p in gaps)  # fmt: skip


def test_validate_renders_each_variant_in_strict_mode(tmp_path):
    root = definitions_with_variants(tmp_path)
    assert not [p for p in validate(root) if p.severity == "error"]
    (root / "templates" / "sms" / "ping.de.txt").write_text("Hallo {{ lead.nickname }}")
    (error,) = [p for p in validate(root) if p.severity == "error"]
    assert Path(error.file).name == "ping.de.txt" and "nickname" in error.message


def test_preview_takes_a_locale(tmp_path):
    from services.definitions import load_definitions

    definitions = load_definitions(definitions_with_variants(tmp_path))
    lead = {"email": "a@example.com", "first_name": "Lena",
            "attributes": {"trial_ends": "2026-03-14", "seats": 3}}  # fmt: skip
    shown = preview(definitions, "month", "welcome", lead, locale="de_at")
    assert (shown.locale, shown.subject) == ("de-AT", "Hallo Lena")
    assert preview(definitions, "month", "welcome", lead).subject == "Hello Lena"
    with pytest.raises(PreviewError, match="unknown locale 'zz'"):
        preview(definitions, "month", "welcome", lead, locale="zz")
