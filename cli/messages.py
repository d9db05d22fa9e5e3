"""`nurture messages`: list sends."""

from __future__ import annotations

import typer

from cli.common import console, errors
from infra.settings import get_settings

MESSAGE_STATUSES = (
    "claimed", "sending", "sent", "skipped", "deferred", "retrying", "failed", "unknown"
)  # fmt: skip


def messages(
    status: str = typer.Option(None, help=f"only this status: {', '.join(MESSAGE_STATUSES)}"),
    lead: str = typer.Option(None, help="only this lead (email or ID)"),
    limit: int = typer.Option(50, help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """List sends. `--status unknown` lists sends interrupted mid-call: they may or may not
    have reached the lead, are never repeated, and need a look at the provider's log.

    Examples:
      nurture messages --status unknown
      nurture messages --lead ada@example.com --json
    """
    from rich.table import Table
    from sqlalchemy import select

    from models.db import Lead, Message
    from services.json_output import dumps
    from services.runtime import open_database

    if status is not None and status not in MESSAGE_STATUSES:
        errors.print(f"--status must be one of {', '.join(MESSAGE_STATUSES)}, not {status!r}")
        raise typer.Exit(2)
    database = open_database(get_settings())
    with database.sessions() as session:
        query = select(Message).order_by(Message.created_at.desc()).limit(limit)
        if status:
            query = query.where(Message.status == status)
        if lead:
            row = Lead.find(session, lead)
            if row is None:
                errors.print(f"no lead {lead!r}")
                raise typer.Exit(1)
            query = query.where(Message.lead_id == row.id)
        rows = session.scalars(query).all()
    fields = ("created_at", "lead_id", "enrollment_id", "step_id", "channel", "status",
              "status_reason", "provider", "provider_message_id", "not_before")  # fmt: skip
    if as_json:
        for message in rows:
            print(dumps({f: getattr(message, f) for f in fields}, indent=None))
        return
    table = Table("created", "lead", "step", "channel", "status", "reason / provider id")
    for m in rows:
        detail = m.status_reason or m.provider_message_id or ""
        if m.status == "deferred" and m.not_before:
            detail = f"until {m.not_before:%Y-%m-%d %H:%M} UTC: {detail}"
        table.add_row(f"{m.created_at:%Y-%m-%d %H:%M:%S}", m.lead_id[:12], m.step_id or "",
                      m.channel, m.status, detail)  # fmt: skip
    console.print(table)
    console.print(f"{len(rows)} message(s)")
