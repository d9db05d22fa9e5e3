"""Console accounts: users and roles, passwords, signed-in sessions and API tokens.

- Passwords are hashed with argon2 (argon2-cffi's recommended parameters); a hash made
  with older parameters is upgraded at the next sign-in.
- A session's secret and an API token are random (32 bytes); only their SHA-256 is
  stored. A high-entropy secret needs no slow hash: nothing can be guessed from it.
- Every change to a user is written with its audit row (services/audit.py) in one
  transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from models.db import ApiToken, ConsoleSession, User, as_utc, utcnow
from services.audit import record

ROLES = ("admin", "marketer", "rep", "viewer")
# What an API token may be given: each scope opens routes (docs/api.md, Authentication).
SCOPES = ("leads:write", "events:write", "outcomes:write", "handoffs:answer")
ROLE_SCOPES = {
    "admin": SCOPES,
    "marketer": ("leads:write", "events:write", "outcomes:write"),
    "rep": ("handoffs:answer",),
    "viewer": (),
}
SESSION_DAYS = 7
MIN_PASSWORD = 12
_hasher = PasswordHasher()
# Compared against when the email is unknown, so a wrong email takes as long as a wrong
# password (no way to tell which accounts exist by timing).
_DUMMY_HASH = _hasher.hash("not a password of anyone's")


class AccountError(ValueError):
    """A refused change to an account; the message says which field and why. `status`:
    404 for an unknown user or token, 409 for a conflict (the email is taken), else 422."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    name: str
    role: str
    rep_id: str | None
    disabled: bool


@dataclass(frozen=True)
class SignedIn:
    account: Account
    csrf: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _account(user: User) -> Account:
    return Account(user.id, user.email, user.name, user.role, user.rep_id,
                   user.disabled_at is not None)  # fmt: skip


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")


def _check_role(role: str, rep_id: str | None, reps: set[str]) -> None:
    if role not in ROLES:
        raise AccountError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if role == "rep" and not rep_id:
        raise AccountError("rep: a rep's account names its rep in sales.yaml (--rep ID)")
    if role == "rep" and rep_id not in reps:
        raise AccountError(f"rep: no rep {rep_id!r} in sales.yaml ({', '.join(sorted(reps))})")
    if role != "rep" and rep_id:
        raise AccountError(f"rep: only a rep's account is linked to a rep, not a {role}'s")


def add_user(sessions: sessionmaker, actor: str, email: str, name: str, role: str,
             password: str, rep_id: str | None, reps: set[str]) -> Account:  # fmt: skip
    email = email.strip().lower()
    if "@" not in email:
        raise AccountError(f"email: {email!r} is not an email address")
    _check_role(role, rep_id, reps)
    _check_password(password)
    with sessions() as session:
        if session.scalar(select(User.id).where(User.email == email)):
            raise AccountError(f"email: there is already a user {email}", 409)
        user = User(email=email, name=name.strip() or email, role=role, rep_id=rep_id,
                    password_hash=_hasher.hash(password))  # fmt: skip
        session.add(user)
        session.flush()
        record(session, actor, "user.add", email, {"role": role, "rep_id": rep_id})
        session.commit()
        return _account(user)


FIRST_ADMIN = "admin@nurture.local"


def first_admin(sessions: sessionmaker, password: str) -> str | None:
    """On a database with no users (`nurture dev`, the demo), an admin to sign in with:
    its email; None when there are users already (nothing is changed then)."""
    with sessions() as session:
        if session.scalar(select(User.id).limit(1)):
            return None
    return add_user(sessions, "nurture dev", FIRST_ADMIN, "Admin", "admin", password, None,
                    set()).email  # fmt: skip


def list_users(sessions: sessionmaker) -> list[Account]:
    with sessions() as session:
        return [_account(u) for u in session.scalars(select(User).order_by(User.email))]


def _user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise AccountError(f"email: no user {email}", 404)
    return user


def disable_user(sessions: sessionmaker, actor: str, email: str) -> Account:
    """Disables the account and signs it out everywhere; its API tokens stop working."""
    with sessions() as session:
        user = _user(session, email)
        user.disabled_at = user.disabled_at or utcnow()
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
        record(session, actor, "user.disable", user.email)
        session.commit()
        return _account(user)


def enable_user(sessions: sessionmaker, actor: str, email: str) -> Account:
    with sessions() as session:
        user = _user(session, email)
        user.disabled_at = None
        record(session, actor, "user.enable", user.email)
        session.commit()
        return _account(user)


def reset_password(sessions: sessionmaker, actor: str, email: str, password: str) -> Account:
    """A new password; every session of the account is signed out."""
    _check_password(password)
    with sessions() as session:
        user = _user(session, email)
        user.password_hash = _hasher.hash(password)
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
        record(session, actor, "user.reset_password", user.email)
        session.commit()
        return _account(user)


def sign_in(
    sessions: sessionmaker, email: str, password: str, address: str
) -> tuple[str, SignedIn] | None:  # noqa: E501
    """A new session's secret and who it is, or None (wrong email or password, or a
    disabled account: the caller says the same for each). Both outcomes are audited."""
    email = email.strip().lower()
    with sessions() as session:
        user = session.scalar(select(User).where(User.email == email))
        if not _password_matches(user, password) or user is None or user.disabled_at:
            record(session, email[:320] or "-", "login.failed", None, {"address": address})
            session.commit()
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        secret, csrf = open_session(session, user.id)
        user.last_login_at = utcnow()
        record(session, user.email, "login", None, {"address": address})
        session.commit()
        return secret, SignedIn(_account(user), csrf)


def _password_matches(user: User | None, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash if user else _DUMMY_HASH, password) and bool(user)
    except (VerificationError, InvalidHashError):
        return False


def open_session(session: Session, user_id: str) -> tuple[str, str]:
    """A new session of the user in `session` (committed by the caller): its secret and
    its CSRF token."""
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(ConsoleSession(secret_hash=digest(secret), user_id=user_id, csrf=csrf,
                               expires_at=utcnow() + timedelta(days=SESSION_DAYS)))  # fmt: skip
    return secret, csrf


def session_of(sessions: sessionmaker, secret: str, now: datetime | None = None) -> SignedIn | None:
    """Who a session's secret signs in, or None (unknown, expired, or the user disabled)."""
    now = now or utcnow()
    with sessions() as session:
        row = session.execute(
            select(ConsoleSession, User).join(User, User.id == ConsoleSession.user_id)
            .where(ConsoleSession.secret_hash == digest(secret))
        ).first()  # fmt: skip
        if row is None or row[1].disabled_at or as_utc(row[0].expires_at) <= now:
            return None
        return SignedIn(_account(row[1]), row[0].csrf)


def sign_out(sessions: sessionmaker, secret: str) -> None:
    with sessions() as session:
        found = session.execute(
            select(ConsoleSession.user_id, User.email).join(User)
            .where(ConsoleSession.secret_hash == digest(secret))
        ).first()  # fmt: skip
        if found:
            session.execute(
                delete(ConsoleSession).where(ConsoleSession.secret_hash == digest(secret))
            )
            record(session, found.email, "logout")
            session.commit()


def create_token(sessions: sessionmaker, actor: str, email: str, name: str,
                 scopes: list[str]) -> tuple[str, list[str]]:  # fmt: skip
    """A new API token for the user (shown once) and its scopes. A scope must be one the
    user's role may have."""
    with sessions() as session:
        user = _user(session, email)
        allowed = ROLE_SCOPES[user.role]
        for scope in scopes:
            if scope not in SCOPES:
                raise AccountError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
            if scope not in allowed:
                raise AccountError(f"scope: a {user.role} may not have {scope!r} "
                                   f"(may: {', '.join(allowed) or 'none'})")  # fmt: skip
        scopes = sorted(set(scopes or allowed))
        if not scopes:
            raise AccountError(f"scope: a {user.role} may have no API token")
        token = "nt_" + secrets.token_urlsafe(32)
        session.add(ApiToken(user_id=user.id, name=name, token_hash=digest(token), scopes=scopes))
        record(session, actor, "token.create", user.email, {"name": name, "scopes": scopes})
        session.commit()
        return token, scopes


def list_tokens(sessions: sessionmaker) -> list[dict]:
    with sessions() as session:
        rows = session.execute(
            select(ApiToken, User.email).join(User).order_by(User.email, ApiToken.created_at)
        ).all()
        return [{"id": t.id, "user": email, "name": t.name, "scopes": t.scopes,
                 "created_at": t.created_at, "last_used_at": t.last_used_at,
                 "revoked": t.revoked_at is not None} for t, email in rows]  # fmt: skip


def revoke_token(sessions: sessionmaker, actor: str, token_id: str) -> None:
    with sessions() as session:
        token = session.get(ApiToken, token_id)
        if token is None:
            raise AccountError(f"token: no token {token_id}", 404)
        token.revoked_at = token.revoked_at or utcnow()
        record(session, actor, "token.revoke", token_id)
        session.commit()


@dataclass(frozen=True)
class TokenHolder:
    email: str
    scopes: tuple[str, ...]


def token_holder(sessions: sessionmaker, token: str) -> TokenHolder | None:
    """Who an API token belongs to and its scopes, or None (unknown, revoked, or the
    user disabled). Marks the token used."""
    with sessions() as session:
        row = session.execute(
            select(ApiToken, User).join(User)
            .where(ApiToken.token_hash == digest(token), ApiToken.revoked_at.is_(None),
                   User.disabled_at.is_(None))
        ).first()  # fmt: skip
        if row is None:
            return None
        session.execute(update(ApiToken).where(ApiToken.id == row[0].id)
                        .values(last_used_at=utcnow()))  # fmt: skip
        session.commit()
        return TokenHolder(row[1].email, tuple(row[0].scopes))
