"""Inputs and outputs of the lead workflow and its activities.

Single typed objects (pydantic), so fields can be added with defaults without
breaking histories of leads already in flight.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    computed_field,
    field_validator,
)

from models.definitions import SendWindow, Sequence


def lead_workflow_id(lead_id: str) -> str:
    return f"lead-{lead_id}"


def send_queue(task_queue: str, channel: str) -> str:
    """The task queue of a channel's sends: a queue of its own, so Temporal can hold them
    to the provider's rate across every worker (`max_task_queue_activities_per_second`)."""
    return f"{task_queue}-send-{channel}"


class LeadInput(BaseModel):
    lead_id: str
    profile: dict[str, Any] = Field(default_factory=dict)
    # Only workflows started before the score card carry a model (scoring/legacy.py);
    # now the scoring activity uses the worker's current scoring.yaml.
    scoring: dict[str, Any] | None = None
    score: float = 0
    stage: str = "lead"
    # A new lead's first enrollment rides in its start input: one plain start instead
    # of signal-with-start (the import's rate). Older histories have none.
    enroll: EnrollRequest | None = None
    # A run continued as new: the workflow's state as the previous run left it.
    carried: LeadWorkflowState | None = None
    # Continue as new after this many responses (default: the workflow's RESPONSES_PER_RUN).
    responses_per_run: int | None = None

    def workflow_state(self) -> LeadWorkflowState:
        """What a run starts from: the state the previous run handed on, as it is, or a new
        lead's. (A continued run's profile rides beside its state, where a first run's is.)"""
        if self.carried is not None:
            self.carried.profile = dict(self.profile)
            return self.carried
        return LeadWorkflowState(
            profile=dict(self.profile),
            # As if signalled: the same path whichever way the enrollment came.
            enroll_requests=[self.enroll] if self.enroll else [],
            state=LeadState(lead_id=self.lead_id, stage=self.stage, score=self.score),
        )

    @classmethod
    def continuing(cls, state: LeadWorkflowState, responses_per_run: int | None) -> LeadInput:
        """The next run's input: the state as it is. The lead's ID, score and stage are also
        where a first run's input has them, and the profile only there (not twice)."""
        lead = state.state
        return cls(lead_id=lead.lead_id, profile=state.profile, score=lead.score, stage=lead.stage,
                   carried=state, responses_per_run=responses_per_run)  # fmt: skip


class EnrollRequest(BaseModel):
    enrollment_id: str
    sequence: Sequence
    segment: str | None = None
    profile: dict[str, Any] = Field(default_factory=dict)
    # The template version (channels.template_sets) the lead is sent; none in enrollments
    # made before versions were kept: those render the files as they are.
    templates: str | None = None
    # The segment's holdout: this percentage of its leads is never nurtured (experiments).
    holdout_percent: float = 0


# The keys of an event's data that travel with it to its workflow (for leads scored before
# score cards); the rest stays in the database, where the scoring activity reads it.
# An out-of-office's return date travels too: the workflow defers the next send to it.
SIGNALLED_DATA_KEYS = ("step", "url", "return_date")


class ResponseEvent(BaseModel):
    """A response as signalled: its ID and type, never its body (a Temporal payload is
    limited to 2 MB, and the body is in the `responses` row)."""

    event_id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any] = Field(default_factory=dict)

    def slim(self) -> ResponseEvent:
        """Without the body: what is signalled, and what the workflow keeps and carries to
        its next run (the step and URL, 200 characters each)."""
        kept = {key: str(self.data[key])[:200] for key in SIGNALLED_DATA_KEYS
                if key in self.data}  # fmt: skip
        return self if kept == self.data else self.model_copy(update={"data": kept})


class RescoreRequest(BaseModel):
    """`nurture rescore` asks a lead's workflow to score again (a model change)."""

    event_id: str  # rescore:<run id>: scored once however often it is sent
    model_fingerprint: str | None = None  # the model the command used; workers must match


class LeadState(BaseModel):
    """What the `state` query answers."""

    lead_id: str
    stage: str
    score: float
    fit: float | None = None
    engagement: float | None = None
    grade: str | None = None
    next_rescore_at: datetime | None = None  # while engagement is still decaying
    sequence_id: str | None = None
    sequence_version: int | None = None
    enrollment_id: str | None = None
    enrollment_status: str | None = None  # active | completed | exited | handed_off
    step_id: str | None = None
    next_action_at: datetime | None = None
    waiting_for: str | None = None
    responses_handled: int = 0
    handoff: HandoffState | None = None  # the current qualification cycle's, once handed off
    cool_down_until: datetime | None = None  # rejected by sales: recycled from then
    handoff_rep_id: str | None = None
    sent_steps: list[str] = Field(default_factory=list)
    experiments: dict[str, str] = Field(default_factory=dict)  # experiment -> the lead's arm
    deferred: DeferredSend | None = None  # a send held back by quiet hours or a cap
    # Sends that did not go out and need a person: failed (4xx) or unknown (interrupted).
    send_problems: list[str] = Field(default_factory=list)


class DeferredSend(BaseModel):
    step_id: str
    channel: str
    until: datetime
    reason: str


# A send held back because a person paused its sequence (`nurture sequence pause`): its
# message's status reason, and how long it waits before asking again if no resume signal
# wakes it (a resume signals every held lead; this only covers a signal that was lost).
PAUSED_REASON = "sequence paused"
PAUSED_RECHECK = timedelta(hours=1)
# An email held for the lead's confirmation (double opt-in): the confirmation's signal
# wakes it at once; the activity's rechecks only cover a signal that was lost.
CONFIRMATION_WAIT = "waiting for the lead to confirm email consent (double opt-in)"


# --- activity inputs and outputs -------------------------------------------------------


class StartEnrollment(BaseModel):
    lead_id: str
    enrollment_id: str
    workflow_id: str
    sequence_id: str
    sequence_version: int
    segment: str | None = None


class ArmChoice(BaseModel):
    name: str
    weight: float
    holdout: bool = False
    next: str | None = None
    path: str | None = None  # a fingerprint of the steps only this arm takes


class ArmRequest(BaseModel):
    """Put the lead in an arm of an experiment (a split step, or a segment's holdout),
    or find the arm it is in already: a lead keeps its arm."""

    lead_id: str
    experiment: str
    kind: Literal["split", "holdout"]
    enrollment_id: str
    sequence_id: str
    step_id: str | None = None  # a split's; none for a segment's holdout
    segment: str | None = None
    arms: list[ArmChoice]
    control: str
    metric: str
    winner: str | None = None  # the experiment ended: unassigned leads take this arm
    percent: float | None = None  # a segment's holdout: the share held out
    at: datetime  # workflow time: when the lead was assigned


class ArmAssigned(BaseModel):
    experiment: str
    arm: str
    holdout: bool
    assigned_at: datetime | None = None  # None: the experiment had ended (its winner)


class FinishEnrollment(BaseModel):
    enrollment_id: str
    status: str
    reason: str


class SendRequest(BaseModel):
    lead_id: str
    enrollment_id: str
    sequence_id: str
    step_id: str
    visit: int
    channel: str  # email | sms
    template: str
    # Workflow time when the send was due: quiet hours and caps are judged at it.
    due_at: datetime | None = None
    send_window: SendWindow | None = None  # the sequence's own window for this channel
    ignore_frequency_caps: bool = False
    templates: str | None = None  # the enrollment's template version (EnrollRequest)

    @property
    def send_key(self) -> str:
        # Stable across retries and continue-as-new: lead, enrollment, step and visit.
        return f"{self.lead_id}:{self.enrollment_id}:{self.step_id}:{self.visit}"


class SendOutcome(BaseModel):
    message_id: str
    status: str  # sent | skipped | deferred | failed | unknown
    reason: str | None = None
    retry_at: datetime | None = None  # when deferred: the first time it may go out
    provider: str | None = None
    provider_message_id: str | None = None


class ScoreUpdate(BaseModel):
    lead_id: str
    event_id: str
    response_type: str
    old_score: int
    new_score: int
    reason: str
    old_stage: str
    new_stage: str
    stages_entered: list[str] = Field(default_factory=list)
    cycle: int = 1


class ScoreRequest(BaseModel):
    lead_id: str
    event_id: str  # the response's, or decay:<time>, or rescore:<run>
    cause: str  # the response type | decay | rescore
    at: datetime  # workflow time: the moment the card is for
    model_fingerprint: str | None = None
    # Responses handled together with `event_id` (a burst scored once): counted even if
    # their delivery is not committed yet.
    batch_event_ids: list[str] = Field(default_factory=list)


class ScoreResult(BaseModel):
    total: float
    fit: float
    engagement: float
    grade: str
    old_stage: str
    stage: str
    entered: list[str] = Field(default_factory=list)
    recycled: bool = False
    decaying: bool = False  # decay still moves the total
    rescore_in: float | None = None  # seconds until the workflow should score it again
    reasons: list[str] = Field(default_factory=list)  # the top lines of the breakdown
    # The request's `at` when this result was computed: a stored result answering a later
    # request (an event redelivered after the workflow forgot it) is not news.
    requested_at: datetime | None = None
    # The active predictive model's P(won within its horizon), its reasons and its
    # fingerprint; absent when none is active (and in results stored before issue 19).
    predicted: float | None = None
    predicted_reasons: list[str] = Field(default_factory=list)
    predictive_model: str | None = None


class HandoffRequest(BaseModel):
    lead_id: str
    cycle: int
    score: float
    reasons: list[str]


class HandoffResult(BaseModel):
    handoff_id: str
    rep_id: str
    rep_name: str


# --- sales handoff -----------------------------------------------------------------------------

Answer = Literal["accept", "reject", "disqualify"]
# Why sales turns a lead down; a rejection needs one, a disqualification may give one.
REJECT_REASONS = ("not_ready", "wrong_fit", "no_budget", "no_authority", "no_need",
                  "no_timeline", "competitor", "duplicate", "unreachable", "other")  # fmt: skip


class AssignRequest(BaseModel):
    lead_id: str
    cycle: int
    at: datetime  # workflow time: routing (working hours) and the SLA start here


class Assignment(BaseModel):
    handoff_id: str
    rep_id: str
    rep_name: str
    channels: list[str]  # the rep's: email sms webhook; plus crm when configured
    due_at: datetime | None  # the SLA; None: no SLA
    reminders: int  # reminders before reassigning
    status: str = "pending"  # a retried assignment of an answered handoff says so


class NotifyRequest(BaseModel):
    handoff_id: str
    rep_id: str
    channel: str  # email sms webhook crm
    kind: str  # new reminder reassigned_away reassigned_to
    key: str  # unique per handoff: one notification per key
    other_rep_id: str | None = None  # reassignments: the rep it came from or went to


class ReplyForward(BaseModel):
    """Forward a lead's reply to its owner (`notify_owner: true`): once per reply and channel."""

    lead_id: str
    event_id: str  # the reply's response
    sequence_id: str
    sequence_name: str
    effect: str  # what the reply did to the sequence: exit pause continue, or ended before


class SlaLapse(BaseModel):
    handoff_id: str
    at: datetime
    remind: bool  # True: remind the rep; False: reassign to the next rep
    # A manager's reassignment (the `reassign` update) rather than a lapse: to this rep,
    # not the routing's next; numbered in the lead's life, which keys its events.
    to_rep_id: str | None = None
    by: str | None = None
    reassignment: int | None = None


class SlaOutcome(BaseModel):
    status: str  # pending (reminded or reassigned) | the answer if one came meanwhile
    rep_id: str
    previous_rep_id: str | None = None  # set when reassigned
    channels: list[str] = Field(default_factory=list)
    previous_channels: list[str] = Field(default_factory=list)
    due_at: datetime | None = None
    note: str = ""
    # A manager's reassignment: the reminders per rep, to follow the SLA again if the
    # chase had stopped.
    reminders: int | None = None


class ReassignRequest(BaseModel):
    """A manager moves the open handoff to another rep (the console's reassign)."""

    handoff_id: str
    rep_id: str  # the rep it goes to: an active one of sales.yaml
    by: str | None = Field(default=None, max_length=200)  # who moved it


class ReassignResult(BaseModel):
    handoff_id: str
    rep_id: str
    previous_rep_id: str
    due_at: datetime | None  # the new rep's SLA; None: no deadline
    message: str


class HandoffAnswer(BaseModel):
    handoff_id: str
    answer: Answer
    reason: str | None = None
    note: str | None = Field(default=None, max_length=2000)
    by: str | None = Field(default=None, max_length=200)  # who answered: a rep, "cli", "api"
    at: datetime | None = None  # set by the workflow: its clock, not the caller's


class AnswerResult(BaseModel):
    handoff_id: str
    answer: Answer
    stage: str  # the lead's stage after the answer
    message: str
    cool_down_until: datetime | None = None  # a rejection: nurture again from then


class RecycleRequest(BaseModel):
    lead_id: str
    cycle: int  # the new qualification cycle


# An opportunity's news from the CRM reaches the lead's workflow as a response of one of
# these types (sales/outcome_store.py); the workflow moves the lead's stage by it.
OUTCOME_TYPES = {"crm.opportunity_open": "open", "crm.opportunity_won": "won",
                 "crm.opportunity_lost": "lost"}  # fmt: skip


class OutcomeRequest(BaseModel):
    lead_id: str
    event_id: str  # the news's response: its row names the opportunity
    status: Literal["open", "won", "lost"]
    at: datetime  # the workflow's time: a loss's cool-down counts from it


class OutcomeApplied(BaseModel):
    stage: str  # the lead's stage now
    moved: bool  # False: another opportunity keeps the lead where it is (a customer)
    cool_down_until: datetime | None = None  # a loss: nurtured again from then


# --- the CRM sync workflow ---------------------------------------------------------------


class CrmSyncRequest(BaseModel):
    connector: Literal["hubspot"] = "hubspot"
    max_pages: int = Field(default=20, ge=1)  # per activity call; the workflow calls again


class CrmSyncProgress(BaseModel):
    """What a pull read and stored; the workflow adds up its activity calls' figures."""

    pages: int = 0
    deals: int = 0  # records read (a deal read twice counts twice)
    accepted: int = 0  # outcome events stored
    duplicates: int = 0  # events stored before: a repeat pull, the overlap window
    waiting: int = 0  # of the accepted, for an email no lead has yet
    skipped: int = 0  # deals with no contact email: no lead to give them to
    cursor: str | None = None  # the last modified time stored (ISO 8601)
    more: bool = False  # the call stopped at max_pages with pages left

    def add(self, other: CrmSyncProgress) -> CrmSyncProgress:
        counts = ("pages", "deals", "accepted", "duplicates", "waiting", "skipped")
        summed = {name: getattr(self, name) + getattr(other, name) for name in counts}
        return CrmSyncProgress(**summed, cursor=other.cursor or self.cursor, more=other.more)


class HandoffState(BaseModel):
    handoff_id: str
    rep_id: str
    status: str  # pending | accepted | rejected | disqualified
    due_at: datetime | None = None
    reminders_sent: int = 0
    reassignments: int = 0


# --- the workflow's state, which continue-as-new hands on ------------------------------------


class SequencePause(BaseModel):
    """Where a sequence waits on a durable timer: the only place a run may end and the
    next one pick it up."""

    kind: Literal["wait", "wait_for", "deferred"]  # a wait step, a wait_for, a held send
    step_id: str
    until: datetime
    visit: int = 1  # the step's visit (a held send resumes under the same send key)


class RunningEnrollment(BaseModel):
    """The enrollment whose sequence is running, and where it is."""

    enrollment: EnrollRequest
    visits: dict[str, int] = Field(default_factory=dict)  # per step: send keys count them
    # Set while the sequence waits on a timer: a run only continues as new then, and the
    # next run's sequence resumes from it.
    pause: SequencePause | None = None
    # A reply ended it (the sequence's `on_reply: exit`): it stops at once, sending nothing.
    replied: bool = False
    # A goal of the sequence was met: it stops at once, as for a reply, ended with this reason.
    exit_reason: str | None = None
    # A reply paused it (`on_reply: pause`), or an out-of-office named a return date: no
    # send goes out before this time, for this reason.
    reply_hold_until: datetime | None = None
    hold_reason: str | None = None


class MigrateRequest(BaseModel):
    """`nurture migrate-leads`: move a lead's running enrollment to a newer version of its
    sequence, at the step it is waiting in (or the one `step_map` names for it)."""

    sequence: Sequence
    step_map: dict[str, str] = Field(default_factory=dict)  # old step id -> new step id
    templates: str | None = None  # the template version to go on with (today's)


class MigrateResult(BaseModel):
    enrollment_id: str
    from_version: int
    to_version: int
    from_step: str
    to_step: str


class MigrateEnrollment(BaseModel):
    enrollment_id: str
    sequence_version: int


def _keyed(value: Any) -> Any:
    return dict.fromkeys(value) if isinstance(value, list) else value


# How some of the state is held while a run works with it, and how it is handed on:
# Event IDs in arrival order, looked up at once; carried as a list.
EventIds = Annotated[dict[str, None], BeforeValidator(_keyed),
                     PlainSerializer(list, return_type=list[str])]  # fmt: skip
# A set; carried sorted, so the same state is always the same payload.
SortedSet = Annotated[set[str], PlainSerializer(sorted, return_type=list[str])]


class LeadWorkflowState(BaseModel):
    """Everything a lead workflow knows that outlives a run. The workflow holds one and
    works on it; continue-as-new hands it to the next run as it is, which takes it as-is.

    The JSON is the one runs have always handed on: older runs read as well as newer ones.
    """

    runs: int = 0  # runs before this one
    cycle: int = 1  # the qualification cycle: a rejection by sales starts the next
    # Scored already: the latest, as a next run gets them (older ones are recognised by
    # the scoring record).
    seen_event_ids: EventIds = Field(default_factory=dict)
    # What the lead has done, in order, for branch conditions. Carried as counts per type
    # (`response_counts`), so a next run's conditions see them grouped by type.
    response_types: list[str] = Field(
        default_factory=list,
        exclude=True,
        validation_alias=AliasChoices("response_types", "response_counts"),
    )
    events_since_send: SortedSet = Field(default_factory=set)  # what a `wait_for` is satisfied by
    reasons: list[str] = Field(default_factory=list)  # why the lead scores what it does
    enroll_requests: list[EnrollRequest] = Field(default_factory=list)  # waiting their turn
    inbox: list[ResponseEvent] = Field(default_factory=list)  # signalled, not yet handled
    rescore_requests: list[RescoreRequest] = Field(default_factory=list)
    finished_enrollments: SortedSet = Field(default_factory=set)
    enrollment: RunningEnrollment | None = None  # set while its sequence runs
    nurture_stopped: bool = False  # handed to sales: no sends until recycled
    sla_reminders: int | None = None  # the SLA is being followed: reminders per rep
    sla_lapses: int = 0  # numbers the lapse notifications' keys
    reassigned_by_hand: int = 0  # numbers a manager's reassignments' keys
    recycle_cycle: int | None = None  # a recycle waits for the end of the cool-down
    # The sequence that ended last said `notify_owner`: a reply now is forwarded as this
    # says (with its event ID), until another sequence has ended.
    reply_owner: ReplyForward | None = None
    # What the `state` query answers, kept up to date: the score, stage, handoff, ...
    state: LeadState
    # Handed on in the next run's input (LeadInput.continuing), not in this JSON.
    profile: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @field_validator("response_types", mode="before")
    @classmethod
    def _uncounted(cls, value: Any) -> Any:
        if isinstance(value, dict):  # counts per type, as carried
            return [kind for kind, n in value.items() for _ in range(n)]
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def response_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in self.response_types:
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    @field_validator("inbox")
    @classmethod
    def _slim(cls, inbox: list[ResponseEvent]) -> list[ResponseEvent]:
        return [event.slim() for event in inbox]  # without bodies, however old the run

    # Runs kept these beside `state` as well: still written, so a worker of the version
    # before can take a run over; read from `state` (the copies were always the same).
    @computed_field  # type: ignore[prop-decorator]
    @property
    def next_rescore_at(self) -> datetime | None:
        return self.state.next_rescore_at

    @computed_field  # type: ignore[prop-decorator]
    @property
    def handoff(self) -> HandoffState | None:
        return self.state.handoff

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cool_down_until(self) -> datetime | None:
        return self.state.cool_down_until


LeadInput.model_rebuild()  # `enroll` and `carried` refer to models defined below it
