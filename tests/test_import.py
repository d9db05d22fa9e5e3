"""`nurture import FILE.csv`: column mapping, validation with line numbers, upsert by
email in batches (SQLite and PostgreSQL), segments, enrollment on the dev server, and
the command's report and exit codes."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from devstack.temporal_server import free_port
from models.db import Lead, Response
from models.workflow_io import lead_workflow_id
from services.definitions import load_definitions
from services.importer import (
    LeadImporter,
    UsageError,
    open_csv,
    parse_maps,
    plan_columns,
    write_rejects,
)
from services.intake import Intake
from tests.conftest import FIXTURE_DEFINITIONS, FIXTURES
from tests.harness import Harness, running_harness

IMPORTS = FIXTURES / "imports"
REPO = Path(__file__).resolve().parent.parent

# invalid.csv, line by line: 2-3 a valid row with a two-line note, 6 blank, 10 valid.
REJECTED = [
    (4, "email", "'not-an-email' is not a valid email address: An email address must have "
                 "an @-sign."),
    (5, "phone", "phone '555-0100' is not a valid number in US"),
    (7, "timezone", "unknown time zone 'Mars/Olympus_Mons' (use an IANA name such as "
                    "Europe/Paris)"),
    (8, "email", "no email address"),
    (9, "company_size", "'about 50' is not a whole number"),
]  # fmt: skip


def importer(path: Path, intake: Intake, maps=(), ignore=(), **options) -> LeadImporter:
    source = open_csv(path)
    plan = plan_columns(source.headers, parse_maps(list(maps)), list(ignore))
    return LeadImporter(source, plan, intake, **options)


def offline(definitions, database=None) -> Intake:
    """An Intake that can write leads but not enroll them."""
    return Intake(definitions, database.sessions if database else None, None, "unused")


def leads(database) -> dict[str, Lead]:
    with database.sessions() as session:
        return {lead.email: lead for lead in session.scalars(select(Lead))}


# --- columns --------------------------------------------------------------------------------


def test_headers_map_by_name_ignoring_case_spaces_and_synonyms():
    headers = ["E-mail", "Given Name", "surname", "Mobile", "Job Title", "Company name",
               "Employees", "TZ", "Country Code", "lead_source", "Lead Score", ""]  # fmt: skip
    plan = plan_columns(headers)
    assert plan.describe() == {
        "E-mail": "email", "Given Name": "first_name", "surname": "last_name",
        "Mobile": "phone", "Job Title": "title", "Company name": "company",
        "Employees": "company_size", "TZ": "timezone", "Country Code": "country",
        "lead_source": "source", "Lead Score": "attributes.lead_score", "(column 12)": None,
    }  # fmt: skip
    assert plan.notes() == ["'Lead Score' is no lead field: kept as attributes.lead_score",
                            "'column 12' ignored (no header)"]  # fmt: skip
    for header, field in [("Email Address", "email"), ("first name", "first_name"),
                          ("FirstName", "first_name"), ("organization", "company"),
                          ("company size", "company_size"), ("time zone", "timezone"),
                          ("phone number", "phone"), ("Time_Zone", "timezone")]:  # fmt: skip
        assert (
            plan_columns(["email" if field != "email" else "x", header]).describe()[header] == field
        ), header


def test_map_and_ignore_override_the_names():
    headers = ["Email", "Work Email", "Notes", "Cost centre", "Region"]
    plan = plan_columns(
        headers,
        parse_maps(["Work Email=email", "cost centre=attributes.budget", "Region=country"]),
        ["Notes"],
    )
    assert plan.describe() == {
        "Email": "attributes.email", "Work Email": "email", "Notes": None,
        "Cost centre": "attributes.budget", "Region": "country",
    }  # fmt: skip
    assert "'Email' is no lead field: kept as attributes.email (--map gave email to " \
           "'Work Email')" in plan.notes()  # fmt: skip
    assert "'Notes' ignored (--ignore)" in plan.notes()
    data, problems = plan.data(["old@example.com", "new@example.com", "n", "cc-7", "FR"])
    assert problems == []
    assert data == {"email": "new@example.com", "country": "FR",
                    "attributes": {"email": "old@example.com", "budget": "cc-7"}}  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "maps", "ignore", "message"),
    [
        (["Name", "Company"], [], [], "no email column (columns: 'Name', 'Company'); name it "
                                      "with --map HEADER=email"),
        (["Email", "E-mail"], [], [], "columns 'Email' and 'E-mail' both look like email"),
        (["Email"], ["Mail=email"], [], "--map 'Mail': the file has no such column"),
        (["Email"], [], ["Notes"], "--ignore 'Notes': the file has no such column"),
        (["Email", "X"], ["X=score"], [], "--map 'X=score': no lead field 'score'"),
        (["Email", "X"], ["X"], [], "--map 'X': give HEADER=FIELD"),
        (["Email", "X"], ["X=email"], [], None),  # X is the email, Email an attribute
        (["Email", "X", "Y"], ["X=email", "Y=email"], [], "--map gives email two columns"),
        (["Email", "X"], ["X=title"], ["X"], "column 'X' is both mapped and ignored"),
    ],
)  # fmt: skip
def test_mapping_mistakes_are_usage_errors(headers, maps, ignore, message):
    if message is None:
        plan_columns(headers, parse_maps(maps), ignore)
        return
    with pytest.raises(UsageError) as raised:
        plan_columns(headers, parse_maps(maps), ignore)
    assert message in str(raised.value)


def test_delimiters_bom_and_line_numbers(tmp_path):
    export = open_csv(IMPORTS / "crm_export.csv")
    assert (export.delimiter, export.bom, export.headers[0]) == (";", True, "E-mail")
    tabbed = tmp_path / "tabbed.csv"
    tabbed.write_text("Email\tFirst name\n\na@example.com\tA\n\t\nb@example.com\tB\n")
    source = open_csv(tabbed)
    assert source.delimiter == "\t"
    assert list(source.records()) == [(3, ["a@example.com", "A"]), (5, ["b@example.com", "B"])]
    assert [line for line, _ in open_csv(IMPORTS / "invalid.csv").records()] == [
        2, 4, 5, 7, 8, 9, 10]  # fmt: skip
    (tmp_path / "latin1.csv").write_bytes("email,company\nz@example.com,Müller\n".encode("cp1252"))
    with pytest.raises(UsageError, match="line 2 is not utf-8-sig text"):
        open_csv(tmp_path / "latin1.csv")
    assert open_csv(tmp_path / "latin1.csv", encoding="cp1252").text.endswith("Müller\n")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UsageError, match="is empty"):
        open_csv(tmp_path / "empty.csv")


# --- validation and the rejects file --------------------------------------------------------


async def test_every_rejected_row_is_reported_with_its_line_field_and_reason(
    database, fixture_definitions, tmp_path
):
    report = await importer(IMPORTS / "invalid.csv", offline(fixture_definitions, database),
                            enroll=False).run()  # fmt: skip
    assert (report.read, report.created, report.updated) == (7, 2, 0)
    assert [(r.line, r.field, r.reason) for r in report.rejected] == REJECTED
    assert set(leads(database)) == {"good@example.com", "gina@example.com"}
    good = leads(database)["good@example.com"]
    assert (good.phone, good.company_size, good.attributes) == (
        "+14155550123", 120, {"notes": "a note\nover two lines"})  # fmt: skip

    path = tmp_path / "rejects.csv"
    write_rejects(path, open_csv(IMPORTS / "invalid.csv"), report.rejected)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["email", "first_name", "phone", "country", "timezone",
                             "company_size", "notes", "line", "field", "reason"]  # fmt: skip
    assert [(int(r["line"]), r["field"], r["reason"]) for r in rows] == REJECTED
    assert rows[1]["phone"] == "555-0100" and rows[1]["first_name"] == "Dana"
    # The fixed rejects file imports as it is: its line, field and reason are left out.
    assert plan_columns(open_csv(path).headers).describe()["reason"] is None


def test_several_problems_in_a_row_are_all_named(tmp_path, fixture_definitions):
    path = tmp_path / "two.csv"
    path.write_text("email,timezone,company_size,country\nx@example.com,Nowhere,-3,USA,extra\n")
    report = importer(path, offline(fixture_definitions), dry_run=True).run_sync()
    (row,) = report.rejected
    assert row.line == 2
    assert row.field == "country, company_size, timezone"
    assert row.reason == (
        "5 values but the header has 4 columns (extra: 'extra'); country: 'USA' is longer "
        "than 2 characters (give a two-letter ISO code such as US or DE); company_size: '-3' "
        "is below 0; timezone: unknown time zone 'Nowhere' (use an IANA name such as "
        "Europe/Paris)"
    )


def test_an_unknown_sequence_in_a_row_is_rejected(tmp_path, fixture_definitions):
    path = tmp_path / "seq.csv"
    path.write_text("email,sequence\na@example.com,quick\nb@example.com,nope\n")
    report = importer(path, offline(fixture_definitions), dry_run=True).run_sync()
    assert [(r.line, r.field) for r in report.rejected] == [(3, "sequence")]
    assert report.rejected[0].reason.startswith("no sequence 'nope' (known: ")


def test_a_record_the_csv_module_cannot_read_stops_the_import_there(tmp_path, fixture_definitions):
    path = tmp_path / "huge.csv"
    path.write_text("email,notes\na@example.com,ok\nb@example.com," + "x" * 200_000 + "\n"
                    "c@example.com,never read\n")  # fmt: skip
    report = importer(path, offline(fixture_definitions), dry_run=True).run_sync()
    assert (report.read, report.valid) == (1, 1)
    assert report.stopped == "line 3: field larger than field limit (131072)"


# --- upsert ---------------------------------------------------------------------------------


async def test_a_second_import_updates_and_does_not_duplicate(database, tmp_path):
    definitions = load_definitions(REPO)
    intake = offline(definitions, database)
    first = await importer(IMPORTS / "crm_export.csv", intake, enroll=False).run()
    assert (first.read, first.created, first.updated, first.rejected) == (3, 3, 0, [])
    ada = leads(database)["ada.lovelace@example.com"]  # stored in lower case
    assert (ada.first_name, ada.phone, ada.country, ada.company_size, ada.industry) == (
        "Ada", "+447911123456", "GB", 1200, "software")  # fmt: skip
    assert (ada.segment, ada.attributes) == ("enterprise_content", {"budget": "50k+"})

    second = await importer(IMPORTS / "update.csv", intake, enroll=False).run()
    assert (second.read, second.created, second.updated, second.rejected) == (2, 1, 1, [])
    stored = leads(database)
    assert len(stored) == 4
    ada = stored["ada.lovelace@example.com"]
    assert (ada.id, ada.title, ada.phone) == (stored[ada.email].id, "Chief Scientist",
                                              "+447911123789")  # fmt: skip
    assert (ada.company, ada.first_name) == ("Analytical Engines", "Ada")  # blank: kept
    assert ada.attributes == {"budget": "10-50k"}
    assert ada.segment == "enterprise_content"  # a lead keeps its first segment
    assert stored["hugo@example.com"].segment == "general"

    # The same file again: every lead updated, none created.
    again = await importer(IMPORTS / "update.csv", intake, enroll=False).run()
    assert (again.created, again.updated) == (0, 2)
    assert len(leads(database)) == 4


@pytest.mark.parametrize("batch_size", [2, 500])
async def test_later_rows_with_the_same_email_update_earlier_ones(
    database, fixture_definitions, tmp_path, batch_size
):
    path = tmp_path / "dupes.csv"
    path.write_text(
        "email,first_name,title,Team\n"
        "kim@example.com,Kim,Analyst,red\n"
        "lee@example.com,Lee,,\n"
        "KIM@example.com,,Lead Analyst,\n"
        "kim@example.com,Kimberly,,blue\n"
    )
    report = await importer(path, offline(fixture_definitions, database), enroll=False,
                            batch_size=batch_size).run()  # fmt: skip
    assert (report.read, report.created, report.updated) == (4, 2, 0)
    assert [d.to_dict() for d in report.duplicates] == [
        {"line": 4, "earlier_line": 2, "email": "kim@example.com",
         "note": "updated earlier row on line 2"},
        {"line": 5, "earlier_line": 2, "email": "kim@example.com",
         "note": "updated earlier row on line 2"},
    ]  # fmt: skip
    kim = leads(database)["kim@example.com"]
    assert (kim.first_name, kim.title, kim.attributes) == ("Kimberly", "Lead Analyst",
                                                           {"team": "blue"})  # fmt: skip
    assert len(leads(database)) == 2


async def test_responses_waiting_for_a_lead_are_given_to_it(database, fixture_definitions):
    intake = offline(fixture_definitions, database)
    intake.store_events(
        [_event(email="ada.lovelace@example.com", type="page.view"),
         _event(phone="+14155550142", type="sms.reply", data={"body": "STOP"})]
    )  # fmt: skip
    await importer(IMPORTS / "crm_export.csv", intake, enroll=False).run()
    stored = leads(database)
    with database.sessions() as session:
        owners = dict(session.execute(select(Response.type, Response.lead_id)).all())
    assert owners == {"page.view": stored["ada.lovelace@example.com"].id,
                      "sms.stop": stored["carla@example.com"].id}  # fmt: skip
    assert stored["carla@example.com"].sms_consent is False  # the STOP counts


def _event(**fields):
    from services.intake import EventIn

    return EventIn(**fields)


async def test_a_lead_created_meanwhile_by_another_writer_is_updated(database, fixture_definitions):
    """The API creates one of the file's leads between the batch's lookup and its insert:
    the batch fails on the unique email, is tried again and updates that lead."""
    raced = []

    def api_meanwhile(_conn, _cursor, statement, *_args):
        if raced or not statement.startswith("INSERT INTO leads"):
            return
        raced.append(statement)
        with database.sessions.begin() as session:
            session.add(Lead(email="bruno@example.fr", first_name="From the API"))

    event.listen(database.engine, "before_cursor_execute", api_meanwhile)
    try:
        report = await importer(IMPORTS / "crm_export.csv", offline(fixture_definitions,
                                database), enroll=False).run()  # fmt: skip
    finally:
        event.remove(database.engine, "before_cursor_execute", api_meanwhile)
    assert raced
    assert (report.created, report.updated) == (2, 1)
    stored = leads(database)
    assert len(stored) == 3
    assert stored["bruno@example.fr"].first_name == "Bruno"


# --- segments -------------------------------------------------------------------------------


async def test_rows_land_in_the_segment_their_rule_matches(database, fixture_definitions):
    report = await importer(IMPORTS / "crm_export.csv", offline(fixture_definitions, database),
                            enroll=False).run()  # fmt: skip
    assert dict(report.segments) == {"europe": 1, "everyone": 2}
    stored = leads(database)
    assert stored["bruno@example.fr"].segment == "europe"  # country in ('FR', 'DE')
    assert stored["carla@example.com"].segment == "everyone"
    # The repository's segments: a trial sign-up, a big company's download, the rest.
    dry = await importer(IMPORTS / "crm_export.csv", offline(load_definitions(REPO)),
                         dry_run=True).run()  # fmt: skip
    assert dict(dry.segments) == {"enterprise_content": 1, "general": 1, "saas_trial": 1}


# --- enrollment -----------------------------------------------------------------------------


@pytest.mark.devserver
async def test_imported_leads_are_enrolled_in_their_segments_sequence(
    dev_server_env, sqlite_settings, fixture_definitions
):
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as harness:
        report = await importer(IMPORTS / "crm_export.csv", harness.intake,
                                concurrency=2).run()  # fmt: skip
        stored = leads(harness.database)
        Harness.started.extend(lead_workflow_id(lead.id) for lead in stored.values())
        assert (report.created, report.enrolled, report.enroll_failed) == (3, 3, [])
        assert dict(report.sequences) == {"month": 2, "exit_early": 1}
        for email, sequence in [("bruno@example.fr", "exit_early"),
                                ("carla@example.com", "month"),
                                ("ada.lovelace@example.com", "month")]:  # fmt: skip
            lead_id = stored[email].id
            state = await harness.until(lead_id, lambda s: s.enrollment_id is not None)
            assert state.sequence_id == sequence, email
            assert state.enrollment_id.startswith(f"{lead_id}:{sequence}:")
        ada = stored["ada.lovelace@example.com"].id
        await harness.until(ada, lambda s: "welcome" in s.sent_steps)


def _enrollments_in(history) -> tuple[dict | None, list[str]]:
    """The enrollment in the start input, and the names of the signals received."""
    started = history.events[0].workflow_execution_started_event_attributes
    start_input = json.loads(started.input.payloads[0].data)
    signals = [event.workflow_execution_signaled_event_attributes.signal_name
               for event in history.events
               if event.HasField("workflow_execution_signaled_event_attributes")]  # fmt: skip
    return start_input.get("enroll"), signals


@pytest.mark.devserver
async def test_a_new_lead_starts_enrolled_and_a_running_workflow_is_signalled(
    dev_server_env, sqlite_settings, fixture_definitions, tmp_path
):
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as harness:
        path = tmp_path / "one.csv"
        path.write_text("email,first_name\nnew.lead@example.com,Nia\n")
        report = await importer(path, harness.intake).run()
        lead = leads(harness.database)["new.lead@example.com"]
        Harness.started.append(lead_workflow_id(lead.id))
        assert (report.created, report.enrolled) == (1, 1)
        state = await harness.until(lead.id, lambda s: s.enrollment_id is not None)
        handle = harness.handle(lead.id)
        enrollment, signals = _enrollments_in(await handle.fetch_history())
        assert enrollment["enrollment_id"] == state.enrollment_id and signals == []

        # Imported again (an update) and enrolled as new while it runs: both signal,
        # and the workflow keeps the enrollment it has.
        path.write_text("email,first_name\nnew.lead@example.com,Nina\n")
        report = await importer(path, harness.intake).run()
        assert (report.created, report.updated, report.enrolled) == (0, 1, 1)
        await harness.intake.enroll(lead, new_lead=True)
        for _ in range(100):  # a signal during a workflow task is buffered until it ends
            enrollment, signals = _enrollments_in(await handle.fetch_history())
            if len(signals) >= 2:
                break
            await asyncio.sleep(0.1)
        assert signals == ["enroll", "enroll"]
        assert (await harness.state(lead.id)).enrollment_id == state.enrollment_id


async def test_failed_enrollments_are_reported_and_temporal_down_stops_trying(
    database, fixture_definitions, tmp_path
):
    class Down:  # a client whose every call fails, as when Temporal is unreachable
        calls = 0

        async def start_workflow(self, *args, **kwargs):
            Down.calls += 1
            raise RuntimeError("Temporal is down")

    path = tmp_path / "many.csv"
    path.write_text("email\n" + "".join(f"lead{n}@example.com\n" for n in range(30)))
    intake = Intake(fixture_definitions, database.sessions, Down(), "unused")
    report = await importer(path, intake, concurrency=1).run()
    assert (report.created, report.enrolled, len(report.enroll_failed)) == (30, 0, 30)
    assert Down.calls == 20  # then the rest are not tried
    first, last = report.enroll_failed[0], report.enroll_failed[-1]
    assert (first.line, first.email, first.error) == (2, "lead0@example.com",
                                                      "RuntimeError: Temporal is down")  # fmt: skip
    assert last.line == 31 and last.error == "not tried: the 20 enrollments before it failed"
    assert len(leads(database)) == 30  # written all the same: a second import enrolls them


@pytest.mark.devserver
async def test_no_enroll_starts_no_workflow(dev_server_env, database, fixture_definitions):
    intake = Intake(fixture_definitions, database.sessions, dev_server_env.client, "unused")
    report = await importer(IMPORTS / "crm_export.csv", intake, enroll=False).run()
    assert (report.created, report.enrolled, report.enroll) == (3, 0, False)
    for lead in leads(database).values():
        handle = dev_server_env.client.get_workflow_handle(lead_workflow_id(lead.id))
        with pytest.raises(RPCError) as raised:
            await handle.describe()
        assert raised.value.status == RPCStatusCode.NOT_FOUND


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def command_env(tmp_path, monkeypatch, sqlite_settings):
    """The command's environment: SQLite in tmp_path, the fixture definitions, an address
    with no Temporal (tests that enroll set their own)."""
    values = {
        "DATABASE_URL": sqlite_settings.effective_database_url,
        "NURTURE_DEFINITIONS": str(FIXTURE_DEFINITIONS),
        "NURTURE_STATE_DIR": str(sqlite_settings.state_dir),
        "NURTURE_TASK_QUEUE": sqlite_settings.task_queue,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def invoke(*args: str):
    from cli.app import app

    return CliRunner().invoke(app, ["import", *args])


def count_leads(url: str) -> int:
    from models.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(Lead))
    finally:
        engine.dispose()


@pytest.mark.devserver
async def test_the_command_imports_enrolls_and_reports_as_json(
    dev_server_env, command_env, monkeypatch, tmp_path
):
    target = dev_server_env.client.service_client.config.target_host
    monkeypatch.setenv("TEMPORAL_ADDRESS", target)
    data = tmp_path / "invalid.csv"
    shutil.copy(IMPORTS / "invalid.csv", data)
    result = await asyncio.to_thread(invoke, str(data), "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("read", "imported", "created", "updated", "rejected",
                                   "enrolled", "enroll_failed", "dry_run")} == {
        "read": 7, "imported": 2, "created": 2, "updated": 0, "rejected": 5, "enrolled": 2,
        "enroll_failed": 0, "dry_run": False,
    }  # fmt: skip
    assert report["segments"] == {"everyone": 2} and report["sequences"] == {"month": 2}
    assert [(r["line"], r["field"], r["reason"]) for r in report["rejects"]] == REJECTED
    assert report["rejects_file"] == str(tmp_path / "invalid.rejects.csv")
    assert (tmp_path / "invalid.rejects.csv").exists()
    assert report["seconds"] > 0 and report["rate"] > 0
    assert report["columns"]["notes"] == "attributes.notes"

    from models.db import make_engine

    engine = make_engine(command_env["DATABASE_URL"])
    with engine.connect() as connection:
        ids = list(connection.scalars(select(Lead.id)))
    engine.dispose()
    for lead_id in ids:  # started; no worker serves this queue: end them
        handle = dev_server_env.client.get_workflow_handle(lead_workflow_id(lead_id))
        description = await handle.describe()
        assert description.task_queue == command_env["NURTURE_TASK_QUEUE"]
        await handle.terminate("test over")

    # Read as a person reads it: the same leads again, updated.
    again = await asyncio.to_thread(invoke, str(data))
    assert again.exit_code == 0, again.output
    out = again.stdout
    assert re.search(r"\n  updated +2  leads already in the database\n", out), out
    assert "line 5 phone: phone '555-0100' is not a valid number in US" in out
    assert "'notes' is no lead field: kept as attributes.notes" in out
    for lead_id in ids:
        await dev_server_env.client.get_workflow_handle(lead_workflow_id(lead_id)).terminate()


def test_a_dry_run_writes_nothing_but_the_rejects_file(command_env, tmp_path):
    data = tmp_path / "leads.csv"
    shutil.copy(IMPORTS / "invalid.csv", data)
    result = invoke(str(data), "--dry-run", "--rejects", str(tmp_path / "out.csv"))
    assert result.exit_code == 0, result.output
    assert "dry run of" in result.stdout and "nothing written" in result.stdout
    assert re.search(r"\n  valid leads +2  would be created or updated\n", result.stdout)
    assert not Path(command_env["DATABASE_URL"].removeprefix("sqlite:///")).exists()
    assert (tmp_path / "out.csv").exists() and not (tmp_path / "leads.rejects.csv").exists()


def test_strict_refuses_the_whole_file(command_env, tmp_path):
    data = tmp_path / "leads.csv"
    shutil.copy(IMPORTS / "invalid.csv", data)
    result = invoke(str(data), "--strict", "--no-enroll", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["refused"], report["ok"], report["rejected"]) == (True, False, 5)
    assert not Path(command_env["DATABASE_URL"].removeprefix("sqlite:///")).exists()
    assert (tmp_path / "leads.rejects.csv").exists()
    # A dry run with --strict says so too.
    assert invoke(str(data), "--strict", "--dry-run").exit_code == 1
    # A clean file passes --strict.
    clean = invoke(str(IMPORTS / "crm_export.csv"), "--strict", "--no-enroll")
    assert clean.exit_code == 0, clean.output
    assert count_leads(command_env["DATABASE_URL"]) == 3
    assert not (IMPORTS / "crm_export.rejects.csv").exists()


def test_exit_codes(command_env, tmp_path):
    # Temporal unreachable: nothing imported, exit 1.
    result = invoke(str(IMPORTS / "crm_export.csv"))
    assert result.exit_code == 1
    assert "cannot reach Temporal" in result.stderr and "nothing was imported" in result.stderr
    assert count_leads(command_env["DATABASE_URL"]) == 0
    # Every row rejected: exit 1.
    bad = tmp_path / "bad.csv"
    bad.write_text("email\nnope\n")
    assert invoke(str(bad), "--no-enroll").exit_code == 1
    # Bad usage: exit 2, said on stderr.
    for args, message in [
        ([str(tmp_path / "missing.csv")], "Invalid value for 'FILE.csv'"),
        ([str(IMPORTS / "crm_export.csv"), "--map", "Nope=email"], "no such column"),
        ([str(IMPORTS / "crm_export.csv"), "--delimiter", "|"], "--delimiter must be"),
        ([str(IMPORTS / "crm_export.csv"), "--sequence", "nope"], "no sequence 'nope'"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, result.stderr
    no_email = tmp_path / "names.csv"
    no_email.write_text("name\nAda\n")
    result = invoke(str(no_email))
    assert result.exit_code == 2 and "no email column" in result.stderr


def test_help_has_examples_and_exit_codes():
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("Examples:", "nurture import leads.csv --dry-run", "Exit codes:", "--no-enroll",
                 "--map", "--ignore", "--rejects", "--json", "--strict"):  # fmt: skip
        assert text in result.stdout, text
