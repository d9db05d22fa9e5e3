"""The Leads pages: a search with filters, and one lead's story.

Every role may look at leads; a rep only at the leads handed off to it: its search shows
only those, and another lead's page answers 403. The lead page reads the database in a
thread and asks the lead's workflow (services/lead_story.py), which may be unavailable:
the page still shows everything the database knows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from api.console.web import Console, Viewer, page_responses, when
from services import lead_search, lead_story
from services.lead_search import LeadSearch, SearchError
from services.lead_story import LeadNotFound, NotHandedOffToRep

PAGE_SIZE = 50
# What the form sends, as the OpenAPI document says it (anything else: the 422 page).
Match = Literal["contains", "prefix"]
Stage = Literal["", *lead_search.STAGES]  # "": any
Sort = Literal[*lead_search.SORTS]
SCORE = r"^$|^(100(\.0+)?|\d{1,2}(\.\d+)?)$"  # a score, 0 to 100, as a form types it
NOT_YOURS = "This lead was not handed off to you: a rep sees only the leads handed off to it."
# A stage's badge colour: sales' side of the funnel is good news, a lost lead is not.
STAGE_TONES = {"mql": "warn", "pql": "warn", "sql": "ok", "accepted": "ok",
               "opportunity": "ok", "customer": "ok", "disqualified": "bad",
               "closed_lost": "bad"}  # fmt: skip


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    allowed = console.allowed("leads")
    definitions = console.definitions
    choices = {"stages": lead_search.STAGES, "sorts": lead_search.SORTS,
               "segments": sorted([definitions.segments.default.id,
                                   *(s.id for s in definitions.segments.segments)]),
               "sequences": sorted(definitions.sequences)}  # fmt: skip

    @router.get("/console/leads", response_class=HTMLResponse, responses=page_responses(),
                include_in_schema=True)  # fmt: skip
    async def leads_page(
        request: Request,
        email: str = Query("", max_length=320),
        match: Match = "contains",
        stage: Stage = "",
        segment: str = Query("", max_length=100),
        score_min: str = Query("", pattern=SCORE, description="0-100; empty: any"),
        score_max: str = Query("", pattern=SCORE, description="0-100; empty: any"),
        sequence: str = Query("", max_length=100),
        sort: Sort = "activity",
        offset: int = Query(0, ge=0, le=lead_search.MAX_OFFSET),
        viewer: Viewer = Depends(allowed),
    ):
        """Leads found by email, stage, segment, score range and sequence; a rep's own."""
        asked = {"email": email, "match": match, "stage": stage, "segment": segment,
                 "score_min": score_min, "score_max": score_max, "sequence": sequence,
                 "sort": sort}  # fmt: skip
        context = {"asked": asked, "mine": viewer.role == "rep", "tones": STAGE_TONES,
                   **choices}  # fmt: skip
        try:
            search = LeadSearch(
                email=email, match=match, stage=stage, segment=segment,
                score_min=_score(score_min), score_max=_score(score_max),
                sequence=sequence, rep_id=_rep_of(viewer), sort=sort, limit=PAGE_SIZE,
                offset=offset,
            )  # fmt: skip
        except SearchError as exc:  # fields the document cannot relate (min above max)
            return console.render(request, "leads/list.html", problem=exc, result=None,
                                  **context)  # fmt: skip
        result = await console.db.run(_search, console.sessions, search)
        newer = _page_url(asked, offset - PAGE_SIZE) if offset else None
        older = _page_url(asked, offset + PAGE_SIZE) if result.has_older else None
        filtered = any(value for name, value in asked.items() if name not in ("match", "sort"))
        return console.render(request, "leads/list.html", result=result, filtered=filtered,
                              newer=newer, older=older, **context)  # fmt: skip

    @router.get("/console/leads/{lead_id}", response_class=HTMLResponse,
                responses=page_responses(404), include_in_schema=True)  # fmt: skip
    async def lead_page(
        request: Request,
        lead_id: str,
        before: datetime | None = Query(None, description="the timeline before this time"),
        viewer: Viewer = Depends(allowed),
    ):
        """One lead: profile, consent, score card and chart, workflow, timeline."""
        cursor = before if before is None or before.tzinfo else before.replace(tzinfo=UTC)
        read = (console.sessions, definitions, lead_id, cursor, _rep_of(viewer))
        try:
            story = await console.db.run(_story, *read)
        except LeadNotFound:
            missing = f"There is no lead {lead_id}: search for it on the Leads page."
            return _message(request, 404, "No such lead", missing)
        except NotHandedOffToRep:
            return _message(request, 403, "Not allowed", NOT_YOURS)
        story = await lead_story.with_workflow(story, console.settings)
        return console.render(
            request, "leads/lead.html", story=story, tones=STAGE_TONES,
            chart=_score_chart(story.series),
            temporal_url=lead_story.temporal_ui_url(console.settings, story.workflow_id),
            older=f"?{urlencode({'before': story.older.isoformat()})}" if story.older else None,
            paged=cursor is not None,
        )  # fmt: skip

    def _message(request: Request, status: int, heading: str, message: str) -> HTMLResponse:
        return console.render(request, "message.html", status, heading=heading,
                              message=message)  # fmt: skip

    return router


def _search(sessions, search: LeadSearch):
    with sessions() as session:
        return lead_search.search_leads(session, search)


def _story(sessions, definitions, lead_id: str, before: datetime | None, rep_id: str | None):
    with sessions() as session:
        return lead_story.lead_story(session, definitions, lead_id, datetime.now(UTC),
                                     before=before, rep_id=rep_id)  # fmt: skip


def _rep_of(viewer: Viewer) -> str | None:
    """The rep whose leads alone a viewer sees (a rep's account without a rep: none)."""
    return (viewer.rep_id or "") if viewer.role == "rep" else None


def _score(text: str) -> float | None:
    """A score as the form sends it (SCORE): empty is "any"."""
    return float(text) if text else None


def _page_url(asked: dict[str, str], offset: int) -> str:
    kept = {name: value for name, value in asked.items() if value}
    return "/console/leads?" + urlencode(kept | ({"offset": offset} if offset > 0 else {}))


def _score_chart(series: list[tuple[datetime, float]]) -> dict:
    """Chart.js's line chart of the score after each change (console.js draws it)."""
    return {
        "type": "line",
        "data": {
            "labels": [when(moment) for moment, _ in series],
            "datasets": [{"label": "Score", "data": [round(score, 1) for _, score in series],
                          "borderColor": "#1f5fbf", "backgroundColor": "#1f5fbf",
                          "stepped": True, "pointRadius": 2}],
        },
        "options": {
            "scales": {"y": {"min": 0, "max": 100, "title": {"display": True, "text": "score"}}},
            "plugins": {"legend": {"display": False}},
        },
    }  # fmt: skip
