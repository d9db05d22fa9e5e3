"""Inputs and outputs of the lead workflow and its activities.

Single typed objects (pydantic), so fields can be added with defaults without
breaking histories of leads already in flight.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.definitions import SendWindow, Sequence


def lead_workflow_id(lead_id: str) -> str:
    return f"lead-{lead_id}"


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
    # A run continued as new: everything the previous run knew (see LeadCarryOver).
    carried: LeadCarryOver | None = None
    # Continue as new after this many responses (default: the workflow's RESPONSES_PER_RUN).
    responses_per_run: int | None = None


class EnrollRequest(BaseModel):
    enrollment_id: str
    sequence: Sequence
    segment: str | None = None
    profile: dict[str, Any] = Field(default_factory=dict)
    # The template version (channels.template_sets) the lead is sent; none in enrollments
    # made before versions were kept: those render the files as they are.
    templates: str | None = None


# The keys of an event's data that travel with it to its workflow (for leads scored before
# score cards); the rest stays in the database, where the scoring activity reads it.
SIGNALLED_DATA_KEYS = ("step", "url")


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
    deferred: DeferredSend | None = None  # a send held back by quiet hours or a cap
    # Sends that did not go out and need a person: failed (4xx) or unknown (interrupted).
    send_problems: list[str] = Field(default_factory=list)


class DeferredSend(BaseModel):
    step_id: str
    channel: str
    until: datetime
    reason: str


# --- activity inputs and outputs -------------------------------------------------------


class StartEnrollment(BaseModel):
    lead_id: str
    enrollment_id: str
    workflow_id: str
    sequence_id: str
    sequence_version: int
    segment: str | None = None


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


class SlaLapse(BaseModel):
    handoff_id: str
    at: datetime
    remind: bool  # True: remind the rep; False: reassign to the next rep


class SlaOutcome(BaseModel):
    status: str  # pending (reminded or reassigned) | the answer if one came meanwhile
    rep_id: str
    previous_rep_id: str | None = None  # set when reassigned
    channels: list[str] = Field(default_factory=list)
    previous_channels: list[str] = Field(default_factory=list)
    due_at: datetime | None = None
    note: str = ""


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


class HandoffState(BaseModel):
    handoff_id: str
    rep_id: str
    status: str  # pending | accepted | rejected | disqualified
    due_at: datetime | None = None
    reminders_sent: int = 0
    reassignments: int = 0


# --- continue-as-new ---------------------------------------------------------------------------


class SequencePause(BaseModel):
    """Where a sequence waits on a durable timer: the only place a run may end and the
    next one pick it up."""

    kind: Literal["wait", "wait_for", "deferred"]  # a wait step, a wait_for, a held send
    step_id: str
    until: datetime
    visit: int = 1  # the step's visit (a held send resumes under the same send key)


class CarriedEnrollment(BaseModel):
    enrollment: EnrollRequest
    visits: dict[str, int]
    pause: SequencePause


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


class LeadCarryOver(BaseModel):
    """A lead workflow's state, handed to its next run by continue-as-new."""

    runs: int  # runs before this one
    cycle: int
    seen_event_ids: list[str]  # the latest; older ones are recognised by the scoring record
    response_counts: dict[str, int]  # what the lead has done, for branch conditions
    events_since_send: list[str]
    reasons: list[str]
    next_rescore_at: datetime | None = None
    enroll_requests: list[EnrollRequest] = Field(default_factory=list)
    inbox: list[ResponseEvent] = Field(default_factory=list)  # signalled, not yet handled
    rescore_requests: list[RescoreRequest] = Field(default_factory=list)
    finished_enrollments: list[str] = Field(default_factory=list)
    enrollment: CarriedEnrollment | None = None
    nurture_stopped: bool = False
    handoff: HandoffState | None = None
    sla_reminders: int | None = None  # the SLA is being followed: reminders per rep
    sla_lapses: int = 0
    cool_down_until: datetime | None = None
    recycle_cycle: int | None = None  # a recycle waits for the end of the cool-down
    state: LeadState


LeadInput.model_rebuild()  # `enroll` and `carried` refer to models defined below it
