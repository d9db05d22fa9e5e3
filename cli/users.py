"""`nurture users ...`: console and API accounts, their API tokens, and the audit log.

Passwords are never arguments (a command line is visible to every user of the machine):
they are asked for, or read from standard input when it is not a terminal.
"""

from __future__ import annotations

import sys

import typer

from cli.common import console, errors, load
from infra.settings import get_settings

users_app = typer.Typer(help="Console users and roles, API tokens, and the audit log.",
                        no_args_is_help=True)  # fmt: skip


def _sessions():
    from services.runtime import open_database

    return open_database(get_settings()).sessions


def _password() -> str:
    if sys.stdin.isatty():
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    return sys.stdin.readline().rstrip("\r\n")


def _run(fn, *args):
    """Runs an account change; a refused one is printed (which field, why) and exits 1."""
    from services.accounts import AccountError

    try:
        return fn(_sessions(), *args)
    except AccountError as exc:
        errors.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@users_app.command("add")
def add(
    email: str = typer.Argument(..., help="the user's email: the sign-in name"),
    role: str = typer.Option(..., help="admin, marketer, rep or viewer"),
    name: str = typer.Option("", help="the name shown in the console"),
    rep: str = typer.Option(None, help="for a rep: its ID in sales.yaml"),
) -> None:
    """Add a user (the password is asked for, or read from standard input).

    Example: nurture users add ada@example.com --role rep --rep alice
    """
    from services.accounts import add_user
    from services.audit import cli_actor

    reps = {r.id for r in load(get_settings()).sales.reps}
    account = _run(add_user, cli_actor(), email, name, role, _password(), rep, reps)
    console.print(f"added {account.email} ({account.role})")


@users_app.command("list")
def list_users() -> None:
    """Every user, its role and whether it is disabled.

    Example: nurture users list
    """
    from services.accounts import list_users as read

    for account in read(_sessions()):
        state = "disabled" if account.disabled else "active"
        rep = f" rep={account.rep_id}" if account.rep_id else ""
        console.print(f"{account.email:<32} {account.role:<9} {state:<8} {account.name}{rep}",
                      highlight=False)  # fmt: skip


@users_app.command("disable")
def disable(email: str = typer.Argument(..., help="the user's email")) -> None:
    """Disable a user: signed out everywhere, its API tokens refused.

    Example: nurture users disable ada@example.com
    """
    from services.accounts import disable_user
    from services.audit import cli_actor

    console.print(f"disabled {_run(disable_user, cli_actor(), email).email}")


@users_app.command("enable")
def enable(email: str = typer.Argument(..., help="the user's email")) -> None:
    """Enable a disabled user again.

    Example: nurture users enable ada@example.com
    """
    from services.accounts import enable_user
    from services.audit import cli_actor

    console.print(f"enabled {_run(enable_user, cli_actor(), email).email}")


@users_app.command("reset-password")
def reset_password(email: str = typer.Argument(..., help="the user's email")) -> None:
    """Give a user a new password (asked for, or from standard input); it is signed out
    everywhere.

    Example: nurture users reset-password ada@example.com
    """
    from services.accounts import reset_password as reset
    from services.audit import cli_actor

    console.print(f"new password for {_run(reset, cli_actor(), email, _password()).email}")


@users_app.command("token")
def token(
    email: str = typer.Argument(..., help="the user whose token it is"),
    name: str = typer.Option(..., help="what the token is for, e.g. 'website form'"),
    scope: list[str] = typer.Option(None, help="leads:write, events:write, outcomes:write, "
                                    "handoffs:answer (repeat; none: all the role may have)"),
) -> None:  # fmt: skip
    """Make an API token; it is printed once, on standard output.

    Example: nurture users token forms@example.com --name "website form" --scope events:write
    """
    from services.accounts import create_token
    from services.audit import cli_actor

    made, scopes = _run(create_token, cli_actor(), email, name, list(scope or []))
    errors.print(f"token {name!r} for {email}, scopes {', '.join(scopes)} (shown once):")
    print(made)


@users_app.command("tokens")
def tokens() -> None:
    """Every API token: whose, what for, its scopes, when last used.

    Example: nurture users tokens
    """
    from services.accounts import list_tokens

    for row in list_tokens(_sessions()):
        used = f"{row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never"
        state = "revoked" if row["revoked"] else "active"
        console.print(f"{row['id']}  {row['user']:<28} {row['name']:<20} {state:<7} "
                      f"used {used}  {','.join(row['scopes'])}", highlight=False)  # fmt: skip


@users_app.command("revoke")
def revoke(token_id: str = typer.Argument(..., help="the token's ID (`nurture users tokens`)")):
    """Revoke an API token (refused within 30 s by every API process).

    Example: nurture users revoke 3f2a9c...
    """
    from services.accounts import revoke_token
    from services.audit import cli_actor

    _run(revoke_token, cli_actor(), token_id)
    console.print(f"revoked {token_id}")


@users_app.command("audit")
def audit_log(
    actor: str = typer.Option(None, help="only this actor (an email, cli:NAME, api-token)"),
    action: str = typer.Option(None, help="only actions starting with this, e.g. handoff."),
    limit: int = typer.Option(50, min=1, max=1000, help="how many, newest first"),
) -> None:
    """The audit log: who did what, newest first.

    Example: nurture users audit --action handoff.
    """
    from services.audit import entries

    with _sessions()() as session:
        rows, _more = entries(session, actor=actor, action=action, limit=limit)
    for entry in rows:
        console.print(f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.actor:<28} {entry.action:<20} "
                      f"{entry.target or ''}", highlight=False)  # fmt: skip
