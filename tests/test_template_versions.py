"""A lead is sent the templates it was enrolled with: an edit reaches new enrollments
only (template versions are stored in the database, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from channels.render import message_context, render_email, render_sms
from channels.template_sets import TemplateVersions, UnknownTemplateSet, read_templates
from infra.settings import Settings
from models import schema as migrate
from models.db import Lead, Message, TemplateSet, make_engine, session_factory
from models.jinja import SAMPLE_LEAD, template_environment
from models.workflow_io import SendRequest, StartEnrollment
from services.definitions import load_definitions
from services.runtime import build_activities, open_database, sync_sales_reps
from services.validate import SAMPLE_SENDER
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import running_harness

PING = "sms/ping.txt"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def definitions_dir(tmp_path):
    """The fixture definitions, in a copy the test may edit as a marketer would."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    return root


def edit(root, path: str, text: str) -> None:
    (root / "templates" / path).write_text(text)


@pytest.fixture
def copy_db(settings, definitions_dir):
    settings = Settings(**(settings.model_dump(by_alias=True) | {
        "NURTURE_DEFINITIONS": definitions_dir}))  # fmt: skip
    db = open_database(settings)
    sync_sales_reps(db, load_definitions(definitions_dir))
    yield settings, db
    db.engine.dispose()


def stored_versions(db) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(TemplateSet))


def sms_to_new_lead(settings, db, templates: str | None, email: str) -> Message:
    with db.sessions.begin() as session:
        lead = Lead(email=email, first_name="Lin", phone="+14155550100")
        session.add(lead)
        session.flush()
        lead_id = lead.id
    activities = build_activities(settings, db).lead
    enrollment_id = f"{lead_id}:quick:v1"
    activities.start_enrollment(
        StartEnrollment(lead_id=lead_id, enrollment_id=enrollment_id, workflow_id="w",
                        sequence_id="quick", sequence_version=1)
    )  # fmt: skip
    outcome = activities.send_message(
        SendRequest(lead_id=lead_id, enrollment_id=enrollment_id, sequence_id="quick",
                    step_id="ping", visit=1, channel="sms", template="ping",
                    templates=templates)
    )  # fmt: skip
    assert outcome.status == "sent", outcome
    with db.sessions() as session:
        return session.get(Message, outcome.message_id)


def test_a_send_renders_its_enrollments_version_not_todays_files(copy_db, definitions_dir):
    settings, db = copy_db
    versions = TemplateVersions(definitions_dir / "templates", db.sessions)
    enrolled_with = versions.current()
    edit(definitions_dir, PING, "Edited: hi {{ lead.first_name }}. STOP to opt out")

    kept = sms_to_new_lead(settings, db, enrolled_with, "kept@example.com")
    assert kept.body == "Hi Lin, reply YES for a call. STOP to opt out"
    # An enrollment made before versions were kept renders the files as they are.
    legacy = sms_to_new_lead(settings, db, None, "legacy@example.com")
    assert legacy.body == "Edited: hi Lin. STOP to opt out"
    # Enrolled after the edit: the files are looked at again within a second, and the
    # new version is stored beside the old one.
    assert versions.current() == enrolled_with
    time.sleep(TemplateVersions.RECHECK_SECONDS + 0.05)
    edited = versions.current()
    assert edited != enrolled_with and stored_versions(db) == 2
    fresh = sms_to_new_lead(settings, db, edited, "fresh@example.com")
    assert fresh.body == "Edited: hi Lin. STOP to opt out"


def test_each_version_is_stored_once_whoever_enrolls(copy_db, definitions_dir, tmp_path):
    _settings, db = copy_db
    digest = TemplateVersions(definitions_dir / "templates", db.sessions).current()
    assert TemplateVersions(definitions_dir / "templates", db.sessions).current() == digest
    # The same templates on another machine (another directory): the same version.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(definitions_dir / "templates", elsewhere)
    assert TemplateVersions(elsewhere, db.sessions).current() == digest
    assert stored_versions(db) == 1
    with db.sessions() as session:
        files = session.get(TemplateSet, digest).files
    # Message templates only: the reps' notices are not part of a sequence.
    assert PING in files and "email/hello/subject.txt" in files
    assert not any(path.startswith("sales/") for path in files)
    assert read_templates(definitions_dir / "templates").files == files


def test_an_unknown_version_is_a_clear_error_and_nothing_is_sent(copy_db):
    settings, db = copy_db
    with pytest.raises(UnknownTemplateSet, match="template version 000000000000 is not in"):
        sms_to_new_lead(settings, db, "0" * 64, "lost@example.com")
    with db.sessions() as session:
        assert session.scalar(select(func.count()).where(Message.status == "sent")) == 0


async def test_an_edit_reaches_new_enrollments_not_leads_in_flight(
    time_skipping_env, sqlite_settings, definitions_dir
):
    settings = Settings(**(sqlite_settings.model_dump(by_alias=True) | {
        "NURTURE_DEFINITIONS": definitions_dir}))  # fmt: skip
    definitions = load_definitions(definitions_dir)
    async with running_harness(time_skipping_env, settings, definitions) as harness:
        # quick: welcome email, a 2 s wait, the ping SMS, an hour, the follow-up email.
        in_flight = await harness.enroll("quick", email="early@example.com",
                                         first_name="Early", phone="+14155550100")  # fmt: skip
        await harness.until(in_flight, lambda s: s.step_id == "pause")
        edit(definitions_dir, PING, "New copy for {{ lead.first_name }}. STOP to opt out")
        edit(definitions_dir, "email/followup/subject.txt", "Edited follow-up")
        await asyncio.sleep(TemplateVersions.RECHECK_SECONDS + 0.05)  # picked up within 1 s
        newcomer = await harness.enroll("quick", email="late@example.com",
                                        first_name="Late", phone="+14155550101")  # fmt: skip
        await harness.env.sleep(timedelta(hours=2))
        for lead_id in (in_flight, newcomer):
            await harness.until(lead_id, lambda s: s.enrollment_status == "completed")

        def sent(lead_id):
            return {m.step_id: m for m in harness.rows(Message, lead_id) if m.status == "sent"}

        early, late = sent(in_flight), sent(newcomer)
        assert early["ping"].body == "Hi Early, reply YES for a call. STOP to opt out"
        assert early["later"].subject != "Edited follow-up"
        assert late["ping"].body == "New copy for Late. STOP to opt out"
        assert late["later"].subject == "Edited follow-up"


def test_every_shipped_template_renders_the_same_from_its_stored_version(tmp_path):
    """Layouts and includes (`{% extends "email/_layout.html" %}`) resolve inside the
    stored version as they do from the files."""
    engine = make_engine(f"sqlite:///{tmp_path / 'nurture.db'}")
    migrate.upgrade(engine)
    definitions = load_definitions(REPO)
    versions = TemplateVersions(definitions.templates_dir, session_factory(engine))
    stored = versions.environment(versions.current())
    files = template_environment(str(definitions.templates_dir))
    context = message_context(SAMPLE_LEAD, SAMPLE_SENDER, "https://example.com/u/x")
    rendered = 0
    for sequence in definitions.sequences.values():
        for _step, channel, template in sequence.templates():
            if channel == "email":
                assert render_email(stored, template, context) == render_email(
                    files, template, context
                )
            else:
                assert render_sms(stored, template, context) == render_sms(files, template, context)
            rendered += 1
    assert rendered >= 10
    engine.dispose()
