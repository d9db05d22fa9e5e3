"""Pausing and resuming a sequence from its page (admins and marketers): the same changes
as `nurture sequence pause|resume` (services/sequence_pause.py, audited)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from api.console.web import Console, Viewer, page_responses
from services import sequence_pause
from services.sequence_pause import UnknownSequence

REASON_LIMIT = 500


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    checked = console.form_checked("sequences.pause")

    def back(sequence_id: str, message: str) -> RedirectResponse:
        return RedirectResponse(f"/console/sequences/{quote(sequence_id)}?flash={quote(message)}",
                                status_code=303)  # fmt: skip

    def unknown(request: Request, exc: UnknownSequence) -> HTMLResponse:
        return console.render(request, "message.html", 404, heading="No such sequence",
                              message=str(exc.args[0]))  # fmt: skip

    paused = page_responses(404, redirect="paused: to the sequence's page")
    resumed = page_responses(404, redirect="resumed: to the sequence's page")

    @router.post("/console/sequences/{sequence_id}/pause", response_class=HTMLResponse,
                 responses=paused)  # fmt: skip
    async def pause(
        request: Request,
        sequence_id: str,
        reason: Annotated[str, Form(max_length=REASON_LIMIT)] = "",
        viewer: Viewer = Depends(checked),
    ):
        """Holds every send of the sequence from now on (deferred, never dropped); waits
        go on. Pausing a paused sequence changes nothing."""
        try:
            held, created = await console.db.run(
                sequence_pause.pause, console.sessions, console.definitions, sequence_id,
                viewer.email, reason.strip() or None,
            )  # fmt: skip
        except UnknownSequence as exc:
            return unknown(request, exc)
        said = "Paused: its sends are held until resumed." if created else (
            f"Already paused by {held.paused_by}; nothing changed.")  # fmt: skip
        return back(sequence_id, said)

    @router.post("/console/sequences/{sequence_id}/resume", response_class=HTMLResponse,
                 responses=resumed)  # fmt: skip
    async def resume(request: Request, sequence_id: str, viewer: Viewer = Depends(checked)):
        """Lets the sequence's sends go again: every lead holding one is woken and sends it
        now, or when quiet hours and caps allow. Nothing is sent twice."""
        try:
            done = await sequence_pause.resume(
                console.intake.client, console.sessions, console.definitions, sequence_id,
                viewer.email,
            )  # fmt: skip
        except UnknownSequence as exc:
            return unknown(request, exc)
        said = f"Resumed: {done.woken} of {done.held_leads} held lead(s) woken."
        if done.failed:
            said += f" {len(done.failed)} not reached now: their hourly recheck sends them."
        return back(sequence_id, said)

    return router
