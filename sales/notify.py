"""What a rep is told about a handoff, rendered for each channel: email, SMS, Slack, CRM.

Pure functions, no I/O: a `HandoffNotice` (built by the handoff activity from the
handoff row, the rep, the lead's profile, its score card and recent events) goes
in, a message comes out. Sending is someone else's job (channels/, sales/outbound_webhooks.py).

Who is who in a notice: `rep` is the rep the notice is for (their email, phone and
webhook are used); `previous_rep` is the other rep of a reassignment. `owner(notice)`
and `previous_owner(notice)` say who has the lead now and who had it before.

Kinds:
    new              a lead just crossed SQL and is yours: accept or reject it
    reminder         you have not answered yet; the SLA lapses at `due_at`
    reassigned_to    a lead passed to you; `previous_rep` had it (did not answer, or rejected it)
    reassigned_away  the lead you had is now with `previous_rep`: nothing to do
    answered         `rep` answered the handoff (`answer`: accepted, rejected or disqualified)

Set `created_at` to the time the notice is made (a reminder's, not the handoff's):
deadlines read "answer within N min" counting from it, and it is the CRM's `occurred_at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

from models.jinja import template_environment

Kind = Literal["new", "reminder", "reassigned_away", "reassigned_to", "answered"]
Answer = Literal["accepted", "rejected", "disqualified"]
KINDS: tuple[str, ...] = get_args(Kind)

# The CRM event per kind: both sides of a reassignment are one kind of event.
EVENTS: dict[str, str] = {
    "new": "handoff.created",
    "reminder": "handoff.reminder",
    "reassigned_to": "handoff.reassigned",
    "reassigned_away": "handoff.reassigned",
    "answered": "handoff.answered",
}
CRM_PAYLOAD_VERSION = 1

LEAD_FIELDS = (
    "id", "email", "first_name", "last_name", "phone", "title", "company", "company_size",
    "industry", "country", "segment", "timezone", "attributes",
)  # fmt: skip
SCORE_FIELDS = ("total", "fit", "engagement", "grade", "stage", "model")
REP_FIELDS = ("id", "name", "email", "phone", "timezone")  # never webhook_url: it is a secret
LINK_NAMES = ("page", "accept", "reject", "disqualify")

MAX_TIMELINE = 10
MAX_REASONS = 8  # email and CRM; Slack shows 5, SMS 1
SMS_MAX_SEGMENTS = 2
# Within this, a deadline reads "within 12 min"; beyond it, "by Tue 4 Jun 09:15 CEST".
_RELATIVE_DEADLINE = timedelta(minutes=90)


@dataclass(frozen=True)
class TimelineItem:
    at: datetime
    type: str  # e.g. "page.view"
    detail: str  # e.g. "url=/pricing"


@dataclass(frozen=True)
class HandoffNotice:
    handoff_id: str
    kind: Kind
    rep: dict[str, Any]  # the recipient: id, name, email, phone, webhook_url (opt.: timezone)
    lead: dict[str, Any]  # the profile (Lead.profile())
    score: dict[str, Any]  # total, fit, engagement, grade, stage, model
    reasons: list[str]  # most important first
    timeline: list[TimelineItem]  # recent engagement, newest first
    links: dict[str, str]  # page, accept, reject, disqualify: signed URLs
    due_at: datetime | None  # when the SLA lapses
    previous_rep: dict[str, Any] | None = None  # reassignments: the other rep (see above)
    created_at: datetime | None = None  # when this notice was made (deadlines count from it)
    answer: Answer | None = None  # answered: what `rep` answered
    note: str | None = None  # optional one line of context ("Maya did not answer in 15 min")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown notice kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind in ("reassigned_to", "reassigned_away") and not self.previous_rep:
            raise ValueError(f"a {self.kind} notice needs previous_rep")
        if self.kind == "answered" and self.answer not in get_args(Answer):
            raise ValueError("an answered notice needs answer: accepted, rejected or disqualified")

    @property
    def recipient(self) -> dict[str, Any]:
        """The rep this notice is for (whose email, phone and webhook to use): `rep`."""
        return self.rep


def owner(notice: HandoffNotice) -> dict[str, Any]:
    """The rep the lead is assigned to now."""
    if notice.kind == "reassigned_away":
        assert notice.previous_rep is not None
        return notice.previous_rep
    return notice.rep


def previous_owner(notice: HandoffNotice) -> dict[str, Any] | None:
    """Who had the lead before a reassignment (None otherwise)."""
    if notice.kind == "reassigned_away":
        return notice.rep
    if notice.kind == "reassigned_to":
        return notice.previous_rep
    return None


# --- shared formatting ----------------------------------------------------------------


def lead_name(lead: dict[str, Any]) -> str:
    """'Ada Lovelace', else the email address, else 'Unnamed lead'."""
    name = " ".join(str(lead.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
    return " ".join(name.split()) or str(lead.get("email") or "").strip() or "Unnamed lead"


def format_number(value: Any) -> str | None:
    """92.0 -> '92', 10.55 -> '10.6', None -> None."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isfinite(number) and number == round(number):
        return str(int(round(number)))
    return f"{number:.1f}"


def score_label(score: dict[str, Any]) -> str:
    """'92 A' (or '92' without a grade)."""
    parts = [format_number(score.get("total")), score.get("grade")]
    return " ".join(str(p) for p in parts if p not in (None, "")) or "unscored"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """UTC, to the second, with a Z: '2024-06-04T14:05:00Z'."""
    if moment is None:
        return None
    return _aware(moment).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _zone(rep: dict[str, Any]) -> tzinfo:
    try:
        return ZoneInfo(rep["timezone"]) if rep.get("timezone") else UTC
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        return UTC


def _clock(moment: datetime, zone: tzinfo, reference: datetime | None) -> str:
    """'14:05 UTC' on the reference's day, else 'Tue 4 Jun 09:15 CEST'."""
    local = _aware(moment).astimezone(zone)
    label = f"{local:%H:%M} {local.tzname() or 'UTC'}"
    if reference is not None and _aware(reference).astimezone(zone).date() == local.date():
        return label
    return f"{local:%a} {local.day} {local:%b} {label}"


@dataclass(frozen=True)
class Deadline:
    at: str | None  # '14:05 UTC'
    phrase: str  # 'answer within 15 min', 'answer by Tue 4 Jun 09:15 CEST', 'overdue since ...'
    overdue: bool


def deadline(notice: HandoffNotice) -> Deadline:
    """The SLA as the recipient reads it, in their time zone (UTC if unknown)."""
    if notice.due_at is None:
        return Deadline(at=None, phrase="", overdue=False)
    zone = _zone(notice.recipient)
    at = _clock(notice.due_at, zone, notice.created_at)
    if notice.created_at is None:
        return Deadline(at=at, phrase=f"answer by {at}", overdue=False)
    left = _aware(notice.due_at) - _aware(notice.created_at)
    if left <= timedelta(0):
        return Deadline(at=at, phrase=f"overdue since {at}", overdue=True)
    if left <= _RELATIVE_DEADLINE:
        minutes = max(1, math.ceil(left.total_seconds() / 60))
        return Deadline(at=at, phrase=f"answer within {minutes} min", overdue=False)
    return Deadline(at=at, phrase=f"answer by {at}", overdue=False)


def _due_line(due: Deadline) -> str | None:
    """'Answer within 15 min (by 14:05 UTC).' for the email."""
    if not due.phrase:
        return None
    line = due.phrase[0].upper() + due.phrase[1:]
    return f"{line} (by {due.at})." if "within" in due.phrase else f"{line}."


def _rep(rep: dict[str, Any] | None) -> dict[str, Any] | None:
    if rep is None:
        return None
    data = {key: rep.get(key) for key in REP_FIELDS}
    data["name"] = str(rep.get("name") or rep.get("id") or "a colleague")
    data["first_name"] = data["name"].split()[0]
    return data


def _lead(lead: dict[str, Any]) -> dict[str, Any]:
    data = {key: lead.get(key) for key in LEAD_FIELDS}
    data["attributes"] = dict(lead.get("attributes") or {})
    data["name"] = lead_name(lead)
    return data


def _score(score: dict[str, Any]) -> dict[str, Any]:
    data = {key: score.get(key) for key in SCORE_FIELDS}
    data["label"] = score_label(score)
    for key in ("total", "fit", "engagement"):
        data[f"{key}_label"] = format_number(score.get(key))
    return data


def _links(links: dict[str, str]) -> dict[str, str | None]:
    return {name: links.get(name) or None for name in LINK_NAMES}


def _timeline(notice: HandoffNotice) -> list[TimelineItem]:
    items = sorted(notice.timeline, key=lambda item: _aware(item.at), reverse=True)
    return items[:MAX_TIMELINE]


def _reasons(notice: HandoffNotice, limit: int = MAX_REASONS) -> list[str]:
    return [" ".join(str(r).split()) for r in notice.reasons if str(r).strip()][:limit]


def _attributes(attributes: dict[str, Any], limit: int = 8) -> list[tuple[str, str]]:
    """Scalar custom attributes worth a row in the profile table."""
    rows = []
    for key, value in sorted(attributes.items()):
        if isinstance(value, str | int | float | bool) and value != "":
            rows.append((str(key).replace("_", " "), str(value)))
    return rows[:limit]


def context(notice: HandoffNotice) -> dict[str, Any]:
    """What the templates see. Every name is always defined (templates are strict)."""
    zone = _zone(notice.recipient)
    reference = notice.created_at
    lead = _lead(notice.lead)
    due = deadline(notice)
    return {
        "kind": notice.kind,
        "handoff_id": notice.handoff_id,
        "lead": lead,
        "name": lead["name"],
        "attributes": _attributes(lead["attributes"]),
        "score": _score(notice.score),
        "reasons": _reasons(notice),
        "timeline": [
            {"at": _clock(item.at, zone, reference), "type": item.type, "detail": item.detail}
            for item in _timeline(notice)
        ],
        "links": _links(notice.links),
        "due": due,
        "due_line": _due_line(due),
        "rep": _rep(notice.rep),
        "previous_rep": _rep(notice.previous_rep),
        "recipient": _rep(notice.recipient),
        "owner": _rep(owner(notice)),
        "previous_owner": _rep(previous_owner(notice)),
        "answer": notice.answer,
        "note": " ".join((notice.note or "").split()) or None,
        "actionable": notice.kind in ("new", "reminder", "reassigned_to"),
    }


# --- email ------------------------------------------------------------------------------


def render_email(notice: HandoffNotice, templates_dir: Path) -> tuple[str, str, str]:
    """(subject, html, text) from templates/sales/notice{_subject.txt,.html,.txt}."""
    return render_parts(templates_dir, "notice", context(notice))


def render_parts(templates_dir: Path, name: str, data: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, html, text) of a rep's email from templates/sales/<name>{_subject.txt,
    .html,.txt}: the subject on one line, the text ending in one newline."""
    env = template_environment(str(templates_dir))
    subject = env.get_template(f"sales/{name}_subject.txt").render(data)
    html = env.get_template(f"sales/{name}.html").render(data)
    text = env.get_template(f"sales/{name}.txt").render(data)
    return " ".join(subject.split()), html, text.strip() + "\n"


# --- SMS --------------------------------------------------------------------------------

# GSM 03.38: the basic set costs one septet a character, the extension set two.
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")


def sms_segments(body: str) -> int:
    """How many SMS segments `body` takes: GSM-7 (160, or 153 a part) or UCS-2 (70/67)."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in body):
        units = sum(2 if c in _GSM_EXTENDED else 1 for c in body)
        return 1 if units <= 160 else math.ceil(units / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(0, limit - 3)].rstrip() + "..."


def render_sms(notice: HandoffNotice) -> str:
    """Who, score and grade, the top reason, the deadline and the answer page link.

    Shortened until it fits two segments (the link is never cut): the title goes
    first, then the reason is clipped, then dropped, then names are clipped.
    """
    lead, score = _lead(notice.lead), score_label(notice.score)
    reasons = _reasons(notice, 1)
    due = deadline(notice)
    link = notice.links.get("page") or notice.links.get("accept") or ""
    other = _rep(previous_owner(notice))
    current = _rep(owner(notice))
    assert current is not None

    def compose(title: bool, reason_limit: int | None, name_limit: int) -> str:
        name = _clip(lead["name"], name_limit)
        about = [_clip(str(lead["title"]), name_limit)] if title and lead["title"] else []
        about += [_clip(str(lead["company"]), name_limit)] if lead["company"] else []
        who = f"{name} ({', '.join(about)}) {score}" if about else f"{name} {score}"
        top = f" Top: {_clip(reasons[0], reason_limit)}." if reasons and reason_limit else ""
        action = due.phrase[0].upper() + due.phrase[1:] if due.phrase else "Answer"
        action = f" {action}: {link}" if link else f" {action}."
        if notice.kind == "new":
            return f"New lead: {who}.{top}{action}"
        if notice.kind == "reminder":
            return f"Reminder: {who} is waiting.{action}"
        if notice.kind == "reassigned_to":
            assert other is not None
            return f"Passed to you from {other['name']}: {who}.{top}{action}"
        if notice.kind == "reassigned_away":
            return f"{who} was reassigned to {current['name']}. No action needed."
        return f"{who}: {notice.answer} by {current['name']}."

    attempts = [(True, 80, 60), (False, 80, 60), (False, 40, 40), (False, None, 40)]
    attempts.append((False, None, 20))
    body = ""
    for title, reason_limit, name_limit in attempts:
        body = compose(title, reason_limit, name_limit)
        if sms_segments(body) <= SMS_MAX_SEGMENTS:
            break
    return body


# --- Slack ------------------------------------------------------------------------------


def _mrkdwn(text: Any) -> str:
    """Escape what Slack's mrkdwn treats as markup (<!channel>, <url|label>)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, limit) or " ", "emoji": True}


def _md(text: str, limit: int = 3000) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text if len(text) <= limit else text[: limit - 1] + "…"}


def _slack_date(moment: datetime, fallback: str) -> str:
    """Shown in each reader's own time zone by Slack."""
    stamp = int(_aware(moment).timestamp())
    return f"<!date^{stamp}^{{date_short_pretty}} {{time}}|{_mrkdwn(fallback)}>"


def headline(notice: HandoffNotice) -> str:
    """The one-line summary: the email subject without the template (Slack, logs)."""
    data = context(notice)
    lead, score = data["lead"], data["score"]["label"]
    about = f"{lead['company']}, {score}" if lead["company"] else score
    who = f"{lead['name']} ({about})"
    due = f" — {data['due'].phrase}" if data["due"].phrase else ""
    if notice.kind == "new":
        return f"Hot lead: {who}{due}"
    if notice.kind == "reminder":
        return f"Reminder: {who} is waiting{due}"
    if notice.kind == "reassigned_to":
        return f"Reassigned to you: {who} from {data['previous_owner']['name']}{due}"
    if notice.kind == "reassigned_away":
        return f"Reassigned: {who} is now with {data['owner']['name']}"
    return f"{str(notice.answer).capitalize()}: {who} by {data['owner']['name']}"


def slack_payload(notice: HandoffNotice) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (notification fallback) and Block Kit blocks."""
    data = context(notice)
    lead, score, links, due = data["lead"], data["score"], data["links"], data["due"]
    title = headline(notice)

    who = f"*{_mrkdwn(lead['name'])}*"
    if links["page"]:
        who = f"*<{links['page']}|{_mrkdwn(lead['name'])}>*"
    contact = [_mrkdwn(v) for v in (lead["email"], lead["phone"]) if v]
    intro = [who + (f" · {' · '.join(contact)}" if contact else "")]
    if notice.kind == "reassigned_to":
        intro.append(f"Passed to you from {_mrkdwn(data['previous_owner']['name'])}.")
    elif notice.kind == "reassigned_away":
        intro.append(f"Now with {_mrkdwn(data['owner']['name'])}. No action needed.")
    elif notice.kind == "answered":
        intro.append(
            f"{_mrkdwn(str(notice.answer).capitalize())} by {_mrkdwn(data['owner']['name'])}."
        )
    if data["note"]:
        intro.append(f"_{_mrkdwn(data['note'])}_")
    if due.phrase and data["actionable"]:
        assert notice.due_at is not None and due.at is not None
        intro.append(f":alarm_clock: *{_mrkdwn(due.phrase.capitalize())}* "
                     f"(by {_slack_date(notice.due_at, due.at)})")  # fmt: skip

    company = lead["company"] or "—"
    if lead["company"] and lead["company_size"]:
        company = f"{lead['company']} ({lead['company_size']} people)"
    breakdown = " · ".join(
        f"{label} {value}"
        for label, value in (("fit", score["fit_label"]), ("engagement", score["engagement_label"]))
        if value is not None
    )
    fields = [
        ("Company", company),
        ("Title", lead["title"] or "—"),
        ("Score / grade", score["label"] + (f" ({breakdown})" if breakdown else "")),
        ("Segment", lead["segment"] or lead["industry"] or "—"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(title, 150)},
        {"type": "section", "text": _md("\n".join(intro))},
        {
            "type": "section",
            "fields": [_md(f"*{name}*\n{_mrkdwn(value)}", 2000) for name, value in fields],
        },
    ]
    reasons = data["reasons"][:5]
    if reasons:
        lines = "\n".join(f"• {_mrkdwn(reason)}" for reason in reasons)
        blocks.append({"type": "section", "text": _md(f"*Why now*\n{lines}")})
    if data["timeline"]:
        lines = "\n".join(
            f"{_mrkdwn(item['at'])} · `{_mrkdwn(item['type'])}` {_mrkdwn(item['detail'])}"
            for item in data["timeline"]
        )
        blocks.append({"type": "context", "elements": [_md(f"*Recent activity*\n{lines}")]})

    buttons = []
    if data["actionable"]:
        for name, label, style in (("accept", "Accept", "primary"), ("reject", "Reject", "danger")):
            if links[name]:
                buttons.append(_button(name, label, links[name], style))
        if links["disqualify"]:
            buttons.append(_button("disqualify", "Disqualify", links["disqualify"]))
    if links["page"]:
        buttons.append(_button("open", "Open lead", links["page"]))
    if buttons:
        blocks.append({"type": "actions", "block_id": _clip(f"handoff-{notice.handoff_id}", 255),
                       "elements": buttons})  # fmt: skip
    blocks.append(
        {"type": "context", "elements": [_md(f"Nurture handoff `{_mrkdwn(notice.handoff_id)}`")]}
    )
    return {"text": _mrkdwn(title), "blocks": blocks}


def _button(action: str, label: str, url: str, style: str | None = None) -> dict[str, Any]:
    button = {"type": "button", "action_id": f"handoff_{action}", "text": _plain(label, 75),
              "url": url}  # fmt: skip
    if style:
        button["style"] = style
    return button


# --- CRM --------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def crm_payload(notice: HandoffNotice) -> dict[str, Any]:
    """Stable JSON for a CRM. Fields are never removed; new ones may be added (`version`).

    `rep` is who has the lead now, `previous_rep` who had it before a reassignment (else
    null), `recipient_rep_id` whom this notification was for. Reps appear without their
    webhook URL (it can embed a secret). `occurred_at` is the notice's `created_at` (set
    it: otherwise it is the time of rendering).
    """

    def rep(data: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if data is None else {key: data.get(key) for key in REP_FIELDS[:4]}

    occurred = notice.created_at or datetime.now(UTC)
    lead = {key: notice.lead.get(key) for key in LEAD_FIELDS}
    lead["attributes"] = dict(notice.lead.get("attributes") or {})
    return _jsonable({
        "version": CRM_PAYLOAD_VERSION,
        "event": EVENTS[notice.kind],
        "kind": notice.kind,
        "handoff_id": notice.handoff_id,
        "occurred_at": occurred,
        "rep": rep(owner(notice)),
        "previous_rep": rep(previous_owner(notice)),
        "recipient_rep_id": notice.recipient.get("id"),
        "lead": lead,
        "score": {key: notice.score.get(key) for key in SCORE_FIELDS},
        "reasons": _reasons(notice),
        "timeline": [{"at": item.at, "type": item.type, "detail": item.detail}
                     for item in _timeline(notice)],
        "links": _links(notice.links),
        "due_at": notice.due_at,
        "answer": notice.answer,
        "note": notice.note,
    })  # fmt: skip


__all__ = [
    "EVENTS", "KINDS", "Deadline", "HandoffNotice", "Kind", "TimelineItem", "context",
    "crm_payload", "deadline", "headline", "lead_name", "owner", "previous_owner", "render_email",
    "render_sms", "score_label", "slack_payload", "sms_segments",
]  # fmt: skip
