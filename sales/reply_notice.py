"""A lead's reply as its owner reads it (a sequence's `notify_owner: true`), rendered for
the owner's channels: email, SMS, Slack.

Pure functions, no I/O: a `ReplyNotice` (built by the reply-notice activity from the
reply's response row, the lead, its score card and recent events) goes in, a message
comes out. The lead's summary is the handoff notice's: profile, score, the reasons and
the recent activity (sales/notify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sales.notify import (
    SMS_MAX_SEGMENTS,
    TimelineItem,
    _attributes,
    _clip,
    _clock,
    _lead,
    _md,
    _mrkdwn,
    _plain,
    _rep,
    _score,
    _zone,
    render_parts,
    sms_segments,
)

# What the reply did to the sequence, as the owner reads it.
EFFECTS = {
    "exit": "The reply ended the sequence: nothing more is sent to them.",
    "pause": "The sequence's sends are paused for a while after the reply.",
    "continue": "The sequence goes on.",
    "ended": "Their sequence had already ended: the reply changed nothing in it.",
}
MAX_REPLY_TEXT = 4000  # in the email; Slack shows 2,500, SMS what fits
MAX_TIMELINE = 10


@dataclass(frozen=True)
class ReplyNotice:
    rep: dict[str, Any]  # the recipient: id, name, email, phone, timezone
    why: str  # why they are told: "you own this lead", "you own acme.example"
    lead: dict[str, Any]  # the profile (Lead.profile()) and its id
    score: dict[str, Any]  # total, fit, engagement, grade, stage, model
    reasons: list[str]  # the score card's, most important first
    timeline: list[TimelineItem]  # recent engagement, newest first
    sequence: str  # the sequence's name
    effect: str  # exit pause continue, or ended (the sequence was over before)
    channel: str  # where the lead replied: email or sms
    subject: str | None  # an email reply's
    text: str  # what the lead wrote
    replied_at: datetime
    lead_url: str | None = None  # the lead's page in the console

    def __post_init__(self):
        if self.effect not in EFFECTS:
            raise ValueError(f"unknown effect {self.effect!r} (one of {', '.join(EFFECTS)})")


def headline(notice: ReplyNotice) -> str:
    """'Ada Lovelace (Acme) replied: Re: Pricing' — the email subject, Slack's title."""
    lead = _lead(notice.lead)
    who = f"{lead['name']} ({lead['company']})" if lead["company"] else lead["name"]
    what = f": {_clip(notice.subject, 80)}" if notice.subject else " by SMS"
    return f"{who} replied{what}"


def context(notice: ReplyNotice) -> dict[str, Any]:
    """What the templates see. Every name is always defined (templates are strict)."""
    zone = _zone(notice.rep)
    lead = _lead(notice.lead)
    return {
        "headline": headline(notice),
        "lead": lead,
        "name": lead["name"],
        "attributes": _attributes(lead["attributes"]),
        "score": _score(notice.score),
        "reasons": [" ".join(str(r).split()) for r in notice.reasons if str(r).strip()][:5],
        "timeline": [
            {
                "at": _clock(item.at, zone, notice.replied_at),
                "type": item.type,
                "detail": item.detail,
            }
            for item in notice.timeline[:MAX_TIMELINE]
        ],  # fmt: skip
        "recipient": _rep(notice.rep),
        "why": notice.why,
        "sequence": notice.sequence,
        "effect": EFFECTS[notice.effect],
        "channel": notice.channel,
        "subject": notice.subject,
        "text": notice.text.strip()[:MAX_REPLY_TEXT],
        "replied_at": _clock(notice.replied_at, zone, None),
        "lead_url": notice.lead_url,
    }


def render_email(notice: ReplyNotice, templates_dir: Path) -> tuple[str, str, str]:
    """(subject, html, text) from templates/sales/reply{_subject.txt,.html,.txt}."""
    return render_parts(templates_dir, "reply", context(notice))


def render_sms(notice: ReplyNotice) -> str:
    """Who replied, what they wrote (clipped to fit two segments), the lead's page."""
    lead = _lead(notice.lead)
    link = f" {notice.lead_url}" if notice.lead_url else ""
    score = _score(notice.score)["label"]
    body = ""
    for limit in (300, 200, 120, 60, 20):
        who = _clip(lead["name"], 40) + (f" ({_clip(lead['company'], 30)})" if lead["company"]
                                         else "")  # fmt: skip
        said = _clip(notice.text, limit)
        body = f'{who}, score {score}, replied by {notice.channel}: "{said}"{link}'
        if sms_segments(body) <= SMS_MAX_SEGMENTS:
            break
    return body


def slack_payload(notice: ReplyNotice) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (notification fallback) and Block Kit blocks."""
    data = context(notice)
    lead, score = data["lead"], data["score"]
    who = f"*{_mrkdwn(lead['name'])}*"
    if notice.lead_url:
        who = f"*<{notice.lead_url}|{_mrkdwn(lead['name'])}>*"
    contact = [_mrkdwn(v) for v in (lead["email"], lead["phone"]) if v]
    intro = who + (f" · {' · '.join(contact)}" if contact else "")
    quoted = "\n".join(f"> {_mrkdwn(line)}" for line in data["text"][:2500].splitlines())
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(data["headline"], 150)},
        {"type": "section", "text": _md(f"{intro}\n{quoted or '> (empty)'}")},
        {"type": "section", "fields": [
            _md(f"*Sequence*\n{_mrkdwn(notice.sequence)}", 2000),
            _md(f"*Score / stage*\n{_mrkdwn(score['label'])} · {_mrkdwn(score['stage'] or '—')}",
                2000),
        ]},
        {"type": "context", "elements": [_md(_mrkdwn(f"{data['effect']} Sent to you because "
                                                     f"{notice.why}."))]},
    ]  # fmt: skip
    if data["reasons"]:
        lines = "\n".join(f"• {_mrkdwn(reason)}" for reason in data["reasons"])
        blocks.append({"type": "section", "text": _md(f"*Why the score*\n{lines}")})
    return {"text": _mrkdwn(data["headline"]), "blocks": blocks}
