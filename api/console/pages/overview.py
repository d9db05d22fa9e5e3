"""The Overview page and its live feed.

- `GET /console/`: figure cards, the funnel (a table and a bar chart), SQLs by sequence
  and by segment over the chosen range (line charts, with tables), speed to lead, and the
  live feed. The figures come from services/overview.py, aggregated by the database, and
  are kept CACHE_SECONDS: a year of 100,000 leads takes the database a few hundred ms.
- `GET /console/feed`: server-sent events, one an item of services/live_feed.py (a
  send, a response, a stage change, a handoff), from the moment the page opened. The
  database is polled about once a second; a comment every KEEP_ALIVE seconds keeps
  proxies from closing a quiet stream. A stream ends after STREAM_SECONDS (or when the
  browser goes): the browser reconnects by itself, with the last event's id, and the
  feed goes on from there (a signed-out session is then refused, and the feed stops).
  A rep's feed has only its own leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from api.console.web import Console, Viewer, page_responses
from api.errors import error_responses
from models.db import utcnow
from services import live_feed
from services import overview as figures
from services.live_feed import Feed, Item
from services.overview import Series

log = logging.getLogger("nurture.console")

POLL_SECONDS = 1.0
KEEP_ALIVE = 15.0  # seconds of quiet before a `: keep-alive` comment
STREAM_SECONDS = 300.0  # then the browser reconnects, resuming from its last event
RETRY_MS = 1000  # how soon the browser reconnects
CACHE_SECONDS = 30.0  # the figures of a range are read again after this
STREAM_DOC = {
    200: {
        "description": "server-sent events: each `data:` one line of HTML about a send, a "
        "response, a stage change or a handoff; `: keep-alive` comments between",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    allowed = console.allowed("overview")
    cached = Recent()

    @router.get(
        "/console/",
        response_class=HTMLResponse,
        responses={**page_responses(), **error_responses(503)},
        include_in_schema=True,
    )
    async def overview_page(
        request: Request,
        period: Literal["7d", "30d", "90d", "365d"] = Query(figures.DEFAULT_RANGE, alias="range"),
        bucket: Literal["", "day", "week"] = Query(""),
        _viewer: Viewer = Depends(allowed),
    ):
        """The funnel, SQLs over time, speed to lead and the live feed."""
        window = figures.Window.last(figures.RANGES[period], utcnow(), bucket or None)
        read_at, found, result = cached.get(window) or cached.put(
            window, utcnow(), *await console.db.run(_read, console.sessions, window)
        )
        return console.render(
            request, "overview/page.html", found=found, o=result, read_at=read_at,
            range=period, bucket=bucket, ranges=list(figures.RANGES), charts=_charts(result),
            tables=_tables(result), duration=duration,
        )  # fmt: skip

    @router.get(
        "/console/feed",
        response_class=StreamingResponse,
        responses={**STREAM_DOC, **page_responses(), **error_responses(503)},
        include_in_schema=True,
    )
    async def feed(
        request: Request,
        last_event_id: str | None = Header(None, max_length=400),
        viewer: Viewer = Depends(allowed),
    ):
        """The live feed, as server-sent events."""
        # A rep sees its own leads; a rep account with no rep, none (rep "" has no leads).
        rep_id = (viewer.rep_id or "") if viewer.role == "rep" else None
        state = await console.db.run(_start, console.sessions, rep_id, last_event_id)
        return StreamingResponse(
            _events(console, request, state), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    return router


class Recent:
    """The figures of each window read in the last CACHE_SECONDS: a page loaded again
    and again (a screen on the wall, several people) is read once. The live feed is not
    cached."""

    def __init__(self):
        self.entries: dict[figures.Window, tuple[float, tuple]] = {}

    def get(self, window: figures.Window) -> tuple | None:
        entry = self.entries.get(window)
        if entry is None or time.monotonic() - entry[0] >= CACHE_SECONDS:
            return None
        return entry[1]

    def put(self, window: figures.Window, *value) -> tuple:
        now = time.monotonic()
        self.entries = {w: e for w, e in self.entries.items() if now - e[0] < CACHE_SECONDS}
        self.entries[window] = (now, value)
        return value


def _read(sessions, window: figures.Window) -> tuple[bool, figures.Overview]:
    with sessions() as session:
        return figures.any_leads(session), figures.overview(session, window)


# --- the live feed -------------------------------------------------------------------------------


def _start(sessions, rep_id: str | None, last_event_id: str | None) -> Feed:
    with sessions() as session:
        if last_event_id:
            resumed = live_feed.resume(last_event_id, rep_id)
            if resumed is not None:
                return resumed
        return live_feed.start(session, rep_id)


def _poll(sessions, state: Feed) -> list[Item]:
    with sessions() as session:
        return live_feed.poll(session, state)


async def _events(console: Console, request: Request, state: Feed) -> AsyncIterator[str]:
    started = quiet_since = time.monotonic()
    yield f"retry: {RETRY_MS}\n\n"
    while time.monotonic() - started < STREAM_SECONDS and not console.closing.is_set():
        if await request.is_disconnected():
            return
        try:
            items = await console.db.run(_poll, console.sessions, state)
        except SQLAlchemyError as exc:  # a locked or unreachable database: try again
            log.debug("live feed poll failed: %s", exc)
            items = []
        if items:
            token = live_feed.token(state)
            yield "".join(f"id: {token}\ndata: {fragment(item)}\n\n" for item in items)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEP_ALIVE:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        with contextlib.suppress(TimeoutError):  # a poll a second, or the server stopping
            await asyncio.wait_for(console.closing.wait(), POLL_SECONDS)


def fragment(item: Item) -> Markup:
    """One line of HTML: the time, the lead's address (a link to its page), what happened."""
    text = " ".join(item.text.split())  # one line, whatever a subject held
    return Markup('<time datetime="{}">{}</time> <a href="/console/leads/{}">{}</a> {}').format(
        item.at.isoformat(), item.at.strftime("%H:%M:%S"), item.lead_id, item.email, text
    )


# --- the page's charts and tables ----------------------------------------------------------------


def _charts(result: figures.Overview) -> dict[str, dict[str, Any]]:
    funnel = {
        "type": "bar",
        "data": {
            "labels": [step.stage for step in result.funnel],
            "datasets": [{"label": "Leads", "data": [step.reached for step in result.funnel]}],
        },
        "options": {
            "plugins": {"legend": {"display": False}},
            "scales": {"y": {"beginAtZero": True, "ticks": {"precision": 0}}},
        },
    }
    return {
        "funnel": funnel,
        "sequence": _line_chart(result.sqls_by_sequence),
        "segment": _line_chart(result.sqls_by_segment),
    }


def _line_chart(series: Series) -> dict[str, Any]:
    return {
        "type": "line",
        "data": {
            "labels": [_label(start) for start in series.starts],
            "datasets": [{"label": key, "data": values} for key, values in series.counts.items()],
        },
        "options": {"scales": {"y": {"beginAtZero": True, "ticks": {"precision": 0}}}},
    }


def _tables(result: figures.Overview) -> dict[str, dict[str, Any]]:
    """Each line chart as a table: a row per bucket with SQLs, a column per key."""

    def table(series: Series) -> dict[str, Any]:
        rows = [(_label(start), [values[n] for values in series.counts.values()])
                for n, start in enumerate(series.starts)]  # fmt: skip
        return {"keys": list(series.counts), "rows": [r for r in rows if any(r[1])]}

    return {"sequence": table(result.sqls_by_sequence), "segment": table(result.sqls_by_segment)}


def _label(start: date) -> str:
    return start.isoformat()


def duration(seconds: float | None) -> str:
    """`850 ms`, `4.2 s`, `12 min`, `3 h 20 min`, `2 d 4 h`; `—` for none."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
