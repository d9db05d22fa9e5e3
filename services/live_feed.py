"""The console's live feed: the newest sends, responses, stage changes and handoff events,
merged in time order, polled after a watermark.

Each source is read by an indexed key: a send by `sent_at` (ix_messages_sent_at), a
response by `delivered_at` (when its workflow got it), a stage change and a handoff event
by their id. A row can be committed after a newer one was already read (two writers, a
slow commit), so the floor each source is read above trails the newest key seen by
LAG seconds, and the ids already shown are remembered until the floor passes them: a
late row is still shown, once. Each poll reads at most LIMIT rows a source, the newest:
under a flood the feed samples, it never falls behind.

A feed starts at "now": only what happens after it was opened. A rep's feed (`rep_id`)
has only the leads handed off to that rep.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from models.db import (
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    Response,
    SalesRepRow,
    StageChange,
    as_utc,
    utcnow,
)

LIMIT = 50  # rows per source and poll
LAG = 10.0  # seconds a source's floor trails what was seen
RESUME_WITHIN = timedelta(minutes=1)  # a resumed feed goes back no further
SOURCES = ("send", "response", "stage", "handoff")
# What a response says, after the lead's address; `{message}` is the one it answers.
RESPONSE_WORDS = {
    "email.open": "opened {message}",
    "email.click": "clicked in {message}",
    "email.reply": "replied to {message}",
    "email.auto_reply": "answered {message} automatically (out of office)",
    "email.delivered": "was delivered {message}",
    "email.bounce": "bounced {message}",
    "email.dropped": "was not delivered {message} (dropped)",
    "email.unsubscribe": "unsubscribed from email",
    "email.spamreport": "reported an email as spam",
    "sms.reply": "replied by SMS",
    "sms.stop": "opted out of SMS",
    "sms.start": "opted back in to SMS",
    "page.view": "viewed {url}",
    "form.submitted": "submitted the form {form}",
    "content.download": "downloaded {asset}",
}
HANDOFF_WORDS = {
    "assigned": "was handed off to {rep}",
    "reminded": "is still waiting: {rep} reminded",
    "reassigned": "was reassigned to {rep}",
    "unanswered": "is unanswered by every rep",
    "answered": "was answered by {rep}",
}


@dataclass(frozen=True)
class Item:
    source: str  # send | response | stage | handoff
    id: str
    at: datetime  # when it happened (UTC)
    lead_id: str
    email: str
    text: str  # what happened, after the lead's address


@dataclass
class Feed:
    """One client's position: per source the floor read above, the ids shown since, and
    the newest key seen at each recent poll (whose LAG-old entry becomes the floor)."""

    rep_id: str | None
    floor: dict[str, Any]
    latest: dict[str, Any] = field(default_factory=dict)  # the newest key seen, per source
    shown: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in SOURCES})
    newest: deque = field(default_factory=deque)  # (monotonic time, {source: key})


def start(session: Session, rep_id: str | None = None, now: datetime | None = None) -> Feed:
    """A feed from now: times from `now`, ids from the newest there is."""
    now = now or utcnow()
    floor = {
        "send": now,
        "response": now,
        "stage": session.scalar(select(func.max(StageChange.id))) or 0,
        "handoff": session.scalar(select(func.max(HandoffEvent.id))) or 0,
    }
    return Feed(rep_id, floor)


def token(feed: Feed) -> str:
    """Where the feed is (the newest key of each source): a browser reconnecting sends it
    back (the event stream's Last-Event-ID) and `resume` goes on from there."""
    keys = {source: feed.latest.get(source, feed.floor[source]) for source in SOURCES}
    return json.dumps({s: _key(k).isoformat() if isinstance(k, datetime) else k
                       for s, k in keys.items()}, separators=(",", ":"))  # fmt: skip


def resume(sent: str, rep_id: str | None = None, now: datetime | None = None) -> Feed | None:
    """A feed from a `token` a client sent back; None if it is not one. Times go back at
    most RESUME_WITHIN."""
    try:
        keys = json.loads(sent)
        floor = {source: datetime.fromisoformat(keys[source]) for source in ("send", "response")}
        floor |= {source: int(keys[source]) for source in ("stage", "handoff")}
    except (ValueError, TypeError, KeyError):
        return None
    if any(not isinstance(keys[s], int) or isinstance(keys[s], bool) for s in ("stage", "handoff")):
        return None
    earliest = (now or utcnow()) - RESUME_WITHIN
    for source in ("send", "response"):
        floor[source] = max(_key(floor[source]), earliest)
    return Feed(rep_id, floor)


def poll(session: Session, feed: Feed, clock: Callable[[], float] = time.monotonic) -> list[Item]:
    """What is new since the last poll, oldest first."""
    found: list[Item] = []
    seen_now: dict[str, Any] = {}
    for source in SOURCES:
        rows = session.execute(_QUERIES[source](feed)).all()
        shown = feed.shown[source]
        for key, item in (_ITEMS[source](row) for row in rows):
            seen_now[source] = key if source not in seen_now else max(seen_now[source], key)
            if source not in feed.latest or _key(key) > _key(feed.latest[source]):
                feed.latest[source] = key
            if item.id not in shown:
                shown[item.id] = key
                found.append(item)
    _advance(feed, seen_now, clock())
    return sorted(found, key=lambda item: (item.at, item.source, item.id))


def _advance(feed: Feed, seen_now: dict[str, Any], moment: float) -> None:
    """Move each floor up to the newest key seen LAG seconds ago; forget ids below it."""
    feed.newest.append((moment, seen_now))
    while feed.newest and feed.newest[0][0] <= moment - LAG:
        _, keys = feed.newest.popleft()
        for source, key in keys.items():
            if _key(key) > _key(feed.floor[source]):
                feed.floor[source] = key
    for source, shown in feed.shown.items():
        floor = _key(feed.floor[source])
        for item_id in [i for i, key in shown.items() if _key(key) <= floor]:
            del shown[item_id]


def _key(value: Any) -> Any:
    """A key to compare: a time in UTC (SQLite's come back naive, a client's may not be UTC)."""
    return as_utc(value).astimezone(UTC) if isinstance(value, datetime) else value


# --- the sources ----------------------------------------------------------------------------


def _mine(query: Select, feed: Feed, lead_id) -> Select:
    if feed.rep_id is None:
        return query
    handed = select(Handoff.lead_id).where(Handoff.rep_id == feed.rep_id)
    return query.where(lead_id.in_(handed))


def _sends(feed: Feed) -> Select:
    m = Message
    query = (
        select(m.id, m.sent_at, m.channel, m.subject, m.template, Lead.id.label("lead_id"),
               Lead.email)
        .join(Lead, Lead.id == m.lead_id)
        .where(m.sent_at > feed.floor["send"])
        .order_by(m.sent_at.desc()).limit(LIMIT)
    )  # fmt: skip
    return _mine(query, feed, m.lead_id)


def _send_item(row) -> tuple[Any, Item]:
    what = f'"{row.subject}"' if row.channel == "email" and row.subject else row.template
    text = f"was sent {what} by {row.channel}"
    return row.sent_at, Item("send", row.id, as_utc(row.sent_at), row.lead_id, row.email, text)


def _responses(feed: Feed) -> Select:
    r, m = Response, aliased(Message)
    query = (
        select(r.id, r.type, r.data, r.occurred_at, r.delivered_at, m.subject, m.template,
               Lead.id.label("lead_id"), Lead.email)
        .join(Lead, Lead.id == r.lead_id)
        .outerjoin(m, m.id == r.message_id)
        .where(r.delivered_at > feed.floor["response"])
        .order_by(r.delivered_at.desc()).limit(LIMIT)
    )  # fmt: skip
    return _mine(query, feed, r.lead_id)


def _response_item(row) -> tuple[Any, Item]:
    data = row.data if isinstance(row.data, dict) else {}
    message = (f'"{row.subject}"' if row.subject else
               f"the {row.template} message" if row.template else "an email")  # fmt: skip
    values = {"message": message, "url": data.get("url", "a page"),
              "form": data.get("form", ""), "asset": data.get("asset", "content")}  # fmt: skip
    words = RESPONSE_WORDS.get(row.type, row.type)
    text = words.format(**{k: str(v) for k, v in values.items()}).strip()
    item = Item("response", row.id, as_utc(row.occurred_at), row.lead_id, row.email, text)
    return row.delivered_at, item


def _stages(feed: Feed) -> Select:
    sc = StageChange
    query = (
        select(sc.id, sc.from_stage, sc.to_stage, sc.created_at, Lead.id.label("lead_id"),
               Lead.email)
        .join(Lead, Lead.id == sc.lead_id)
        .where(sc.id > feed.floor["stage"])
        .order_by(sc.id.desc()).limit(LIMIT)
    )  # fmt: skip
    return _mine(query, feed, sc.lead_id)


def _stage_item(row) -> tuple[Any, Item]:
    text = f"moved from {row.from_stage} to {row.to_stage}"
    return row.id, Item("stage", str(row.id), as_utc(row.created_at), row.lead_id, row.email, text)


def _handoffs(feed: Feed) -> Select:
    e, h = HandoffEvent, Handoff
    query = (
        select(e.id, e.kind, e.created_at, func.coalesce(SalesRepRow.name, e.rep_id).label("rep"),
               Lead.id.label("lead_id"), Lead.email)
        .join(h, h.id == e.handoff_id)
        .join(Lead, Lead.id == h.lead_id)
        .outerjoin(SalesRepRow, SalesRepRow.id == e.rep_id)
        .where(e.id > feed.floor["handoff"], e.kind.in_(HANDOFF_WORDS))
        .order_by(e.id.desc()).limit(LIMIT)
    )  # fmt: skip
    return _mine(query, feed, h.lead_id)


def _handoff_item(row) -> tuple[Any, Item]:
    text = HANDOFF_WORDS[row.kind].format(rep=row.rep or "a rep")
    item = Item("handoff", str(row.id), as_utc(row.created_at), row.lead_id, row.email, text)
    return row.id, item


_QUERIES = {"send": _sends, "response": _responses, "stage": _stages, "handoff": _handoffs}
_ITEMS = {"send": _send_item, "response": _response_item, "stage": _stage_item,
          "handoff": _handoff_item}  # fmt: skip
