"""`nurture consent`: show or change a lead's consent by hand."""

from __future__ import annotations

import typer

from cli.common import console, errors
from infra.settings import get_settings
from models.consent import LEGAL_BASES


def consent(
    lead: str = typer.Argument(..., help="the lead's email address or ID"),
    channel: str = typer.Option(None, help="email or sms"),
    opt_out: bool = typer.Option(None, "--opt-out/--opt-in", help="change consent"),
    reason: str = typer.Option(None, help="why (kept in the consent history)"),
    source: str = typer.Option(None, help="where it was given or withdrawn, e.g. 'phone call'"),
    basis: str = typer.Option(None, help="the legal basis: " + ", ".join(LEGAL_BASES)),
) -> None:
    """Show a lead's consent per channel and its history, or change it by hand.

    Examples:
      nurture consent ada@example.com
      nurture consent ada@example.com --channel sms --opt-out --reason "asked by phone"
      nurture consent ada@example.com --channel email --opt-in --source "trade fair" \\
        --basis consent
    """
    from sqlalchemy import select

    from models.consent import ConsentEffect, set_consent
    from models.db import ConsentChange, Lead
    from services.audit import cli_actor, record
    from services.runtime import open_database

    if (channel is None) != (opt_out is None):
        errors.print("give both --channel and --opt-out/--opt-in to change consent")
        raise typer.Exit(2)
    if channel not in (None, "email", "sms"):
        errors.print(f"--channel must be email or sms, not {channel!r}")
        raise typer.Exit(2)
    if basis not in (None, *LEGAL_BASES):
        errors.print(f"--basis must be one of {', '.join(LEGAL_BASES)}, not {basis!r}")
        raise typer.Exit(2)
    if (source or basis) and channel is None:
        errors.print("--source and --basis go with a change: give --channel and --opt-in/--opt-out")
        raise typer.Exit(2)
    database = open_database(get_settings())
    with database.sessions.begin() as session:
        row = Lead.find(session, lead)
        if row is None:
            errors.print(f"no lead {lead!r} (give an email address or a lead ID)")
            raise typer.Exit(1)
        if channel is not None:
            effect = ConsentEffect(channel, not opt_out, "manual", reason, source, basis)
            changed = set_consent(session, row, effect)
            if changed:
                record(session, cli_actor(), "consent.change", row.email,
                       {"channel": channel, "opted_in": not opt_out, "reason": reason,
                        "source": source, "basis": basis})  # fmt: skip
            verb = "opted out of" if opt_out else "opted in to"
            console.print(f"{row.email} {verb} {channel}" + ("" if changed else " (no change)"))
        for name in ("email", "sms"):
            state = f"opted out: {getattr(row, f'{name}_opt_out_reason') or ''}"
            if getattr(row, f"{name}_consent"):
                state = "allowed"
            elif name == "email" and row.email_confirmation == "pending":
                state = "waiting for the lead's confirmation (double opt-in)"
            console.print(f"{name:<6} {state}", highlight=False)
        history = session.scalars(
            select(ConsentChange).where(ConsentChange.lead_id == row.id)
            .order_by(ConsentChange.id)
        )  # fmt: skip
        for change in history:
            direction = "in " if change.opted_in else "out"
            console.print(
                f"  {change.created_at:%Y-%m-%d %H:%M} {change.channel:<5} {direction} "
                f"{change.reason}"
                + (f" ({change.detail})" if change.detail else "")
                + _told(change),
                highlight=False,
                markup=False,  # the [told] part is text, not rich's markup
            )


def _told(change) -> str:
    """What intake was told with the change: status, basis, source and time given."""
    parts = [change.status if change.basis or change.source else None,
             change.basis and f"basis {change.basis}", change.source and f"from {change.source}",
             change.given_at and f"given {change.given_at:%Y-%m-%d %H:%M}"]  # fmt: skip
    told = ", ".join(part for part in parts if part)
    return f" [{told}]" if told else ""
