"""Predictive models (docs/predictive.md): every trained model with its test figures
beside the rules', one model's deciles, and for admins and marketers activate, retire and
roll back, the same changes as `nurture models` (services/predictive_models.py: one
transaction each, audited)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from api.console.web import Console, Viewer, page_responses
from services import predictive_models
from services.predictive_models import ModelError


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    allowed, checked = console.allowed("models"), console.form_checked("models.change")

    def read_all(sessions):
        with sessions() as session:
            return [predictive_models.describe(m) for m in predictive_models.list_models(session)]

    async def page(request: Request, status: int = 200, **context) -> HTMLResponse:
        found = await console.db.run(read_all, console.sessions)
        return console.render(request, "models/list.html", status, models=found,
                              flash=context.pop("flash", request.query_params.get("flash")),
                              **context)  # fmt: skip

    async def change(request: Request, fn, *args) -> HTMLResponse | RedirectResponse:
        """Runs a change; a refusal re-renders the list saying why (404 unknown, else 409)."""
        try:
            changed = await console.db.run(fn, console.sessions, *args)
        except ModelError as exc:
            return await page(request, exc.status, problem=str(exc))
        verb = {"activate": "Activated", "retire": "Retired", "rollback": "Rolled back to"}
        message = f"{verb[fn.__name__]} {changed.fingerprint}."
        return RedirectResponse(f"/console/models?flash={quote(message)}", status_code=303)

    @router.get("/console/models", response_class=HTMLResponse, responses=page_responses())
    async def models_page(request: Request, _v: Viewer = Depends(allowed)):
        """Every trained model, newest first, with its test figures beside the rules'."""
        return await page(request)

    @router.get("/console/models/{fingerprint}", response_class=HTMLResponse,
                responses=page_responses(404))  # fmt: skip
    async def model_page(request: Request, fingerprint: str, _v: Viewer = Depends(allowed)):
        """One model: its window, figures, deciles (model and rules) and versions."""

        def read(sessions):
            with sessions() as session:
                found = predictive_models.find(session, fingerprint)
                metrics = (found.summary or {}).get("metrics") or {}
                return predictive_models.describe(found), metrics

        try:
            model, metrics = await console.db.run(read, console.sessions)
        except ModelError as exc:
            return console.render(request, "message.html", 404, heading="No such model",
                                  message=str(exc))  # fmt: skip
        return console.render(request, "models/detail.html", model=model, metrics=metrics)

    @router.post("/console/models/previous/activate", response_class=HTMLResponse,
                 responses=page_responses(409, redirect="rolled back: to the list"))  # fmt: skip
    async def rollback(request: Request, viewer: Viewer = Depends(checked)):
        """Activates again the model that was active before the current one."""
        return await change(request, predictive_models.rollback, viewer.email)

    @router.post("/console/models/{fingerprint}/{action}", response_class=HTMLResponse,
                 responses=page_responses(404, 409, redirect="done: to the list"))  # fmt: skip
    async def activate_or_retire(request: Request, fingerprint: str,
                                 action: Literal["activate", "retire"],
                                 viewer: Viewer = Depends(checked)):  # fmt: skip
        """`activate` (every worker uses it within 30 s) or `retire` a model. 409: refused
        (a refused model, one active or retired already), the page says why."""
        fn = {"activate": predictive_models.activate, "retire": predictive_models.retire}[action]
        return await change(request, fn, fingerprint, viewer.email)

    return router
