"""Users and API tokens (admins): add, disable and enable, reset a password, make and
revoke tokens. Every change is audited (services/accounts.py)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import EmailStr

from api.console.web import Console, Viewer, page_responses
from services import accounts
from services.accounts import AccountError

Email = Annotated[str, Form(min_length=1, max_length=320)]
NewEmail = Annotated[EmailStr, Form(max_length=320)]
Password = Annotated[str, Form(min_length=accounts.MIN_PASSWORD, max_length=1000)]


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    allowed, checked = console.allowed("users"), console.form_checked("users")
    reps = {rep.id for rep in console.definitions.sales.reps}

    async def page(request: Request, status: int = 200, **context) -> HTMLResponse:
        users = await console.db.run(accounts.list_users, console.sessions)
        tokens = await console.db.run(accounts.list_tokens, console.sessions)
        return console.render(
            request,
            "users/list.html",
            status,
            users=users,
            tokens=tokens,
            roles=accounts.ROLES,
            reps=sorted(reps),
            scopes=accounts.SCOPES,
            flash=context.pop("flash", request.query_params.get("flash")),
            **context,
        )

    async def change(request: Request, fn, *args) -> HTMLResponse | RedirectResponse:
        """Runs an account change; a refusal re-renders the page 422 saying why."""
        try:
            result = await console.db.run(fn, console.sessions, *args)
        except AccountError as exc:  # the form's fields passed: the state refuses it
            return await page(request, 404 if exc.status == 404 else 409, problem=str(exc))
        return result

    def done(message: str) -> RedirectResponse:
        return RedirectResponse(f"/console/users?flash={quote(message)}", status_code=303)

    @router.get("/console/users", response_class=HTMLResponse, responses=page_responses())
    async def users_page(request: Request, _v: Viewer = Depends(allowed)):
        """Every account and API token."""
        return await page(request)

    @router.post(
        "/console/users",
        response_class=HTMLResponse,
        responses=page_responses(404, 409, redirect="added: back to the list"),
    )
    async def add(
        request: Request,
        email: NewEmail,
        password: Password,
        role: Annotated[Literal["admin", "marketer", "rep", "viewer"], Form()],
        name: Annotated[str, Form(max_length=200)] = "",
        rep_id: Annotated[str, Form()] = "",
        viewer: Viewer = Depends(checked),
    ):
        """Adds a user. 422: a field is not valid (the page says which)."""
        added = await change(
            request,
            accounts.add_user,
            viewer.email,
            email,
            name,
            role,
            password,
            rep_id or None,
            reps,
        )
        return added if isinstance(added, HTMLResponse) else done(f"Added {added.email}.")

    @router.post(
        "/console/users/{user_id}/{action}",
        response_class=HTMLResponse,
        responses=page_responses(404, 409, redirect="done: back to the list"),
    )
    async def enable_or_disable(
        request: Request,
        user_id: str,
        action: Literal["disable", "enable"],
        viewer: Viewer = Depends(checked),
    ):
        """`disable` (signed out everywhere, tokens stop working) or `enable` a user."""
        fns = {"disable": accounts.disable_user, "enable": accounts.enable_user}
        users = {u.id: u for u in await console.db.run(accounts.list_users, console.sessions)}
        if action not in fns or user_id not in users:
            return console.render(
                request, "message.html", 404, heading="Not found", message="No such user or action."
            )
        if action == "disable" and user_id == viewer.user_id:
            return await page(request, 409, problem="You cannot disable your own account.")
        done_ = await change(request, fns[action], viewer.email, users[user_id].email)
        return (
            done_ if isinstance(done_, HTMLResponse) else done(f"{action.title()}d {done_.email}.")
        )

    @router.post(
        "/console/users/reset-password",
        response_class=HTMLResponse,
        responses=page_responses(404, 409, redirect="done: back to the list"),
    )
    async def reset(
        request: Request, email: Email, password: Password, viewer: Viewer = Depends(checked)
    ):
        """A new password; the user is signed out everywhere."""
        reset_ = await change(request, accounts.reset_password, viewer.email, email, password)
        return reset_ if isinstance(reset_, HTMLResponse) else done(f"New password for {email}.")

    @router.post("/console/tokens", response_class=HTMLResponse, responses=page_responses(404, 409))
    async def make_token(
        request: Request,
        email: Email,
        name: Annotated[str, Form(min_length=1, max_length=100)],
        viewer: Viewer = Depends(checked),
    ):
        """Makes an API token and shows it once. Scopes: the form's `scope` fields."""
        scopes = [s for s in (await request.form()).getlist("scope") if isinstance(s, str)]
        made = await change(request, accounts.create_token, viewer.email, email, name, scopes)
        if isinstance(made, HTMLResponse):
            return made
        return await page(request, new_token=made[0], flash=f"Token {name} for {email}.")

    @router.post(
        "/console/tokens/{token_id}/revoke",
        response_class=HTMLResponse,
        responses=page_responses(404, 409, redirect="revoked: back to the list"),
    )
    async def revoke(request: Request, token_id: str, viewer: Viewer = Depends(checked)):
        """Revokes an API token: it is refused from the next request."""
        revoked = await change(request, accounts.revoke_token, viewer.email, token_id)
        return revoked if isinstance(revoked, HTMLResponse) else done("Token revoked.")

    return router
