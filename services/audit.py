"""The audit log: who did what, written in the same transaction as what it records, so a
change is never without its entry (and an entry never without its change).

Actors: a console user's email, `api-token` (NURTURE_API_TOKEN), a user token's owner,
or `cli:<operating-system user>` for commands run on the machine.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.db import AuditEntry
from services.json_output import jsonable

PAGE = 50


def record(session: Session, actor: str, action: str, target: str | None = None,
           detail: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Adds an entry to `session`; it lands with the caller's commit."""
    session.add(AuditEntry(actor=actor[:320], action=action,
                           target=None if target is None else str(target)[:320],
                           detail=None if detail is None else jsonable(detail)))  # fmt: skip


def record_now(sessions, actor: str, action: str, target: str | None = None,
               detail: dict[str, Any] | None = None) -> None:  # fmt: skip
    """An entry on its own, for work done in many transactions (a rescore of every lead,
    migrating leads in flight): written when the work is over, with what it did."""
    with sessions.begin() as session:
        record(session, actor, action, target, detail)


def cli_actor() -> str:
    """The actor of a command run on the machine: its operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for the uid (a container)
        return "cli:unknown"


@dataclass(frozen=True)
class Entry:
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None


def entries(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = PAGE,
) -> tuple[list[Entry], int | None]:
    """The newest entries (filtered by actor and action prefix), and the id to page on
    (None on the last page)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if actor:
        query = query.where(func.lower(AuditEntry.actor) == actor.strip().lower())
    if action:
        query = query.where(AuditEntry.action.startswith(action.strip()))
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    rows = list(session.scalars(query))
    more = rows[limit - 1].id if len(rows) > limit else None
    return [Entry(r.at, r.actor, r.action, r.target, r.detail) for r in rows[:limit]], more
