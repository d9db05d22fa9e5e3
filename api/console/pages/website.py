"""The Website page (docs/tracking.md): the web tracking's traffic over the last days
(page views, anonymous and leads', the top pages and campaign sources, the visitors
joined to leads), and the tag to put on the website's pages.

The figures are SQL aggregates (services/website_traffic.py), read in a thread.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from api.console.web import Console, Viewer, page_responses, web_tracking
from api.errors import error_responses
from services import website_traffic
from services.website_traffic import DEFAULT_DAYS, MAX_DAYS, Traffic

DAY_CHOICES = (7, 30, 90, 365)  # the form's suggestions; any 1 to MAX_DAYS is taken


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])

    @router.get(
        "/console/website",
        response_class=HTMLResponse,
        responses={**page_responses(), **error_responses(503)},
    )
    async def website_page(
        request: Request,
        days: int = Query(DEFAULT_DAYS, ge=1, le=MAX_DAYS,
                          description="the days counted back from now"),
        _viewer: Viewer = Depends(console.allowed("website")),
    ):  # fmt: skip
        """The website's tracked page views of the last `days` days: totals, the top pages
        and campaign sources, the latest visitors joined to leads; and the tag to install."""
        traffic = await console.db.run(_read, console.sessions, days)
        return console.render(request, "website/page.html", traffic=traffic,
                              tracking=web_tracking(console.settings),
                              choices=sorted({*DAY_CHOICES, days}))  # fmt: skip

    return router


def _read(sessions, days: int) -> Traffic:
    with sessions() as session:
        return website_traffic.website_traffic(session, days)
