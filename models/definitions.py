"""Typed definitions a marketer writes: sequences, segments, the scoring model, sales reps.

These are the only shapes the rest of Nurture sees; the workflow receives these
validated models (as a snapshot), never raw YAML. Loading lives in
`services/definitions.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from models.contact import known_timezone, normalise_phone

# Every response type Nurture understands. Webhooks and the events API map onto these.
RESPONSE_TYPES: frozenset[str] = frozenset(
    {
        "email.processed",
        "email.delivered",
        "email.deferred",
        "email.dropped",
        "email.open",
        "email.click",
        "email.reply",
        "email.auto_reply",  # an out-of-office or other automatic answer: never a reply
        "email.bounce",
        "email.unsubscribe",
        "email.spamreport",
        "sms.delivered",
        "sms.undelivered",
        "sms.reply",
        "sms.stop",
        "sms.start",
        "page.view",
        "content.download",
        "webinar.registered",
        "webinar.attended",
        "newsletter.signup",
        "trial.started",
        "product.action",
        "form.submitted",
    }
)

CHANNELS = ("email", "sms")
Channel = Literal["email", "sms"]
IDENTIFIER = r"^[a-z][a-z0-9_]*$"

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int) -> int:
    """'90s', '15m', '2h', '3d', '1w' (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '2h', '3d' or '1w'")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"{value!r} is not a duration; use a number and a unit: "
                "'30s', '15m', '2h', '3d' or '1w'"
            )
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    return seconds


class _Definition(BaseModel):
    # Unknown keys are almost always typos ("duraton:"), so they are errors.
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Step(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    next: str | None = Field(
        default=None, description="step to go to afterwards; default: the following step"
    )


class EmailStep(_Step):
    type: Literal["email"]
    template: str


class SmsStep(_Step):
    type: Literal["sms"]
    template: str


class WaitStep(_Step):
    type: Literal["wait"]
    duration: int = Field(description="seconds; written as '3d', '2h', ...")

    _parse = field_validator("duration", mode="before")(parse_duration)


class WaitForStep(_Step):
    """Wait until the lead does something (e.g. clicks), or give up after `timeout`."""

    type: Literal["wait_for"]
    event: str
    timeout: int
    on_event: str | None = None
    on_timeout: str | None = None

    _parse = field_validator("timeout", mode="before")(parse_duration)

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in RESPONSE_TYPES:
            raise ValueError(f"unknown event {value!r}; known: {', '.join(sorted(RESPONSE_TYPES))}")
        return value


class BranchStep(_Step):
    """Go to `then` when the Jinja2 condition `if` holds, else to `else`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["branch"]
    condition: str = Field(alias="if")
    then: str
    otherwise: str | None = Field(default=None, alias="else")


class ExitStep(_Step):
    type: Literal["exit"]
    reason: str = "sequence finished"


# What an experiment is judged on (`metric:`): a lead counts once it does it after being
# assigned; `revenue` is won revenue per lead.
EXPERIMENT_METRICS = ("open", "click", "mql", "sql", "accepted", "opportunity", "won", "revenue")
HOLDOUT_ARM, NURTURED_ARM = "holdout", "nurtured"  # a segment's holdout's two arms


class SplitArm(_Definition):
    """One arm of a split: its share of the leads and the step it goes on at (default:
    the split's `next`, or the following step). A holdout arm is sent nothing more."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    weight: float = Field(default=1, gt=0, description="relative share; any total")
    next: str | None = None
    holdout: bool = False

    @model_validator(mode="after")
    def _holdout_goes_nowhere(self) -> SplitArm:
        if self.holdout and self.next is not None:
            raise ValueError(f"arm {self.name!r} is a holdout: it is sent nothing, so no `next`")
        return self


class SplitStep(_Step):
    """An experiment: each lead goes down one arm, drawn from the experiment's name and the
    lead's ID against the weights, and keeps it. `winner` ends it: leads not yet assigned
    take that arm, leads already assigned keep theirs."""

    type: Literal["split"]
    experiment: Annotated[str, Field(pattern=IDENTIFIER)] | None = Field(
        default=None, description="the experiment's name; default: <sequence>_<step>"
    )
    metric: Literal[EXPERIMENT_METRICS] = Field(  # type: ignore[valid-type]
        default="sql", description="the primary metric, chosen before it starts"
    )
    control: str | None = Field(
        default=None, description="the arm compared against; default: the first"
    )
    winner: str | None = None
    arms: list[SplitArm] = Field(min_length=2)

    @model_validator(mode="after")
    def _arms_named_once(self) -> SplitStep:
        names = [arm.name for arm in self.arms]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _LocatedValueError(("arms", index, "name"), f"arm {name!r} is named twice")
        for field in ("control", "winner"):
            value = getattr(self, field)
            if value is not None and value not in names:
                raise _LocatedValueError(
                    (field,), f"{value!r} is not an arm of this split (arms: {', '.join(names)})"
                )
        return self

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0].name

    def arm(self, name: str) -> SplitArm | None:
        return next((arm for arm in self.arms if arm.name == name), None)


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_GROUPS = {"weekdays": WEEKDAYS[:5], "weekends": WEEKDAYS[5:], "every day": WEEKDAYS}
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class SendWindow(_Definition):
    """When a channel may send, in the lead's own time zone; outside it are quiet hours.

    Written as `always`, or `{days: weekdays, hours: "09:00-20:00"}` (days: `weekdays`,
    `weekends`, `every day`, or a list such as `[mon, wed, fri]`).
    """

    days: tuple[str, ...] = WEEKDAYS
    hours: str = "00:00-24:00"

    @model_validator(mode="before")
    @classmethod
    def _always(cls, value: object) -> object:
        if value == "always":
            return {}
        if isinstance(value, str):
            raise ValueError(f"{value!r}: write `always` or a mapping with `days` and `hours`")
        return value

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            if value not in DAY_GROUPS:
                raise ValueError(
                    f"{value!r} is not a day group; use {', '.join(DAY_GROUPS)} or a list of "
                    f"days ({', '.join(WEEKDAYS)})"
                )
            return DAY_GROUPS[value]
        days = tuple(value) if isinstance(value, list | tuple) else ()
        unknown = [day for day in days if day not in WEEKDAYS]
        if not days or unknown:
            raise ValueError(f"days must be a list of {', '.join(WEEKDAYS)} (got {value!r})")
        return tuple(day for day in WEEKDAYS if day in days)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        match = _HOURS.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a range of hours such as '09:00-20:00'")
        start, end = (int(h) * 60 + int(m) for h, m in (match.group(1, 2), match.group(3, 4)))
        if not 0 <= start < end <= 24 * 60 or int(match.group(2)) > 59 or int(match.group(4)) > 59:
            raise ValueError(
                f"{value!r}: hours must be between 00:00 and 24:00 and end after they start"
            )
        return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"

    @property
    def minutes(self) -> tuple[int, int]:
        """(first minute, end minute) of the window within a day."""
        start, end = self.hours.split("-")
        return tuple(int(part[:2]) * 60 + int(part[3:]) for part in (start, end))  # type: ignore[return-value]

    @property
    def weekdays(self) -> frozenset[int]:
        return frozenset(WEEKDAYS.index(day) for day in self.days)

    @property
    def always(self) -> bool:
        return len(self.days) == 7 and self.hours == "00:00-24:00"

    def describe(self) -> str:
        if self.always:
            return "any time"
        days = next((name for name, group in DAY_GROUPS.items() if group == self.days), None)
        return f"{days or ', '.join(self.days)} {self.hours}"


class FrequencyCap(_Definition):
    """At most `max` messages on a channel per `per` (a duration), across all sequences."""

    max: int = Field(gt=0)
    per: int

    _parse = field_validator("per", mode="before")(parse_duration)

    def describe(self, channel: str) -> str:
        return f"at most {self.max} {channel} per {_duration_text(self.per)}"


def _duration_text(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _default_windows() -> dict[str, SendWindow]:
    return {"email": SendWindow(), "sms": SendWindow(days=DAY_GROUPS["weekdays"],
                                                     hours="09:00-20:00")}  # fmt: skip


def _default_caps() -> dict[str, tuple[FrequencyCap, ...]]:
    return {
        "email": (FrequencyCap(max=1, per=86400), FrequencyCap(max=3, per=604800)),
        "sms": (FrequencyCap(max=1, per=86400), FrequencyCap(max=2, per=604800)),
    }


class DeliveryPolicy(_Definition):
    """`delivery.yaml`: send windows (quiet hours) and frequency caps for every sequence.

    Channels left out keep the defaults: email any time, SMS 09:00-20:00 on weekdays;
    at most 1 email a day and 3 a week, 1 SMS a day and 2 a week.
    """

    send_windows: dict[Channel, SendWindow] = Field(default_factory=_default_windows)
    frequency_caps: dict[Channel, tuple[FrequencyCap, ...]] = Field(default_factory=_default_caps)

    @field_validator("send_windows", mode="after")
    @classmethod
    def _fill_windows(cls, windows: dict[str, SendWindow]) -> dict[str, SendWindow]:
        return _default_windows() | windows

    @field_validator("frequency_caps", mode="after")
    @classmethod
    def _fill_caps(cls, caps: dict[str, tuple]) -> dict[str, tuple]:
        return _default_caps() | caps


# --- consent at intake (docs/consent.md) ----------------------------------------------------


class ChannelDefault(_Definition):
    """What a new lead given no consent on a channel starts with: `default`, except that in
    the `opt_in_countries` (the lead's `country`) it starts opted out."""

    default: Literal["opted_in", "opted_out"]
    opt_in_countries: tuple[str, ...] = ()

    @field_validator("opt_in_countries", mode="before")
    @classmethod
    def _as_countries(cls, value: object) -> object:
        return _countries_as_tuple(value)

    @field_validator("opt_in_countries")
    @classmethod
    def _known_countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _country_codes(value)

    @model_validator(mode="after")
    def _countries_need_opted_in(self) -> ChannelDefault:
        if self.opt_in_countries and self.default == "opted_out":
            raise ValueError("opt_in_countries: only with `default: opted_in` (with "
                             "`opted_out` every lead starts opted out already)")  # fmt: skip
        return self

    def starts_opted_in(self, country: str | None) -> bool:
        return self.default == "opted_in" and (country or "").upper() not in self.opt_in_countries


class ConsentDefaults(_Definition):
    """Email starts opted in (but in the opt-in countries); SMS needs explicit consent."""

    email: ChannelDefault = ChannelDefault(default="opted_in")
    sms: ChannelDefault = ChannelDefault(default="opted_out")


class DoubleOptIn(_Definition):
    """Email consent given at intake is confirmed by the lead first (a link in an email):
    for every lead (`email: true`), the leads of some countries (a list) or none."""

    email: bool | tuple[str, ...] = False
    reminder_after: int = 2 * 86400
    expires_after: int = 7 * 86400

    _durations = field_validator("reminder_after", "expires_after", mode="before")(parse_duration)

    @field_validator("email", mode="before")
    @classmethod
    def _countries(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        if isinstance(value, list | tuple | str):
            return _country_codes(_countries_as_tuple(value))  # type: ignore[arg-type]
        raise ValueError("write true, false or a list of country codes such as [DE, AT]")

    @model_validator(mode="after")
    def _reminder_first(self) -> DoubleOptIn:
        if self.reminder_after >= self.expires_after:
            raise ValueError(
                f"reminder_after ({_duration_text(self.reminder_after)}) must be shorter than "
                f"expires_after ({_duration_text(self.expires_after)}): the reminder goes "
                "while the link still works"
            )
        return self

    def applies(self, country: str | None) -> bool:
        if isinstance(self.email, bool):
            return self.email
        return (country or "").upper() in self.email


class ConsentPolicy(_Definition):
    """`delivery.yaml`'s `consent:`: what new leads start with, double opt-in for email, and
    the answer to an SMS `HELP` (none: a short text naming the sender and STOP/START)."""

    defaults: ConsentDefaults = ConsentDefaults()
    double_opt_in: DoubleOptIn = DoubleOptIn()
    sms_help: str | None = Field(default=None, min_length=1, max_length=480)

    @field_validator("sms_help")
    @classmethod
    def _mentions_stop(cls, value: str | None) -> str | None:
        if value is not None and "STOP" not in value.upper():
            raise ValueError("the help text must tell how to opt out (mention STOP)")
        return " ".join(value.split()) if value else value


class DeliveryFile(DeliveryPolicy):
    """The whole of `delivery.yaml`: the send-time policy and, under `consent:`, the intake's
    consent policy (kept apart in the definitions: `Definitions.delivery` and `.consent`)."""

    consent: ConsentPolicy = ConsentPolicy()

    def policies(self) -> tuple[DeliveryPolicy, ConsentPolicy]:
        delivery = DeliveryPolicy(send_windows=self.send_windows,
                                  frequency_caps=self.frequency_caps)  # fmt: skip
        return delivery, self.consent


Step = Annotated[
    EmailStep | SmsStep | WaitStep | WaitForStep | BranchStep | SplitStep | ExitStep,
    Field(discriminator="type"),
]

# How an enrollment ended by a goal is recorded (`enrollments.exit_reason`, 200 characters):
# reports count the enrollments whose reason starts so.
GOAL_REASON_PREFIX = "goal "


class Goal(_Definition):
    """What the sequence is for (a demo booked, a trial started): a Jinja2 condition on the
    lead, as a branch's `if`, checked after every scoring; once it holds the sequence ends."""

    id: Annotated[str, Field(pattern=IDENTIFIER)]
    when: str
    description: str = ""

    def exit_reason(self) -> str:
        return f"{GOAL_REASON_PREFIX}{self.id} met: {self.description or self.when}"[:200]


class Sequence(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    name: str
    version: int = 1
    description: str = ""
    # Per-channel overrides of delivery.yaml's send windows, for this sequence's sends.
    send_windows: dict[Channel, SendWindow] = Field(default_factory=dict)
    # Sends of this sequence are neither held back by frequency caps nor counted by them
    # (e.g. the seconds-long demo); all other sequences' caps still apply.
    ignore_frequency_caps: bool = False
    # What an email or SMS reply does to a lead in this sequence: `exit` ends the sequence
    # at once (nothing more is sent), `pause` holds its sends for `reply_pause` from the
    # last reply (waits go on), `continue` goes on. Automatic replies never count.
    on_reply: Literal["exit", "pause", "continue"] = "exit"
    # A person's reply is also forwarded to the lead's owner (its rep, else its company's
    # owner) on their channels, with the lead's summary (docs/definitions.md).
    notify_owner: bool = False
    reply_pause: int = Field(7 * 86400, gt=0, description="seconds; written as '7d', '48h'")
    # An out-of-office naming the day its sender is back: `defer` holds the sequence's sends
    # until then (waits go on), `ignore` sends as planned.
    on_out_of_office: Literal["defer", "ignore"] = "defer"
    # Met after a response or a rescore (or already at enrollment), a goal ends the sequence.
    goals: list[Goal] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)

    _parse_reply_pause = field_validator("reply_pause", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _goal_ids_unique(self) -> Sequence:
        seen: set[str] = set()
        for index, goal in enumerate(self.goals):
            if goal.id in seen:
                raise _LocatedValueError(("goals", index, "id"), f"duplicate goal id {goal.id!r}")
            seen.add(goal.id)
        return self

    @model_validator(mode="after")
    def _targets_exist(self) -> Sequence:
        ids = [step.id for step in self.steps]
        seen: set[str] = set()
        for index, step_id in enumerate(ids):
            if step_id in seen:
                raise _LocatedValueError(("steps", index, "id"), f"duplicate step id {step_id!r}")
            seen.add(step_id)
        for index, step in enumerate(self.steps):
            for field, target in self.step_targets(step).items():
                if target is not None and target not in seen:
                    where = (int(part) if part.isdigit() else part for part in field.split("."))
                    raise _LocatedValueError(
                        ("steps", index, *where),
                        f"step {step.id!r} goes to {target!r}, which is not a step of this "
                        f"sequence (steps: {', '.join(ids)})",
                    )
        return self

    def experiment_of(self, step: SplitStep) -> str:
        """The name a split step's experiment goes by."""
        return step.experiment or f"{self.id}_{step.id}"

    def splits(self) -> list[SplitStep]:
        return [step for step in self.steps if isinstance(step, SplitStep)]

    def arm_paths(self, split: SplitStep) -> dict[str, str]:
        """Per arm, a fingerprint of the steps only that arm reaches (until the arms meet
        again): what `validate` compares to tell that an arm changed while running."""
        reach = {arm.name: self._reachable(self.after(split.id, arm.name), split.id)
                 for arm in split.arms}  # fmt: skip
        paths = {}
        for arm in split.arms:
            others = set().union(*(steps for name, steps in reach.items() if name != arm.name))
            own = [step.model_dump(mode="json", by_alias=True)
                   for step in self.steps if step.id in reach[arm.name] - others]  # fmt: skip
            text = json.dumps(own, sort_keys=True)
            paths[arm.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return paths

    def _reachable(self, start: str | None, stop: str) -> set[str]:
        found: set[str] = set()
        frontier = [start] if start is not None else []
        while frontier:
            step_id = frontier.pop()
            if step_id in found or step_id == stop:
                continue
            found.add(step_id)
            frontier += self.successors(step_id)
        return found

    @staticmethod
    def step_targets(step: Step) -> dict[str, str | None]:
        targets: dict[str, str | None] = {"next": step.next}
        if isinstance(step, WaitForStep):
            targets |= {"on_event": step.on_event, "on_timeout": step.on_timeout}
        if isinstance(step, BranchStep):
            targets |= {"if": step.then, "else": step.otherwise}
        if isinstance(step, SplitStep):
            targets |= {f"arms.{i}.next": arm.next for i, arm in enumerate(step.arms)}
        return targets

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def following(self, step_id: str) -> str | None:
        """The step after `step_id` in file order, or None at the end."""
        ids = [step.id for step in self.steps]
        index = ids.index(step_id)
        return ids[index + 1] if index + 1 < len(ids) else None

    def after(self, step_id: str, outcome: str = "done") -> str | None:
        """The step that follows `step_id` given its outcome; None ends the sequence.

        Outcomes: "done" (sends, waits), "event" / "timeout" (wait_for),
        "then" / "else" (branch), an arm's name (split; a holdout arm ends the
        sequence). An outcome with no target of its own goes to `next`, or else to
        the following step in the file.
        """
        step = self.step(step_id)
        if step.type == "exit":
            return None
        if isinstance(step, SplitStep):
            arm = step.arm(outcome) or step.arm(step.control_arm)
            if arm.holdout:
                return None
            return arm.next or step.next or self.following(step_id)
        default = step.next or self.following(step_id)
        if isinstance(step, WaitForStep):
            target = step.on_event if outcome == "event" else step.on_timeout
            return target or default
        if isinstance(step, BranchStep):
            return step.then if outcome == "then" else (step.otherwise or default)
        return default

    def successors(self, step_id: str) -> set[str]:
        """Every step that can directly follow `step_id`."""
        outcomes = {"wait_for": ("event", "timeout"), "branch": ("then", "else")}
        step = self.step(step_id)
        if isinstance(step, SplitStep):
            outcomes["split"] = tuple(arm.name for arm in step.arms)
        return {
            target
            for outcome in outcomes.get(step.type, ("done",))
            if (target := self.after(step_id, outcome)) is not None
        }

    def templates(self) -> list[tuple[str, str, str]]:
        """(step id, channel, template name) of every send step."""
        return [
            (step.id, step.type, step.template)
            for step in self.steps
            if isinstance(step, EmailStep | SmsStep)
        ]


class _LocatedValueError(ValueError):
    """A model-level error that knows which field it is about (mapped by the loader)."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        self.loc = loc
        super().__init__(message)


_HOLDOUT = Field(
    default=0, ge=0, lt=100, description="percent of the segment's leads never nurtured"
)


class Segment(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    description: str = ""
    when: str = Field(description="Jinja2 expression over `lead`")
    sequence: str
    scoring_model: str | None = Field(default=None, description="default: default_model")
    holdout: float = _HOLDOUT


class DefaultSegment(_Definition):
    id: Annotated[str, Field(pattern=IDENTIFIER)]
    description: str = ""
    sequence: str
    scoring_model: str | None = None
    holdout: float = _HOLDOUT


def holdout_experiment(segment: str) -> str:
    """The name of a segment's holdout as an experiment (never a split's: no colon there)."""
    return f"holdout:{segment}"


class Segments(_Definition):
    segments: list[Segment]
    default: DefaultSegment


# --- Sales: reps, pools, routing, SLA, CRM webhook, recycling (sales.yaml) -------------

NOTIFY_CHANNELS = ("email", "sms", "webhook")
NotifyChannel = Literal["email", "sms", "webhook"]
EVERYONE = "everyone"  # the pool of every rep, unless sales.yaml defines its own
_ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
# ISO 3166 alpha-2 codes phonenumbers does not list (no phone numbering plan of their own).
_EXTRA_COUNTRIES = frozenset({"AQ", "BV", "GS", "HM", "PN", "TF", "UM"})
REP_PHONE_HINT = " (write it with +country code)"  # a rep has no country to read it in


def _as_tuple(value: object) -> object:
    """`segment: saas_trial` reads as `segment: [saas_trial]`; None as empty."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return value


def _countries_as_tuple(value: object) -> object:
    """Like `_as_tuple`, and Norway stays Norway: YAML reads a bare NO as false."""
    value = _as_tuple(value)
    if isinstance(value, list | tuple):
        return tuple("NO" if item is False else item for item in value)
    return value


def _country_codes(codes: tuple[str, ...]) -> tuple[str, ...]:
    known = phonenumbers.SUPPORTED_REGIONS | _EXTRA_COUNTRIES
    result = []
    for code in codes:
        upper = code.strip().upper()
        if upper not in known:
            hint = " (the United Kingdom is GB)" if upper == "UK" else ""
            raise ValueError(f"{code!r} is not an ISO 3166 country code such as US or DE{hint}")
        result.append(upper)
    return tuple(dict.fromkeys(result))


def country_code(value: str) -> str:
    """A lead's country as an ISO 3166 alpha-2 code (upper case), or ValueError."""
    return _country_codes((value,))[0]


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL such as https://hooks.example.com/x")
    return value.strip()


def _working_days() -> SendWindow:
    return SendWindow(days=DAY_GROUPS["weekdays"], hours="09:00-17:00")


class SalesRep(_Definition):
    """A sales rep: who they are, how to reach them, which leads they take and when."""

    id: Annotated[str, Field(pattern=IDENTIFIER)]
    name: str
    email: EmailStr
    phone: str | None = Field(default=None, description="E.164; written with +country code")
    webhook_url: str | None = Field(
        default=None, description="Slack-compatible incoming webhook for this rep's alerts"
    )
    territories: tuple[str, ...] = Field(default=(), description="ISO countries; empty: any")
    segments: tuple[str, ...] = Field(default=(), description="segment ids; empty: any")
    timezone: str = "UTC"
    working_hours: SendWindow = Field(default_factory=_working_days)
    capacity: int = Field(default=20, ge=1, description="open handoffs at once")
    active: bool = True
    sla: int | None = Field(default=None, description="seconds of working time; default: team's")
    notify: tuple[NotifyChannel, ...] = Field(
        default=(), description="default: every channel the rep has contact details for"
    )

    _as_tuples = field_validator("segments", "notify", mode="before")(_as_tuple)
    _countries = field_validator("territories", mode="before")(_countries_as_tuple)

    @field_validator("phone")
    @classmethod
    def _phone_in_e164(cls, value: str | None) -> str | None:
        return None if value is None else normalise_phone(value, hint=REP_PHONE_HINT)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("territories")
    @classmethod
    def _territories(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _country_codes(value)

    @field_validator("segments")
    @classmethod
    def _segment_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for segment in value:
            if not re.match(IDENTIFIER, segment):
                raise ValueError(f"{segment!r} is not a segment id (see segments.yaml)")
        return tuple(dict.fromkeys(value))

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return known_timezone(value, example="Europe/Berlin")

    @field_validator("sla", mode="before")
    @classmethod
    def _sla(cls, value: object) -> object:
        return None if value is None else parse_duration(value)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _notify_reachable(self) -> SalesRep:
        reachable = {"email": True, "sms": bool(self.phone), "webhook": bool(self.webhook_url)}
        if not self.notify:
            channels = tuple(c for c in NOTIFY_CHANNELS if reachable[c])
            object.__setattr__(self, "notify", channels)
            return self
        for index, channel in enumerate(self.notify):
            if not reachable[channel]:
                needs = "phone" if channel == "sms" else "webhook_url"
                raise _LocatedValueError(
                    ("notify", index), f"notify by {channel} needs the rep's {needs}"
                )
        object.__setattr__(self, "notify", tuple(dict.fromkeys(self.notify)))
        return self

    def covers(self, lead: dict) -> bool:
        """Whether the lead is in this rep's territories and segments (unknown: yes)."""
        country = (lead.get("country") or "").upper()
        segment = lead.get("segment")
        if self.territories and country and country not in self.territories:
            return False
        return not (self.segments and segment and segment not in self.segments)


class RoutingRule(_Definition):
    """Leads matching every field given go to `pool` (no field: every lead). First match wins."""

    pool: Annotated[str, Field(pattern=IDENTIFIER)]
    segment: tuple[str, ...] = Field(default=(), description="the lead's segment is one of")
    country: tuple[str, ...] = Field(default=(), description="the lead's country is one of")
    company_size_at_least: int | None = Field(default=None, ge=0)
    company_size_below: int | None = Field(default=None, gt=0)
    when: str | None = Field(default=None, description="Jinja2 expression over `lead`")

    _as_tuples = field_validator("segment", mode="before")(_as_tuple)
    _countries_before = field_validator("country", mode="before")(_countries_as_tuple)

    @field_validator("country")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _country_codes(value)

    @model_validator(mode="after")
    def _sizes(self) -> RoutingRule:
        low, high = self.company_size_at_least, self.company_size_below
        if low is not None and high is not None and low >= high:
            raise _LocatedValueError(
                ("company_size_below",),
                f"no company size is at least {low} and below {high}",
            )
        return self

    @property
    def matches_everyone(self) -> bool:
        return not (
            self.segment
            or self.country
            or self.company_size_at_least is not None
            or self.company_size_below is not None
            or self.when
        )

    def matches(self, lead: dict) -> bool:
        """Whether the lead matches; a failing `when` raises ConditionError."""
        if self.segment and lead.get("segment") not in self.segment:
            return False
        if self.country and (lead.get("country") or "").upper() not in self.country:
            return False
        size = lead.get("company_size")
        if self.company_size_at_least is not None and (
            size is None or size < self.company_size_at_least
        ):
            return False
        below = self.company_size_below
        if below is not None and (size is None or size >= below):
            return False
        if self.when:
            from models.jinja import evaluate_condition

            return evaluate_condition(self.when, {"lead": lead})
        return True

    def describe(self) -> str:
        parts = []
        if self.segment:
            parts.append(f"segment in {', '.join(self.segment)}")
        if self.country:
            parts.append(f"country in {', '.join(self.country)}")
        if self.company_size_at_least is not None:
            parts.append(f"company_size >= {self.company_size_at_least}")
        if self.company_size_below is not None:
            parts.append(f"company_size < {self.company_size_below}")
        if self.when:
            parts.append(f"when {self.when}")
        return " and ".join(parts) or "every lead"


class SlaPolicy(_Definition):
    """A rep must answer a handoff within `answer_within` of their working time; they are
    reminded `reminders` times, then the lead is reassigned."""

    answer_within: int = Field(default=900, description="seconds of working time; '15m'")
    reminders: int = Field(default=1, ge=0)

    _parse = field_validator("answer_within", mode="before")(parse_duration)


class CrmWebhook(_Definition):
    """Where handoffs are POSTed, signed with HMAC; the secret lives in an env var only."""

    url: str
    secret_env: Annotated[str, Field(pattern=_ENV_NAME)] = "NURTURE_CRM_WEBHOOK_SECRET"

    _url = field_validator("url")(_http_url)

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, value: object) -> object:
        if isinstance(value, dict) and "secret" in value:
            raise _LocatedValueError(
                ("secret",),
                "never write the secret in the file: put it in the environment variable "
                "named by `secret_env` (default NURTURE_CRM_WEBHOOK_SECRET)",
            )
        return value


class RecyclePolicy(_Definition):
    """What happens to a lead sales rejects: back into `sequence` (none: no sequence), and
    no new handoff before `cool_down` has passed."""

    sequence: str | None = None
    cool_down: int = Field(default=30 * 86400, description="seconds; written as '30d'")

    _parse = field_validator("cool_down", mode="before")(parse_duration)


class SalesTeam(_Definition):
    """`sales.yaml`: the reps, their pools, how leads are routed to them, the SLA."""

    reps: list[SalesRep] = Field(min_length=1)
    pools: dict[
        Annotated[str, Field(pattern=IDENTIFIER)],
        Annotated[tuple[str, ...], Field(min_length=1)],
    ] = Field(default_factory=dict, description=f"pool id -> rep ids; `{EVERYONE}`: all reps")
    routing: list[RoutingRule] = Field(default_factory=list)
    fallback_pool: str | None = Field(default=None, description="default: every rep")
    sla: SlaPolicy = Field(default_factory=SlaPolicy)
    crm_webhook: CrmWebhook | None = None
    recycle: RecyclePolicy = Field(default_factory=RecyclePolicy)

    def rep(self, rep_id: str) -> SalesRep:
        for rep in self.reps:
            if rep.id == rep_id:
                return rep
        raise KeyError(rep_id)

    @property
    def pool_ids(self) -> list[str]:
        """Every pool, with the implicit `everyone` when the file does not define it."""
        return [*self.pools, *([] if EVERYONE in self.pools else [EVERYONE])]

    def pool_members(self, pool_id: str) -> list[SalesRep]:
        """The reps of a pool in file order (ids that are not reps are left out)."""
        if pool_id == EVERYONE and EVERYONE not in self.pools:
            return list(self.reps)
        ids = self.pools[pool_id]
        return [rep for rep in self.reps if rep.id in ids]

    @property
    def fallback_name(self) -> str:
        if self.fallback_pool:
            return self.fallback_pool
        return "all reps" if EVERYONE in self.pools else EVERYONE

    def fallback_members(self) -> list[SalesRep]:
        return self.pool_members(self.fallback_pool) if self.fallback_pool else list(self.reps)

    def sla_seconds(self, rep_id: str) -> int:
        """Working seconds the rep has to answer a handoff (their own `sla`, else the team's)."""
        own = self.rep(rep_id).sla
        return own if own is not None else self.sla.answer_within
