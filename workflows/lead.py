"""The lead workflow: one long-lived workflow per lead.

Two things happen side by side:
- the *sequence* coroutine walks the enrolled sequence (sends, waits, branches);
- the *main loop* takes responses as they arrive, in order, and rescores the
  lead at once, even in the middle of a multi-day wait. While the lead's
  engagement points are still decaying it also rescores on a durable timer
  (daily by default); once they have faded that timer stops, so a quiet lead's
  history does not grow. `nurture rescore` can ask for a rescore too (signal).

Scoring runs in an activity (`score_lead`, a local one since the `score-locally`
patch) over the stored responses and the worker's current model, so a change to the
model or the engine changes what the activity returns, never the workflow's replay.

Crossing SQL stops the sequence and hands the lead off exactly once per
qualification cycle. The workflow stays open after a sequence ends, so later
responses still score. It decides; activities do (no I/O here).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.lead import LeadActivities
    from activities.reply_notices import ReplyNoticeActivities
    from activities.sales import SalesActivities
    from models.definitions import (
        HOLDOUT_ARM,
        NURTURED_ARM,
        BranchStep,
        EmailStep,
        Sequence,
        SmsStep,
        SplitStep,
        WaitForStep,
        WaitStep,
        holdout_experiment,
    )
    from models.jinja import ConditionError, evaluate_condition
    from models.workflow_io import (
        CONFIRMATION_WAIT,
        OUTCOME_TYPES,
        PAUSED_REASON,
        REJECT_REASONS,
        AnswerResult,
        ArmAssigned,
        ArmChoice,
        ArmRequest,
        Assignment,
        AssignRequest,
        DeferredSend,
        EnrollRequest,
        FinishEnrollment,
        HandoffAnswer,
        HandoffRequest,
        HandoffState,
        LeadInput,
        LeadState,
        LeadWorkflowState,
        MigrateEnrollment,
        MigrateRequest,
        MigrateResult,
        NotifyRequest,
        OutcomeApplied,
        OutcomeRequest,
        ReassignRequest,
        ReassignResult,
        RecycleRequest,
        ReplyForward,
        RescoreRequest,
        ResponseEvent,
        RunningEnrollment,
        ScoreRequest,
        ScoreResult,
        ScoreUpdate,
        SendRequest,
        SequencePause,
        SlaLapse,
        SlaOutcome,
        StartEnrollment,
        send_queue,
    )
    from scoring.legacy import LegacyScoringModel, legacy_apply_response

# Workflows started before this patch score in-workflow with the model in their input.
SCORE_CARD_PATCH = "score-card"

# Workflows that handed off before this patch only assigned a rep and emailed them.
SALES_HANDOFF_PATCH = "sales-handoff"

# Workflows started before this patch score each response on its own and never continue
# as new; after it a burst of responses is scored once, and a long life continues as new.
LONG_LIFE_PATCH = "long-life"
# Before this patch a `wait_for` window opened when the send's result came back, so a
# response that arrived while the send was in flight (a worker restarted, a backlog, a
# mail scanner clicking at once) was cleared and the wait timed out. After it the window
# opens when the send is dispatched.
WAIT_WINDOW_PATCH = "wait-window-at-dispatch"
# Before this patch every enroll signal waited in the state until the running sequence
# ended; after it a repeat of a waiting enrollment replaces it.
ENROLL_ONCE_PATCH = "enroll-once"
# Sends go to their channel's own task queue, rate-limited to the provider's rate across
# every worker; before, they shared the workflow's queue.
SEND_QUEUES_PATCH = "send-queues"
# Scoring runs as a local activity, inside the workflow task that took the response: half
# the history events and one workflow task per response instead of two, and no trip
# through the task queue. Before this patch it was a regular activity.
SCORE_LOCALLY_PATCH = "score-locally"
# The enrollment's row is started and finished by local activities, inside the workflow
# task that reached them: a woken lead's last send and the end of its sequence take one
# workflow task and one activity task, not two of each. Before this patch they were
# regular activities.
ENROLLMENT_LOCALLY_PATCH = "enrollment-rows-locally"
# The CRM's news moves the stage in a local activity, beside the scoring of the same task:
# one workflow task a news, not a second one after an activity task (half Temporal's work).
OUTCOME_LOCALLY_PATCH = "apply-outcome-locally"
# A manager moves a pending handoff to another rep (the `reassign` update). No history
# before it has one, and the SLA loop's wake-up on it is idle without one, so old
# histories replay as they were; the marker tells the histories that took one, for a
# later change of this path to branch on.
MANUAL_REASSIGN_PATCH = "manual-reassign"
# Experiments: a `split` step puts the lead in an arm, and a segment's holdout keeps some
# leads out of any nurture. No history before it has either (a split is a new step type, a
# holdout a new enrollment field), so old histories never reach it; the marker tells the
# histories that did, for a later change of this path to branch on.
EXPERIMENTS_PATCH = "experiments"
# A person's reply ends the running sequence at once when the sequence says so (`on_reply:
# exit`, the default). Before this patch a reply was scored and the sequence went on.
EXIT_ON_REPLY_PATCH = "exit-on-reply"
# A sequence's `goals:` are checked after every scoring (and once as it starts): one met
# ends the sequence at once. Only a sequence with goals reaches the marker, and no history
# before it had one, so old histories replay as they were.
SEQUENCE_GOALS_PATCH = "sequence-goals"
# A paused sequence's send (`nurture sequence pause`) waits for the resume signal as well as
# its recheck timer. Only a send the activity held back for a pause reaches the marker, and
# no history before it had one, so old histories replay as they were.
SEQUENCE_PAUSE_PATCH = "sequence-pause"
# A reply holds the sequence's sends for its `reply_pause` (`on_reply: pause`). No sequence
# before it could say so (validation refused it), so old histories never reach it.
REPLY_PAUSE_PATCH = "reply-pause"
REPLY_HOLD_REASON = "replied: sends paused"
# An out-of-office naming a return date holds the sends until then (`on_out_of_office:
# defer`, the default). Only an automatic reply carrying a `return_date` reaches it, and no
# response before it carried one, so old histories replay as they were.
OUT_OF_OFFICE_PATCH = "out-of-office-return"
# A person's reply is forwarded to the lead's owner (`notify_owner: true`), in an activity
# of its own. Only a sequence that says so reaches the marker, and no history before it
# could (validation refused the field), so old histories replay as they were.
# The lead confirmed its email consent (double opt-in): an email held for it is asked for
# again at once, not at its next recheck (up to 6 hours later). Only a send held for a
# confirmation reaches the marker, and no history before it had one.
CONFIRMED_WAKE_PATCH = "wake-on-confirmation"
NOTIFY_OWNER_PATCH = "notify-owner-of-reply"
# A reply after the sequence ended is forwarded too, while that sequence is the last to
# have ended (`reply_owner`, set as a `notify_owner` sequence ends). Only a lead whose
# sequence said so reaches the marker; no history before the previous patch could.
LATER_REPLIES_PATCH = "notify-owner-after-the-end"
REPLY_TYPES = frozenset({"email.reply", "sms.reply"})  # not `email.auto_reply`: a machine's
RESPONSES_PER_RUN = 2_000  # then continue as new, so the history stays small
# Event IDs handed to the next run for exact de-duplication: this run's and the one's
# before (a relay re-signals within seconds, not thousands of responses later).
SEEN_RUNS_CARRIED = 2

ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
QUICK = {"start_to_close_timeout": timedelta(seconds=30), "retry_policy": ACTIVITY_RETRY}
# Longer than the provider timeout (10 s); short, so a send cut off by a dead worker is
# retried by another within 30 s.
SEND = {"start_to_close_timeout": timedelta(seconds=30), "retry_policy": ACTIVITY_RETRY}
# A rep's channel: retried with back-off; the activity gives up (and records it) on its
# last attempt, and one failing channel never holds up the others.
NOTIFY = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                                maximum_interval=timedelta(minutes=5), maximum_attempts=8),
}  # fmt: skip


@workflow.defn(name="LeadWorkflow")
class LeadWorkflow:
    @workflow.init
    def __init__(self, input: LeadInput) -> None:
        # Everything the workflow knows that outlives a run, in one model: continue-as-new
        # hands it to the next run as it is, which takes it as it is.
        self.lead: LeadWorkflowState = input.workflow_state()
        # The rest belongs to this run alone, so none of it is carried:
        self._lead_id = input.lead_id  # the workflow's identity: in every run's input
        self._legacy_scoring = input.scoring  # runs that score with it never continue as new
        self._responses_per_run = input.responses_per_run or RESPONSES_PER_RUN  # the input's
        self._score_card = True  # decided in run(): False only for pre-score-card histories
        self._long_life = False  # decided in run(): False only for pre-long-life histories
        self._sequence_task: asyncio.Task | None = None  # a next run restarts it from `lead`
        # A run only continues as new when no answer is being stored and nothing is in
        # flight: these are always back at rest when the state is handed on.
        self._answering = False  # an answer is being stored: a second one is refused
        self._reassigning = False  # a manager's reassignment is being stored
        self._lapsing = False  # the SLA's lapse is being handled (it may move the rep)
        self._busy = 0  # activities in flight outside the main loop
        self._handled_this_run = 0  # responses, counted towards `_responses_per_run`
        self._resumes: dict[str, int] = {}  # sequence -> resume signals taken in this run
        self._confirmations = 0  # email consent confirmations signalled in this run

    # --- messages in --------------------------------------------------------------------

    @workflow.signal
    def enroll(self, request: EnrollRequest) -> None:
        if workflow.patched(ENROLL_ONCE_PATCH):
            # The same enrollment asked for again while it waits: keep the latest (its
            # profile), so repeats cannot pile up in the state carried to the next run.
            self.lead.enroll_requests = [
                waiting for waiting in self.lead.enroll_requests
                if waiting.enrollment_id != request.enrollment_id
            ]  # fmt: skip
        self.lead.enroll_requests.append(request)

    @workflow.signal
    def respond(self, event: ResponseEvent) -> None:
        self.lead.inbox.append(event.slim())  # the body stays in the database

    @workflow.signal
    def respond_all(self, events: list[ResponseEvent]) -> None:
        """Several of the lead's responses in one signal: a burst is a few signals, not
        one per event (each costs a history event and a handler call)."""
        self.lead.inbox.extend(event.slim() for event in events)

    @workflow.signal
    def sequence_resumed(self, sequence_id: str) -> None:
        """A person resumed the sequence (`nurture sequence resume`): a send its pause held
        back is asked for again now (quiet hours and caps are judged then)."""
        self._resumes[sequence_id] = self._resumes.get(sequence_id, 0) + 1

    @workflow.signal
    def consent_confirmed(self) -> None:
        """The lead confirmed its email consent (double opt-in): an email held for it is
        asked for again now."""
        self._confirmations += 1

    @workflow.signal
    def rescore(self, request: RescoreRequest) -> None:
        self.lead.rescore_requests.append(request)

    @workflow.update
    async def answer(self, answer: HandoffAnswer) -> AnswerResult:
        """Sales' answer to the open handoff: accept, reject (recycled after a cool-down)
        or disqualify. Validated first, so a wrong or second answer leaves no trace."""
        self._answering = True
        answer = answer.model_copy(update={"at": workflow.now()})
        try:
            result: AnswerResult = await workflow.execute_activity_method(
                SalesActivities.answer_handoff, answer, **QUICK
            )
        finally:
            self._answering = False
        state = self.lead.state
        state.handoff.status = {"accept": "accepted", "reject": "rejected",
                                "disqualify": "disqualified"}[answer.answer]  # fmt: skip
        state.stage = result.stage
        if answer.answer == "reject":
            self.lead.cycle += 1
            state.cool_down_until = result.cool_down_until
            # Scored again at once (SQL held back until the cool-down ends): the lead
            # may still be an MQL; then nurtured again by the recycle sequence.
            await self._rescore(f"answer:{answer.handoff_id}", "answer")
            asyncio.create_task(self._recycle(self.lead.cycle))
        return result

    def _open_handoff(self, handoff_id: str):
        """The lead's handoff `handoff_id`, if it is open and no answer is being stored
        (what an answer and a reassignment both need)."""
        handoff = self.lead.state.handoff
        if handoff is None or handoff.handoff_id != handoff_id:
            raise ValueError(f"handoff {handoff_id} is not this lead's open handoff")
        if handoff.status != "pending" or self._answering:
            status = handoff.status if handoff.status != "pending" else "being answered"
            raise ValueError(f"handoff {handoff_id} was already answered ({status})")
        return handoff

    @answer.validator
    def _check_answer(self, answer: HandoffAnswer) -> None:
        self._open_handoff(answer.handoff_id)
        if self._reassigning:
            raise ValueError(f"handoff {answer.handoff_id} is being reassigned: try again")
        reasons = ", ".join(REJECT_REASONS)
        if answer.answer == "reject" and answer.reason is None:
            raise ValueError(f"a rejection needs a reason, one of: {reasons}")
        if answer.reason is not None and answer.reason not in REJECT_REASONS:
            raise ValueError(f"unknown reason {answer.reason!r}; one of: {reasons}")

    @workflow.update
    async def reassign(self, request: ReassignRequest) -> ReassignResult:
        """A manager moves the open handoff to another rep: the SLA starts again for them,
        and they are told on each of their channels, as is the rep who had it. Validated
        first; an answer is refused until it is stored."""
        workflow.patched(MANUAL_REASSIGN_PATCH)  # the marker: see MANUAL_REASSIGN_PATCH
        self._reassigning = True  # the SLA waits, an answer is refused, until it is stored
        try:
            await workflow.wait_condition(lambda: not self._lapsing)  # a lapse decides first
            self.lead.reassigned_by_hand += 1
            key = f"reassign{self.lead.reassigned_by_hand}"
            outcome = await self._reassign_to(request, self.lead.reassigned_by_hand)
            self._moved(outcome, key)
        finally:
            self._reassigning = False
        if self.lead.sla_reminders is None and outcome.due_at is not None:
            asyncio.create_task(self._follow_sla(outcome.reminders or 0))  # the chase had stopped
        return ReassignResult(handoff_id=request.handoff_id, rep_id=outcome.rep_id,
                              previous_rep_id=outcome.previous_rep_id, due_at=outcome.due_at,
                              message=outcome.note)  # fmt: skip

    async def _reassign_to(self, request: ReassignRequest, number: int) -> SlaOutcome:
        """Store the move (the SLA lapse's activity, with the rep named); refused with the
        activity's reason, or if the handoff was answered meanwhile."""
        lapse = SlaLapse(handoff_id=request.handoff_id, at=workflow.now(), remind=False,
                         to_rep_id=request.rep_id, by=request.by, reassignment=number)  # fmt: skip
        try:
            outcome: SlaOutcome = await self._activity(
                SalesActivities.handle_sla_lapse, lapse, QUICK
            )
        except ActivityError as exc:  # not a rep who can take it (non-retryable)
            raise ApplicationError(getattr(exc.cause, "message", None) or str(exc)) from None
        if outcome.previous_rep_id is None:
            raise ApplicationError(f"handoff {request.handoff_id} was already {outcome.status}")
        return outcome

    @reassign.validator
    def _check_reassign(self, request: ReassignRequest) -> None:
        handoff = self._open_handoff(request.handoff_id)
        if self._reassigning:
            raise ValueError(f"handoff {request.handoff_id} is being reassigned already")
        if handoff.rep_id == request.rep_id:
            raise ValueError(f"handoff {request.handoff_id} is already with {request.rep_id}")

    @workflow.update
    async def migrate(self, request: MigrateRequest) -> MigrateResult:
        """Move the running enrollment to a newer version of its sequence: once the
        sequence waits on a timer, it goes on from the same (or the mapped) step of the new
        version, with the same timer, visits and send keys."""
        await workflow.wait_condition(lambda: self._idle() or (self._paused() and self._busy == 0))
        if self._idle():
            raise ApplicationError("the enrollment ended before it could be migrated")
        old, pause = self.lead.enrollment.enrollment, self.lead.enrollment.pause
        visits = dict(self.lead.enrollment.visits)
        try:  # the sequence may have moved on since the validator looked
            to_step = self._migration_target(request, pause.step_id)
        except ValueError as exc:
            raise ApplicationError(str(exc)) from None
        self._sequence_task.cancel()
        await workflow.wait([self._sequence_task])
        await self._activity(
            LeadActivities.migrate_enrollment,
            MigrateEnrollment(enrollment_id=old.enrollment_id,
                              sequence_version=request.sequence.version),
            QUICK,
        )  # fmt: skip
        new = old.model_copy(
            update={"sequence": request.sequence, "templates": request.templates or old.templates}
        )
        self.lead.state.sequence_version = request.sequence.version
        visits[to_step] = visits.pop(pause.step_id, 1)
        self.lead.enrollment = RunningEnrollment(
            enrollment=new, visits=visits, pause=pause.model_copy(update={"step_id": to_step})
        )
        self._sequence_task = asyncio.create_task(self._sequence(self.lead.enrollment))
        return MigrateResult(enrollment_id=old.enrollment_id, from_version=old.sequence.version,
                             to_version=request.sequence.version, from_step=pause.step_id,
                             to_step=to_step)  # fmt: skip

    @migrate.validator
    def _check_migrate(self, request: MigrateRequest) -> None:
        running = self.lead.enrollment
        if running is None or self._idle():
            raise ValueError("no running enrollment to migrate")
        current = running.enrollment.sequence
        if request.sequence.id != current.id:
            raise ValueError(f"the lead is in {current.id!r}, not {request.sequence.id!r}")
        if request.sequence.version <= current.version:
            raise ValueError(f"the lead is already on {current.id} v{current.version}")
        if not self._long_life:
            raise ValueError("started before migrations were possible: let it finish")
        step_id = running.pause.step_id if running.pause else self.lead.state.step_id
        if step_id is None:
            raise ValueError("the sequence has not reached its first step yet: try again")
        self._migration_target(request, step_id)

    def _migration_target(self, request: MigrateRequest, step_id: str) -> str:
        """The step of the new version the lead goes on from; ValueError if there is none."""
        current = self.lead.enrollment.enrollment.sequence
        to_step = request.step_map.get(step_id, step_id)
        try:
            new_step = request.sequence.step(to_step)
        except KeyError:
            raise ValueError(
                f"the lead is at step {step_id!r}, which v{request.sequence.version} has not: "
                f"map it to one of its steps (--map {step_id}=STEP)"
            ) from None
        old_step = current.step(step_id)
        if new_step.type != old_step.type:
            raise ValueError(
                f"step {step_id!r} is a {old_step.type} step but {to_step!r} in "
                f"v{request.sequence.version} is a {new_step.type} step: map it to a "
                f"{old_step.type} step"
            )
        return to_step

    @workflow.query
    def state(self) -> LeadState:
        return self.lead.state.model_copy(deep=True)

    # --- main loop ------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: LeadInput) -> None:
        self._score_card = workflow.patched(SCORE_CARD_PATCH)
        self._long_life = input.carried is not None or workflow.patched(LONG_LIFE_PATCH)
        self._resume_tasks()
        lead = self.lead
        while True:
            timeout = None
            if lead.state.next_rescore_at is not None:
                seconds = (lead.state.next_rescore_at - workflow.now()).total_seconds()
                timeout = timedelta(seconds=max(seconds, 1.0))
            try:
                await workflow.wait_condition(
                    lambda: (
                        bool(lead.inbox)
                        or bool(lead.rescore_requests)
                        or (bool(lead.enroll_requests) and self._idle())
                        or self._time_to_continue()
                    ),
                    timeout=timeout,
                )
            except TimeoutError:  # points have decayed a day's worth: score again
                await self._rescore(f"decay:{workflow.now().isoformat()}", "decay")
                continue
            if self._time_to_continue():
                workflow.continue_as_new(self._input_for_next_run(input))
            if lead.inbox and self._long_life:
                events, lead.inbox = lead.inbox, []
                await self._handle_responses(events)
            elif lead.inbox:
                await self._handle_response(lead.inbox.pop(0))
            elif lead.rescore_requests:
                request = lead.rescore_requests.pop(0)
                await self._rescore(request.event_id, "rescore", request.model_fingerprint)
            elif lead.enroll_requests and self._idle():
                self._start_enrollment(lead.enroll_requests.pop(0))

    def _idle(self) -> bool:
        return self._sequence_task is None or self._sequence_task.done()

    def _paused(self) -> bool:
        """The running sequence waits on a timer (a next run can pick it up from there)."""
        return self.lead.enrollment is not None and self.lead.enrollment.pause is not None

    async def _activity(self, method, argument, options: dict, local: bool = False):
        """An activity, counted while in flight: a run only continues as new when none is."""
        execute = (workflow.execute_local_activity_method if local
                   else workflow.execute_activity_method)  # fmt: skip
        self._busy += 1
        try:
            return await execute(method, argument, **options)
        finally:
            self._busy -= 1

    async def _score(self, request: ScoreRequest) -> ScoreResult:
        """`score_lead`: a few milliseconds of database work, idempotent by its event, so
        safe to run (and retry) as a local activity on the worker holding the workflow."""
        local = workflow.patched(SCORE_LOCALLY_PATCH)
        return await self._activity(LeadActivities.score_lead, request, QUICK, local=local)

    # --- continue-as-new: a long life in several runs ---------------------------------------

    def _time_to_continue(self) -> bool:
        """Many responses handled (or Temporal suggests it), and nothing is in flight: the
        sequence, the SLA and a recycle all wait on timers, which the next run restarts.
        Responses still waiting go to the next run with the rest: under a steady stream
        the inbox is never empty."""
        if not (self._long_life and self._score_card):
            return False
        if (self._handled_this_run < self._responses_per_run
                and not workflow.info().is_continue_as_new_suggested()):  # fmt: skip
            return False
        return (
            self._busy == 0
            and not self._answering
            and workflow.all_handlers_finished()
            and (self._idle() or self._paused())
        )

    def _input_for_next_run(self, input: LeadInput) -> LeadInput:
        """The state as it is, for the next run: one more run behind it, and only the
        latest event IDs (older ones are recognised by the scoring record)."""
        self.lead.runs += 1
        keep = SEEN_RUNS_CARRIED * self._responses_per_run
        self.lead.seen_event_ids = dict.fromkeys(list(self.lead.seen_event_ids)[-keep:])
        return LeadInput.continuing(self.lead, input.responses_per_run)

    def _resume_tasks(self) -> None:
        """Start again what the previous run was waiting on (nothing, in a first run): the
        sequence, the SLA, a recycle."""
        lead = self.lead
        if lead.enrollment is not None:
            self._sequence_task = asyncio.create_task(self._sequence(lead.enrollment))
        if lead.sla_reminders is not None and lead.state.handoff is not None:
            asyncio.create_task(self._follow_sla(lead.sla_reminders))
        if lead.recycle_cycle is not None:
            asyncio.create_task(self._recycle(lead.recycle_cycle))

    # --- responses --------------------------------------------------------------------------

    async def _handle_responses(self, events: list[ResponseEvent]) -> None:
        """Take every response that has arrived and score the lead once for all of them:
        a burst costs one scoring, and the card counts each response."""
        new = []
        for event in events:
            if event.event_id in self.lead.seen_event_ids:
                continue  # redelivered: already scored
            self._take(event)
            self._handled_this_run += 1
            new.append(event)
        if new:
            batch = [event.event_id for event in new[:-1]]
            await self._rescore(new[-1].event_id, new[-1].type, batch=batch)
            self._replied(new)
        for event in new:  # scored with the others (no points unless a rule gives some)
            if event.type in OUTCOME_TYPES:
                await self._apply_outcome(event)

    async def _apply_outcome(self, event: ResponseEvent) -> None:
        """An opportunity's news from the CRM: the stage it puts the lead at (a local
        activity since OUTCOME_LOCALLY_PATCH); nurture stops while an opportunity is open
        or won; a loss is nurtured again after the recycle cool-down, as a rejection is."""
        lead, state = self.lead, self.lead.state
        status = OUTCOME_TYPES[event.type]
        request = OutcomeRequest(lead_id=self._lead_id, event_id=event.event_id,
                                 status=status, at=workflow.now())  # fmt: skip
        local = workflow.patched(OUTCOME_LOCALLY_PATCH)
        applied: OutcomeApplied = await self._activity(SalesActivities.apply_outcome, request,
                                                       QUICK, local=local)  # fmt: skip
        state.stage = applied.stage
        if not applied.moved:
            return
        lead.cycle += 1  # a recycle waiting for an earlier loss is called off
        if status == "lost":
            state.cool_down_until = applied.cool_down_until
            asyncio.create_task(self._recycle(lead.cycle))
        else:
            lead.nurture_stopped = True

    def _take(self, event: ResponseEvent) -> None:
        """A response not seen before: what the lead did, for de-duplication, `wait_for`
        steps and branch conditions."""
        self.lead.seen_event_ids[event.event_id] = None
        self.lead.response_types.append(event.type)
        self.lead.events_since_send.add(event.type)
        self.lead.state.responses_handled += 1

    def _replied(self, events: list[ResponseEvent]) -> None:
        """A person answered: the running sequence ends at once if it says so (`on_reply:
        exit`); it wakes from its wait and sends nothing more. Called once the reply is
        scored, so a reply that makes the lead sales-qualified ends it as a handoff. With
        `on_reply: pause` its sends wait `reply_pause` from the last reply instead."""
        self._away(events)
        running = self.lead.enrollment
        replies = [event for event in events if event.type in REPLY_TYPES]
        if not replies:
            return
        if running is None:
            told = self.lead.reply_owner
            if told is not None and workflow.patched(LATER_REPLIES_PATCH):
                self._forward_replies(replies, told.model_copy(update={"effect": "ended"}))
            return
        sequence = running.enrollment.sequence
        if sequence.notify_owner and workflow.patched(NOTIFY_OWNER_PATCH):
            self._forward_replies(replies, self._reply_forward(sequence))
        if sequence.on_reply == "continue":
            return
        if sequence.on_reply == "pause":
            if workflow.patched(REPLY_PAUSE_PATCH):
                hold = timedelta(seconds=sequence.reply_pause)
                running.reply_hold_until = workflow.now() + hold
                running.hold_reason = REPLY_HOLD_REASON
            return
        if workflow.patched(EXIT_ON_REPLY_PATCH):
            running.replied = True

    def _away(self, events: list[ResponseEvent]) -> None:
        """An out-of-office naming the day its sender is back holds the running sequence's
        sends until then (`on_out_of_office: defer`); a later hold is never shortened."""
        running = self.lead.enrollment
        dates = [e.data["return_date"] for e in events if e.data.get("return_date")]
        if running is None or not dates or running.enrollment.sequence.on_out_of_office != "defer":
            return
        back = max(datetime.fromisoformat(date) for date in dates)
        if back <= workflow.now() or not workflow.patched(OUT_OF_OFFICE_PATCH):
            return
        if running.reply_hold_until is None or back > running.reply_hold_until:
            running.reply_hold_until = back
            running.hold_reason = f"out of office until {back:%Y-%m-%d}"

    async def _handle_response(self, event: ResponseEvent) -> None:
        if event.event_id in self.lead.seen_event_ids:
            return  # redelivered: already scored
        self._take(event)
        if self._score_card:
            await self._rescore(event.event_id, event.type)
            self._replied([event])
            return

        detail = ", ".join(
            f"{k}={v}" for k, v in sorted(event.data.items()) if k in ("step", "url")
        )
        scoring = LegacyScoringModel.model_validate(self._legacy_scoring)
        state = self.lead.state
        change = legacy_apply_response(scoring, int(state.score), state.stage, event.type, detail)
        await workflow.execute_activity_method(
            LeadActivities.record_score,
            ScoreUpdate(
                lead_id=self._lead_id,
                event_id=event.event_id,
                response_type=event.type,
                old_score=change.old_score,
                new_score=change.new_score,
                reason=change.reason,
                old_stage=change.old_stage,
                new_stage=change.new_stage,
                stages_entered=change.stages_crossed,
                cycle=self.lead.cycle,
            ),
            **QUICK,
        )
        # Responses are handled one at a time, so the state moves only once it is stored.
        state.score, state.stage = change.new_score, change.new_stage
        self.lead.reasons.append(change.reason)
        if "sql" in change.stages_crossed:
            await self._hand_off()
        self._replied([event])

    async def _rescore(self, event_id: str, cause: str, fingerprint: str | None = None,
                       batch: list[str] | None = None) -> None:  # fmt: skip
        """Score the lead now (the activity stores the card), then act on its stage."""
        if cause == "rescore":  # responses were checked in _handle_response
            if event_id in self.lead.seen_event_ids:
                return
            self.lead.seen_event_ids[event_id] = None
        request = ScoreRequest(lead_id=self._lead_id, event_id=event_id, cause=cause,
                               at=workflow.now(), model_fingerprint=fingerprint,
                               batch_event_ids=batch or [])  # fmt: skip
        result: ScoreResult = await self._score(request)
        if self._long_life and result.requested_at not in (None, request.at):
            return  # scored by an earlier run (an event redelivered after it was forgotten)
        state = self.lead.state
        state.score, state.stage = result.total, result.stage
        state.fit, state.engagement = result.fit, result.engagement
        state.grade = result.grade
        state.next_rescore_at = (
            workflow.now() + timedelta(seconds=result.rescore_in) if result.rescore_in else None
        )
        self.lead.reasons = result.reasons
        if "sql" in result.entered:
            await self._hand_off()
        self._check_goals()  # on the new score and stage (after a handoff, which wins)

    async def _hand_off(self) -> None:
        """Stop nurturing and give the lead to sales: once per qualification cycle. The rep
        is told on each of their channels at once; then the SLA is followed on durable
        timers (remind, then reassign) until sales answers (the `answer` update)."""
        self.lead.nurture_stopped = True
        if not workflow.patched(SALES_HANDOFF_PATCH):
            await self._legacy_hand_off()
            return
        assignment: Assignment = await self._activity(
            SalesActivities.assign_handoff,
            AssignRequest(lead_id=self._lead_id, cycle=self.lead.cycle, at=workflow.now()),
            QUICK,
        )
        self.lead.state.handoff_rep_id = assignment.rep_id
        self.lead.state.handoff = HandoffState(
            handoff_id=assignment.handoff_id,
            rep_id=assignment.rep_id,
            status=assignment.status,
            due_at=assignment.due_at,
        )
        if assignment.status == "pending":
            self._notify(assignment.rep_id, assignment.channels, "new:0", "new")
            asyncio.create_task(self._follow_sla(assignment.reminders))

    def _notify(self, rep_id: str, channels: list[str], key: str, kind: str,
                other_rep_id: str | None = None) -> None:  # fmt: skip
        """Start one notification per channel; each retries on its own."""
        handoff_id = self.lead.state.handoff.handoff_id
        for channel in channels:
            request = NotifyRequest(handoff_id=handoff_id, rep_id=rep_id, channel=channel,
                                    kind=kind, key=f"{key}:{rep_id}:{channel}",
                                    other_rep_id=other_rep_id)  # fmt: skip
            asyncio.create_task(self._notify_one(request))

    def _reply_forward(self, sequence: Sequence) -> ReplyForward:
        """How the sequence's replies go to the lead's owner (each with its event ID)."""
        return ReplyForward(lead_id=self._lead_id, event_id="", sequence_id=sequence.id,
                            sequence_name=sequence.name, effect=sequence.on_reply)  # fmt: skip

    def _forward_replies(self, replies: list[ResponseEvent], told: ReplyForward) -> None:
        """One `forward_reply` each, in the background: the lead never waits for its owner."""
        for reply in replies:
            request = told.model_copy(update={"event_id": reply.event_id})
            asyncio.create_task(self._forward_reply(request))

    async def _forward_reply(self, request: ReplyForward) -> None:
        """The owner hears of the reply; a channel that keeps failing is recorded by the
        activity's last attempt and never holds up the lead."""
        try:
            await self._activity(ReplyNoticeActivities.forward_reply, request, NOTIFY)
        except ActivityError:
            workflow.logger.warning("reply %s: forwarding to the owner failed", request.event_id)

    async def _notify_one(self, request: NotifyRequest) -> None:
        try:
            await self._activity(SalesActivities.notify_rep, request, NOTIFY)
        except ActivityError:
            workflow.logger.warning(
                "handoff %s: %s notification to %s failed",
                request.handoff_id,
                request.channel,
                request.rep_id,
            )

    async def _follow_sla(self, reminders: int) -> None:
        """Until sales answers: when the SLA lapses, remind the rep (`reminders` times),
        then reassign to the next rep and tell the first; then the same for the next."""
        self.lead.sla_reminders = reminders
        try:
            await self._follow_sla_lapses(reminders)
        finally:
            self.lead.sla_reminders = None

    async def _follow_sla_lapses(self, reminders: int) -> None:
        handoff = self.lead.state.handoff
        while handoff.status == "pending" and handoff.due_at is not None:
            wait = max((handoff.due_at - workflow.now()).total_seconds(), 1.0)
            try:
                await workflow.wait_condition(
                    lambda: handoff.status != "pending" or self._answering or self._reassigning,
                    timeout=timedelta(seconds=wait),
                )
                # An answer or a reassignment is being stored: its result decides (a
                # reassignment restarts the clock from the new rep's due time).
                if self._answering or self._reassigning:
                    await workflow.wait_condition(
                        lambda: not (self._answering or self._reassigning)
                    )
                    continue
                return
            except TimeoutError:
                pass
            self.lead.sla_lapses += 1
            lapses = self.lead.sla_lapses  # numbers the notifications' keys, across runs
            self._lapsing = True
            try:
                outcome: SlaOutcome = await self._activity(
                    SalesActivities.handle_sla_lapse,
                    SlaLapse(
                        handoff_id=handoff.handoff_id,
                        at=workflow.now(),
                        remind=handoff.reminders_sent < reminders,
                    ),  # fmt: skip
                    QUICK,
                )
            finally:
                self._lapsing = False
            if outcome.status != "pending":
                return
            handoff.due_at = outcome.due_at
            if outcome.due_at is None:  # every rep who could take it has had it
                return
            if outcome.previous_rep_id:
                self._moved(outcome, f"lapse{lapses}")
            else:
                handoff.reminders_sent += 1
                self._notify(outcome.rep_id, outcome.channels, f"lapse{lapses}", "reminder")

    def _moved(self, outcome: SlaOutcome, key: str) -> None:
        """The handoff went to another rep (a lapse, or a manager): they are told on each
        channel, and so is the rep who had it; the new rep's SLA starts."""
        handoff = self.lead.state.handoff
        handoff.rep_id, handoff.reminders_sent = outcome.rep_id, 0
        handoff.due_at = outcome.due_at
        handoff.reassignments += 1
        self.lead.state.handoff_rep_id = outcome.rep_id
        self._notify(outcome.previous_rep_id, outcome.previous_channels, key, "reassigned_away",
                     outcome.rep_id)  # fmt: skip
        self._notify(outcome.rep_id, outcome.channels, key, "reassigned_to",
                     outcome.previous_rep_id)  # fmt: skip

    async def _recycle(self, cycle: int) -> None:
        """After a rejection's cool-down: nurture again, with the recycle sequence."""
        self.lead.recycle_cycle = cycle
        try:
            await self._recycle_after_cool_down(cycle)
        finally:
            self.lead.recycle_cycle = None

    async def _recycle_after_cool_down(self, cycle: int) -> None:
        lead = self.lead
        if lead.state.cool_down_until is not None:
            wait = (lead.state.cool_down_until - workflow.now()).total_seconds()
            if wait > 0:
                await workflow.sleep(timedelta(seconds=wait))
        if lead.cycle != cycle:
            return
        request = await self._activity(
            SalesActivities.recycle_lead, RecycleRequest(lead_id=self._lead_id, cycle=cycle), QUICK
        )
        lead.state.cool_down_until = None
        lead.nurture_stopped = False
        if lead.state.stage == "closed_lost":  # as recycle_lead left the row: scored again
            lead.state.stage = "lead"
        if request is not None:
            lead.enroll_requests.append(request)

    async def _legacy_hand_off(self) -> None:
        result = await workflow.execute_activity_method(
            LeadActivities.hand_off,
            HandoffRequest(
                lead_id=self._lead_id,
                cycle=self.lead.cycle,
                score=self.lead.state.score,
                reasons=self.lead.reasons[-10:],
            ),
            **QUICK,
        )
        self.lead.state.handoff_rep_id = result.rep_id

    # --- the sequence -------------------------------------------------------------------------

    def _start_enrollment(self, request: EnrollRequest) -> None:
        lead = self.lead
        lead.profile.update(request.profile)
        if request.enrollment_id in lead.finished_enrollments or lead.nurture_stopped:
            return  # enrolling twice, or a lead already with sales: nothing to do
        lead.events_since_send.clear()
        state = lead.state
        state.sequence_id = request.sequence.id
        state.sequence_version = request.sequence.version
        state.enrollment_id = request.enrollment_id
        state.enrollment_status = "active"
        state.sent_steps = []
        lead.enrollment = RunningEnrollment(enrollment=request)
        self._sequence_task = asyncio.create_task(self._sequence(lead.enrollment))

    async def _sequence(self, running: RunningEnrollment) -> None:
        """Run the enrollment's sequence: the state holds the enrollment until it ends (or
        stops: a migration, an error), so a run that continues as new hands it on."""
        try:
            await self._run_sequence(running)
        finally:
            if self.lead.enrollment is running:
                self.lead.enrollment = None
                sequence = running.enrollment.sequence  # as it ended (after any migration)
                told = self._reply_forward(sequence) if sequence.notify_owner else None
                self.lead.reply_owner = told  # replies after the end: until the next one

    async def _run_sequence(self, running: RunningEnrollment) -> None:
        """Walk the sequence; a `pause` picks it up where a previous run (or a migration)
        left it waiting."""
        enrollment = running.enrollment
        sequence = enrollment.sequence
        pause = running.pause  # the first step resumes from it
        if pause is None and await self._held_out(enrollment):
            self._ended(enrollment, "held_out")  # no enrollment row: it was never nurtured
            return
        if pause is None:
            await self._enrollment_row(
                LeadActivities.start_enrollment,
                StartEnrollment(
                    lead_id=self._lead_id,
                    enrollment_id=enrollment.enrollment_id,
                    workflow_id=workflow.info().workflow_id,
                    sequence_id=sequence.id,
                    sequence_version=sequence.version,
                    segment=enrollment.segment,
                ),
            )
        visits = running.visits  # carried if the run continues as new mid-sequence
        status, reason = "completed", "reached the end of the sequence"
        step_id: str | None = pause.step_id if pause else sequence.steps[0].id
        if pause is None:
            self._check_goals()  # a goal already met at enrollment ends it before a send
        while step_id is not None:
            if (stopped := self._stop_reason(running)) is not None:
                status, reason = stopped
                break
            step = sequence.step(step_id)
            self.lead.state.step_id = step_id
            if pause is None:
                visits[step_id] = visits.get(step_id, 0) + 1
            left = max((pause.until - workflow.now()).total_seconds(), 1.0) if pause else None
            here = SequencePause(kind="wait", step_id=step_id, until=workflow.now(),
                                 visit=visits[step_id])  # fmt: skip
            outcome = "done"
            if isinstance(step, EmailStep | SmsStep):
                resume_at = pause.until if pause else None
                await self._send(enrollment, step, visits[step_id], resume_at)
            elif isinstance(step, WaitStep):
                await self._sleep(left or step.duration, pause=here)
            elif isinstance(step, WaitForStep):
                self.lead.state.waiting_for = step.event
                happened = await self._sleep(
                    left or step.timeout,
                    until=lambda e=step.event: e in self.lead.events_since_send,
                    pause=here.model_copy(update={"kind": "wait_for"}),
                )
                self.lead.state.waiting_for = None
                outcome = "event" if happened else "timeout"
            elif isinstance(step, BranchStep):
                outcome = "then" if self._condition(step.condition) else "else"
            elif isinstance(step, SplitStep):
                arm = await self._split(enrollment, step)
                if arm.holdout:  # sent nothing more; still scored, still handed off
                    status, reason = "held_out", f"holdout arm of experiment {arm.experiment}"
                    break
                outcome = arm.arm
            else:  # exit
                status, reason = "exited", step.reason
                break
            pause = None
            step_id = sequence.after(step_id, outcome)
        else:
            status, reason = self._stop_reason(running) or (status, reason)

        self._ended(enrollment, status)
        await self._enrollment_row(
            LeadActivities.finish_enrollment,
            FinishEnrollment(enrollment_id=enrollment.enrollment_id, status=status, reason=reason),
        )

    async def _enrollment_row(self, method, argument) -> None:
        """start_enrollment or finish_enrollment: one idempotent row write, so safe to run
        (and retry) as a local activity."""
        local = workflow.patched(ENROLLMENT_LOCALLY_PATCH)
        await self._activity(method, argument, QUICK, local=local)

    def _ended(self, enrollment: EnrollRequest, status: str) -> None:
        state = self.lead.state
        state.enrollment_status = status
        state.step_id = None
        state.next_action_at = None
        self.lead.finished_enrollments.add(enrollment.enrollment_id)

    # --- experiments ------------------------------------------------------------------------

    async def _held_out(self, enrollment: EnrollRequest) -> bool:
        """Whether the lead is in its segment's holdout: then it is never nurtured (but
        scored and handed off as any lead). Drawn once; a recycle finds the same arm."""
        percent = enrollment.holdout_percent
        if not percent or not workflow.patched(EXPERIMENTS_PATCH):
            return False
        segment = enrollment.segment or ""
        arms = [ArmChoice(name=HOLDOUT_ARM, weight=percent, holdout=True),
                ArmChoice(name=NURTURED_ARM, weight=100 - percent)]  # fmt: skip
        request = self._arm_request(enrollment, holdout_experiment(segment), arms,
                                    kind="holdout", control=HOLDOUT_ARM, metric="sql",
                                    percent=percent)  # fmt: skip
        return (await self._assign(request)).holdout

    async def _split(self, enrollment: EnrollRequest, step: SplitStep) -> ArmAssigned:
        """The lead's arm of the split's experiment (the one it has, if it has one)."""
        workflow.patched(EXPERIMENTS_PATCH)  # the marker: see EXPERIMENTS_PATCH
        sequence = enrollment.sequence
        paths = sequence.arm_paths(step)
        arms = [ArmChoice(name=arm.name, weight=arm.weight, holdout=arm.holdout, next=arm.next,
                          path=paths[arm.name]) for arm in step.arms]  # fmt: skip
        request = self._arm_request(enrollment, sequence.experiment_of(step), arms,
                                    kind="split", control=step.control_arm, metric=step.metric,
                                    step_id=step.id, winner=step.winner)  # fmt: skip
        return await self._assign(request)

    def _arm_request(self, enrollment: EnrollRequest, experiment: str, arms: list[ArmChoice],
                     **fields) -> ArmRequest:  # fmt: skip
        return ArmRequest(lead_id=self._lead_id, experiment=experiment, arms=arms,
                          enrollment_id=enrollment.enrollment_id,
                          sequence_id=enrollment.sequence.id, segment=enrollment.segment,
                          at=workflow.now(), **fields)  # fmt: skip

    async def _assign(self, request: ArmRequest) -> ArmAssigned:
        arm: ArmAssigned = await self._activity(LeadActivities.assign_arm, request, QUICK)
        if arm.assigned_at is not None:
            self.lead.state.experiments[arm.experiment] = arm.arm
        return arm

    async def _send(self, enrollment: EnrollRequest, step: EmailStep | SmsStep, visit: int,
                    resume_at=None) -> None:  # fmt: skip
        """Send the step's message; while quiet hours or a frequency cap hold it back, wait
        on a durable timer for the time the activity names, then ask again. Never dropped;
        only a handoff ends the wait (nurture stops)."""
        sequence = enrollment.sequence
        request = SendRequest(
            lead_id=self._lead_id,
            enrollment_id=enrollment.enrollment_id,
            sequence_id=sequence.id,
            step_id=step.id,
            visit=visit,
            channel=step.type,
            template=step.template,
            due_at=workflow.now(),
            send_window=sequence.send_windows.get(step.type),
            ignore_frequency_caps=sequence.ignore_frequency_caps,
            templates=enrollment.templates,
        )
        state = self.lead.state
        held = SequencePause(kind="deferred", step_id=step.id, until=workflow.now(), visit=visit)
        window_at_dispatch = workflow.patched(WAIT_WINDOW_PATCH)
        send_options = SEND
        if workflow.patched(SEND_QUEUES_PATCH):
            queue = send_queue(workflow.info().task_queue, step.type)
            send_options = {**SEND, "task_queue": queue}
        if resume_at is not None:  # a previous run was holding this send back: go on doing so
            reason = state.deferred.reason if state.deferred else None
            resumed = self._resumed_since(sequence.id, reason, 0) or self._confirmed_since(
                reason, 0
            )
            await self._sleep(max((resume_at - workflow.now()).total_seconds(), 1.0),
                              pause=held, until=resumed)  # fmt: skip
            state.deferred = None
            if self._sequence_stopped():
                return
            request = request.model_copy(update={"due_at": workflow.now()})
        while True:
            if await self._hold_after_reply(step, held):
                if self._sequence_stopped():
                    return
                request = request.model_copy(update={"due_at": workflow.now()})
            if window_at_dispatch:  # what arrives from here on answers this message
                self.lead.events_since_send.clear()
            resumes = self._resumes.get(sequence.id, 0)  # a resume from here on wakes it
            confirmations = self._confirmations  # so does a confirmation
            outcome = await self._activity(LeadActivities.send_message, request, send_options)
            if outcome.status != "deferred" or outcome.retry_at is None:
                break
            state.deferred = DeferredSend(
                step_id=step.id, channel=step.type, until=outcome.retry_at,
                reason=outcome.reason or "deferred",
            )  # fmt: skip
            resumed = self._resumed_since(
                sequence.id, outcome.reason, resumes
            ) or self._confirmed_since(outcome.reason, confirmations)
            await self._sleep(max((outcome.retry_at - workflow.now()).total_seconds(), 1.0),
                              pause=held, until=resumed)  # fmt: skip
            state.deferred = None
            if self._sequence_stopped():
                return
            request = request.model_copy(update={"due_at": workflow.now()})
        if outcome.status in ("failed", "unknown"):
            state.send_problems.append(f"{step.id}: {outcome.status}: {outcome.reason}")
        state.sent_steps.append(step.id)
        if not window_at_dispatch:
            self.lead.events_since_send.clear()

    async def _hold_after_reply(self, step: EmailStep | SmsStep, held: SequencePause) -> bool:
        """`on_reply: pause`: the send waits until the last reply's hold is over (a reply
        while it waits moves the end); then quiet hours and caps are judged as usual.
        Returns whether it waited."""
        running, state, waited = self.lead.enrollment, self.lead.state, False
        while (until := running.reply_hold_until) is not None and until > workflow.now():
            reason = running.hold_reason or REPLY_HOLD_REASON
            state.deferred = DeferredSend(step_id=step.id, channel=step.type, until=until,
                                          reason=reason)  # fmt: skip
            await self._sleep((until - workflow.now()).total_seconds(), pause=held,
                              until=lambda u=until: running.reply_hold_until != u)  # fmt: skip
            state.deferred, waited = None, True
            if self._sequence_stopped():
                break
        return waited

    def _resumed_since(self, sequence_id: str, reason: str | None, resumes: int):
        """For a send held back by its sequence's pause: whether a resume signal came after
        the `resumes` already counted (None for a send held by quiet hours or a cap)."""
        if reason != PAUSED_REASON or not workflow.patched(SEQUENCE_PAUSE_PATCH):
            return None
        return lambda: self._resumes.get(sequence_id, 0) > resumes

    def _confirmed_since(self, reason: str | None, confirmations: int):
        """For an email held for the lead's confirmation: whether a confirmation came after
        the `confirmations` already counted (None for a send held for anything else)."""
        if reason != CONFIRMATION_WAIT or not workflow.patched(CONFIRMED_WAKE_PATCH):
            return None
        return lambda: self._confirmations > confirmations

    async def _sleep(self, seconds: float, pause: SequencePause, until=None) -> bool:
        """A durable timer that ends early on a handoff (or when `until` holds). While it
        runs, `pause` says where the sequence is, so a next run can resume it.

        Returns True if `until` became true before the time was up.
        """
        deadline = workflow.now() + timedelta(seconds=seconds)
        self.lead.state.next_action_at = deadline
        running = self.lead.enrollment
        running.pause = pause.model_copy(update={"until": deadline})

        def woken() -> bool:
            return self._sequence_stopped() or (until is not None and until())

        try:
            await workflow.wait_condition(woken, timeout=timedelta(seconds=seconds))
        except TimeoutError:
            pass
        finally:
            self.lead.state.next_action_at = None
            running.pause = None
        return until is not None and until()

    def _sequence_stopped(self) -> bool:
        """Nurture stopped (a handoff), or a reply or a goal ended the running sequence."""
        running = self.lead.enrollment
        ended = running is not None and (running.replied or running.exit_reason is not None)
        return self.lead.nurture_stopped or ended

    def _stop_reason(self, running: RunningEnrollment) -> tuple[str, str] | None:
        """How a stopped sequence ends (None: it goes on): a handoff, a goal, a reply."""
        if self.lead.nurture_stopped:
            return "handed_off", "lead became sales-qualified"
        if running.exit_reason is not None:
            return "exited", running.exit_reason
        return ("exited", "replied") if running.replied else None

    def _check_goals(self) -> None:
        """The running sequence's first goal that holds ends it (it wakes from its wait)."""
        running = self.lead.enrollment
        if running is None or self._sequence_stopped():
            return
        goals = running.enrollment.sequence.goals
        if not goals or not workflow.patched(SEQUENCE_GOALS_PATCH):
            return
        met = next((goal for goal in goals if self._condition(goal.when, "goal")), None)
        if met is not None:
            running.exit_reason = met.exit_reason()

    def _condition(self, expression: str, kind: str = "branch") -> bool:
        state = self.lead.state
        context = {
            "lead": {**self.lead.profile, "score": state.score, "stage": state.stage},
            "responses": list(self.lead.response_types),
        }
        try:
            return evaluate_condition(expression, context)
        except ConditionError as exc:
            # A broken condition must not stall the lead: take the `else` path (a goal not
            # met), loudly.
            workflow.logger.error("%s condition failed for %s: %s", kind, self._lead_id, exc)
            return False
