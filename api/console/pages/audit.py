"""The audit log (admins): who did what, newest first."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from api.console.web import Console, Viewer, page_responses
from services import audit


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])

    @router.get("/console/audit", response_class=HTMLResponse, responses=page_responses(422))
    async def audit_page(request: Request, actor: str = Query("", max_length=320),
                         action: str = Query("", max_length=60),
                         before: int | None = Query(None, ge=1),
                         _v: Viewer = Depends(console.allowed("audit"))):  # fmt: skip
        """The newest entries, filtered by who and by the start of the action."""

        def read(session_factory):
            with session_factory() as session:
                return audit.entries(session, actor=actor, action=action, before_id=before)

        entries, more = await console.db.run(read, console.sessions)
        return console.render(request, "audit/list.html", entries=entries, more=more,
                              actor=actor, action=action)  # fmt: skip

    return router
