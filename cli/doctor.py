"""`nurture doctor`: leads whose workflow is not taking their responses (services/stuck.py).

Registered on the `nurture` app at the end of cli/app.py. Exit codes: 0 nothing
stuck; 1 stuck leads listed (so a cron job or a monitor can alert on it); 2 bad usage.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import typer
from rich.console import Console
from rich.markup import escape

errors = Console(stderr=True, soft_wrap=True)
TEMPORAL_TIMEOUT = 10.0  # seconds to reach Temporal before listing from the database alone


def doctor(
    older_than: float = typer.Option(
        300, min=0, help="seconds a delivered response may stay unscored before it counts"
    ),
    limit: int = typer.Option(100, min=1, help="at most this many leads"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of text"),
) -> None:
    """List stuck leads: responses delivered to the lead's workflow more than
    --older-than seconds ago and still not scored, with what Temporal says about the
    workflow (the failing workflow task's attempt and its last failure). Exit 1 if any.

    Examples:
      nurture doctor
      nurture doctor --older-than 60 --json
    """
    from infra.settings import get_settings
    from services.json_output import dumps
    from services.runtime import open_database
    from services.stuck import stuck_leads

    settings = get_settings()
    database = open_database(settings)
    with database.sessions() as session:
        stuck = stuck_leads(session, older_than=timedelta(seconds=older_than), limit=limit)
    note = asyncio.run(_explain(settings, stuck)) if stuck else None
    if as_json:
        print(dumps({"stuck": [lead.as_dict() for lead in stuck], "note": note}))
    else:
        console = Console(soft_wrap=True, highlight=False)
        for lead in stuck:
            console.print(escape(lead.describe()))
        console.print(f"{len(stuck)} stuck lead(s)" + (f" ({note})" if note else ""))
    if stuck:
        raise typer.Exit(1)


async def _explain(settings, stuck) -> str | None:
    """Temporal's side, or a note saying why it is missing."""
    from services.runtime import connect_temporal
    from services.stuck import explain

    try:
        client = await asyncio.wait_for(connect_temporal(settings), TEMPORAL_TIMEOUT)
        await asyncio.wait_for(explain(client, stuck), TEMPORAL_TIMEOUT * 3)
    except Exception as exc:  # the database's list stands on its own
        return f"Temporal not consulted: {type(exc).__name__}: {exc}"
    return None
