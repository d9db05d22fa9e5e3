"""The console's routes: sign-in and sign-out, its static files, and each page's router.

Signing in is limited twice: the API's failed-authentication limit per address (a wrong
password is answered 401, api/security.py), and LOGIN_LIMIT failures per account, so a
password is not guessed from many addresses either.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from api.console import web
from api.console.pages import (
    audit,
    experiments,
    handoffs,
    leads,
    models,
    operations,
    overview,
    sequence_pause,
    sequences,
    users,
    website,
)
from api.console.web import COOKIE, Console, Forbidden, NotSignedIn, page_responses
from api.database import HandlerDatabase
from api.errors import HTML
from infra.settings import Settings
from services import accounts
from services.intake import Intake

LOGIN_LIMIT = "5/15 minutes"  # failed sign-ins per account
LOGIN_CSRF = "nurture_login_csrf"
PAGES = (
    overview,
    sequences,
    sequence_pause,
    leads,
    website,
    handoffs,
    operations,
    models,
    experiments,
    users,
    audit,
)
LOGIN_RESPONSES = page_responses(redirect="signed in: to the page asked for")
# A 429 is the API's (JSON: too many failures from the address) or the page's (too many
# for the account).
LOGIN_RESPONSES[429]["content"] = {**LOGIN_RESPONSES[429]["content"], **HTML}


def add_console(app: FastAPI, intake: Intake, settings: Settings, db: HandlerDatabase) -> Console:
    console = Console(intake, settings, db)
    app.mount("/console/static", StaticFiles(directory=web.STATIC), name="console-static")
    _add_handlers(app, console)
    app.include_router(_sign_in_routes(console))
    for page in PAGES:
        app.include_router(page.routes(console))
    return console


def _add_handlers(app: FastAPI, console: Console) -> None:
    @app.exception_handler(NotSignedIn)
    async def _to_login(request: Request, _exc: NotSignedIn):
        if request.method == "GET":
            return RedirectResponse(console.login_url(request), status_code=303)
        return console.render(
            request,
            "message.html",
            401,
            heading="Signed out",
            message="Your session has ended: sign in again.",
        )

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return console.render(request, "message.html", 403, heading="Not allowed", message=exc.why)


def invalid_page(console: Console, request: Request, exc: RequestValidationError) -> HTMLResponse:
    """A console form or query that is not valid: a page naming each field, nothing done."""
    fields = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
    return console.render(
        request, "message.html", 422, heading="Not valid", message=f"Nothing was changed. {fields}"
    )


def _safe_next(target: str | None) -> str:
    """Only a console path: a login link must not send anyone to another site."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/console"):
        return "/console/"
    return target or "/console/"


def _sign_in_routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    limiter, limit = MovingWindowRateLimiter(MemoryStorage()), parse(LOGIN_LIMIT)

    def login_page(request: Request, status: int = 200, **context) -> HTMLResponse:
        token = request.cookies.get(LOGIN_CSRF) or secrets.token_urlsafe(32)
        context.setdefault("next", _safe_next(request.query_params.get("next")))
        page = console.render(
            request,
            "login.html",
            status,
            login_csrf=token,
            email=context.pop("email", ""),
            **context,
        )
        page.set_cookie(
            LOGIN_CSRF,
            token,
            httponly=True,
            samesite="strict",
            secure=console.secure_cookie,
            path="/console/login",
        )
        return page

    @router.get(
        "/console/login",
        response_class=HTMLResponse,
        responses=page_responses(redirect="already signed in: to the console"),
    )
    async def login_form(request: Request):
        """The sign-in page."""
        if await console.viewer_of(request):
            return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
        return login_page(request, signed_out=request.query_params.get("signed_out") == "1")

    @router.post(
        "/console/login",
        response_class=HTMLResponse,
        responses=LOGIN_RESPONSES,
    )
    async def login(
        request: Request,
        email: Annotated[str, Form(min_length=1, max_length=320)],
        password: Annotated[str, Form(min_length=1, max_length=1000)],
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/console/",
    ):
        """Signs in: a session cookie, then the page asked for. 401: wrong email or
        password (the same answer for both); 429: too many failures for the account."""
        cookie = request.cookies.get(LOGIN_CSRF, "")
        if not cookie or not hmac.compare_digest(cookie, csrf):
            return login_page(request, 403, problem="The form was out of date: try again.")
        account = email.strip().lower()
        if not limiter.test(limit, account):
            reset = limiter.get_window_stats(limit, account).reset_time
            wait = max(1, math.ceil(reset - time.time()))
            page = login_page(request, 429, email=email, problem="Too many failed sign-ins "
                              f"for this account: try again in {wait} s.")  # fmt: skip
            page.headers["Retry-After"] = str(wait)
            return page
        address = request.client.host if request.client else "unknown"
        found = await console.db.run(accounts.sign_in, console.sessions, email, password, address)
        if found is None:
            limiter.hit(limit, account)
            return login_page(
                request,
                401,
                email=email,
                next=_safe_next(next),
                problem="Wrong email or password, or the account is disabled.",
            )
        secret, _signed = found
        answer = RedirectResponse(_safe_next(next), status_code=303)
        answer.set_cookie(
            COOKIE,
            console.cookie_value(secret),
            httponly=True,
            samesite="lax",
            secure=console.secure_cookie,
            path="/console",
            max_age=accounts.SESSION_DAYS * 86400,
        )
        answer.delete_cookie(LOGIN_CSRF, path="/console/login")
        return answer

    @router.post("/console/logout", responses=page_responses(redirect="to the sign-in page"))
    async def logout(request: Request, _viewer=Depends(console.form_checked("overview"))):
        """Signs out: the session ends on the server, and its cookie is cleared."""
        secret = console.secret_of(request)
        if secret:
            await console.db.run(accounts.sign_out, console.sessions, secret)
        answer = RedirectResponse("/console/login?signed_out=1", status_code=303)
        answer.delete_cookie(COOKIE, path="/console")
        return answer

    return router
