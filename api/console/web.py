"""What every console page shares: who is signed in, what each role may do, the CSRF
check, and rendering a page with the layout.

- A session cookie (`nurture_session`) holds the session's secret, signed with
  NURTURE_SECRET_KEY; HttpOnly (no script reads it), SameSite=Lax (no other site's form
  sends it), Secure when NURTURE_PUBLIC_URL is https, scoped to /console.
- Every POST carries the session's CSRF token (a form's hidden `csrf` field, or the
  `X-CSRF-Token` header htmx sends): a form posted from elsewhere is refused 403.
- An anonymous GET is sent to the login page; a signed-in user without the permission
  gets a 403 page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from itsdangerous import BadSignature, Signer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from api.database import HandlerDatabase
from api.errors import error_responses
from infra.settings import Settings
from services import accounts
from services.intake import Intake

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "nurture_session"
ROLES = accounts.ROLES
EVERYONE = frozenset(ROLES)
PERMISSIONS: dict[str, frozenset[str]] = {
    "overview": EVERYONE,
    "leads": EVERYONE,  # a rep: only the leads handed off to it (the leads pages check)
    "handoffs": frozenset({"admin", "rep", "marketer", "viewer"}),
    "sequences": frozenset({"admin", "marketer", "viewer"}),
    "simulate": frozenset({"admin", "marketer"}),
    "sequences.pause": frozenset({"admin", "marketer"}),
    "answer": frozenset({"admin", "rep"}),
    "handoffs.all": frozenset({"admin", "marketer", "viewer"}),
    "reassign": frozenset({"admin"}),
    "operations": frozenset({"admin", "marketer", "viewer"}),
    "models": frozenset({"admin", "marketer", "viewer"}),
    "models.change": frozenset({"admin", "marketer"}),
    "experiments": frozenset({"admin", "marketer", "viewer"}),
    "website": frozenset({"admin", "marketer", "viewer"}),
    "users": frozenset({"admin"}),
    "audit": frozenset({"admin"}),
}
# The navigation: (permission, path, label), in order.
NAV = [
    ("overview", "/console/", "Overview"),
    ("sequences", "/console/sequences", "Sequences"),
    ("leads", "/console/leads", "Leads"),
    ("website", "/console/website", "Website"),
    ("handoffs", "/console/handoffs", "Handoffs"),
    ("operations", "/console/operations", "Operations"),
    ("models", "/console/models", "Models"),
    ("experiments", "/console/experiments", "Experiments"),
    ("users", "/console/users", "Users"),
    ("audit", "/console/audit", "Audit log"),
]


def session_signer(secret_key: str) -> Signer:
    """Signs the session cookie's value with NURTURE_SECRET_KEY."""
    return Signer(secret_key, salt="nurture-console-session")


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a request."""

    user_id: str
    email: str
    name: str
    role: str
    rep_id: str | None
    csrf: str

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


class NotSignedIn(Exception):
    """No valid session: a GET goes to the login page (api/console/app.py)."""


class Forbidden(Exception):
    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class Console:
    """The console's shared parts; pages get it in `routes(console)`."""

    def __init__(self, intake: Intake, settings: Settings, db: HandlerDatabase):
        self.intake, self.settings, self.db = intake, settings, db
        self.sessions = intake.sessions
        self.definitions = intake.definitions
        self.signer = session_signer(settings.resolved_secret_key())
        self.secure_cookie = str(settings.public_url).startswith("https")
        self.templates = _environment()
        # Set when the server stops: streams (the live feed) end at once (devstack/stack.py).
        self.closing = asyncio.Event()

    # --- sessions -------------------------------------------------------------------

    def cookie_value(self, secret: str) -> str:
        return self.signer.sign(secret).decode()

    def secret_of(self, request: Request) -> str | None:
        value = request.cookies.get(COOKIE)
        try:
            return self.signer.unsign(value).decode() if value else None
        except BadSignature:
            return None

    async def viewer_of(self, request: Request) -> Viewer | None:
        if "viewer" in request.state._state:
            return request.state.viewer
        secret = self.secret_of(request)
        signed = await self.db.run(accounts.session_of, self.sessions, secret) if secret else None
        viewer = None
        if signed is not None:
            a = signed.account
            viewer = Viewer(a.id, a.email, a.name, a.role, a.rep_id, signed.csrf)
        request.state.viewer = viewer
        return viewer

    # --- dependencies ---------------------------------------------------------------

    def allowed(self, permission: str) -> Callable[[Request], Coroutine[Any, Any, Viewer]]:
        """A dependency: the signed-in Viewer, if its role has `permission`."""
        if permission not in PERMISSIONS:
            raise ValueError(f"no permission {permission!r}")

        async def signed_in_with_permission(request: Request) -> Viewer:
            viewer = await self.viewer_of(request)
            if viewer is None:
                raise NotSignedIn()
            if not viewer.may(permission):
                raise Forbidden(f"A {viewer.role} may not do this ({permission}).")
            return viewer

        return signed_in_with_permission

    def form_checked(self, permission: str) -> Callable[[Request], Coroutine[Any, Any, Viewer]]:
        """`allowed(permission)` and the CSRF token of the viewer's session, from the form's
        `csrf` field or the `X-CSRF-Token` header."""
        allowed = self.allowed(permission)

        async def checked(request: Request) -> Viewer:
            viewer = await allowed(request)
            sent = request.headers.get("x-csrf-token")
            if sent is None and _is_form(request):
                sent = (await request.form()).get("csrf")
            if not isinstance(sent, str) or not hmac.compare_digest(sent, viewer.csrf):
                raise Forbidden("The form's security token is missing or out of date: "
                                "reload the page and try again.")  # fmt: skip
            return viewer

        return checked

    # --- pages ----------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:  # fmt: skip
        viewer = getattr(request.state, "viewer", None)
        html = self.templates.get_template(template).render(
            request=request, viewer=viewer, now=datetime.now(UTC),
            csrf_field=lambda: _csrf_field(viewer), nav=_nav(viewer, request.url.path),
            **context,
        )  # fmt: skip
        return HTMLResponse(html, status_code=status)

    def login_url(self, request: Request) -> str:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return f"/console/login?next={quote(target, safe='')}"


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    return kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


def _csrf_field(viewer: Viewer | None) -> Markup:
    token = escape(viewer.csrf) if viewer else ""
    return Markup(f'<input type="hidden" name="csrf" value="{token}">')


def _nav(viewer: Viewer | None, path: str) -> list[dict[str, Any]]:
    if viewer is None:
        return []
    return [{"path": p, "label": label,
             "current": path == p or (p != "/console/" and path.startswith(p))}
            for permission, p, label in NAV if viewer.may(permission)]  # fmt: skip


def when(moment: datetime | str | None, seconds: bool = False) -> str:
    """A time as `2026-12-03 10:54 UTC` (a string is parsed as ISO 8601)."""
    if moment is None or moment == "":
        return "—"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def _asset_version(name: str) -> str:
    """A short digest of a static file, for its URL: a changed file is fetched anew."""
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)  # fmt: skip
    env.filters["when"] = when
    env.filters["thousands"] = lambda n: "—" if n is None else f"{n:,}"
    env.filters["percent"] = lambda x: "—" if x is None else f"{x:.1%}"
    env.globals["asset"] = {
        name: f"/console/static/{name}?v={_asset_version(name)}"
        for name in ("console.css", "console.js")
    }
    return env


def web_tracking(settings: Settings) -> dict[str, object]:
    """The tag a website's pages load the tracking snippet with, and who may send views
    (docs/tracking.md): shown on the Operations and Website pages."""
    return {"tag": f'<script src="{settings.public_url.rstrip("/")}/t.js" defer></script>',
            "origins": settings.tracking_origin_list(),
            "retention": settings.tracking_retention_days}  # fmt: skip


def page_responses(*html: int, redirect: str = "not signed in: to the sign-in page") -> dict:
    """A console route's `responses=`: 303 (a GET without a session: to the sign-in page),
    401 (a POST without one), 403 (a role without the permission, or no CSRF token), 422
    (a field not valid) as pages, the statuses of `html` as pages too, and the API's
    413 and 429 (its middleware's JSON)."""
    pages = tuple(sorted({401, 403, 422, *html}))
    return {303: {"description": redirect}, **error_responses(413, 429, html=pages)}
