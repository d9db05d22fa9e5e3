"""`nurture handoff ...`: the handoffs to sales, and answering them from a terminal."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from models.workflow_io import REJECT_REASONS
from services.json_output import dumps, iso

handoff_app = typer.Typer(
    help="Handoffs to sales: list, show and answer them.", no_args_is_help=True
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
STATUSES = ("pending", "accepted", "rejected", "disqualified")


def _sessions():
    from infra.settings import get_settings
    from services.runtime import open_database

    settings = get_settings()
    return settings, open_database(settings).sessions


@handoff_app.command("list")
def list_handoffs(
    status: str | None = typer.Option(None, help=f"only these: {', '.join(STATUSES)}"),
    rep: str | None = typer.Option(None, help="only this rep's (id)"),
    limit: int = typer.Option(50, min=1, help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="as JSON"),
) -> None:
    """List handoffs, newest first.

    Examples:
      nurture handoff list --status pending
      nurture handoff list --rep maya --json
    """
    from sqlalchemy import select

    from models.db import Handoff, Lead

    if status is not None and status not in STATUSES:
        errors.print(f"--status must be one of {', '.join(STATUSES)}")
        raise typer.Exit(2)
    _settings, sessions = _sessions()
    with sessions() as session:
        query = select(Handoff, Lead.email).join(Lead, Lead.id == Handoff.lead_id)
        if status:
            query = query.where(Handoff.status == status)
        if rep:
            query = query.where(Handoff.rep_id == rep)
        rows = session.execute(query.order_by(Handoff.created_at.desc()).limit(limit)).all()
        items = [
            {"id": h.id, "lead": email, "rep": h.rep_id, "status": h.status,
             "score": round(h.score, 1), "grade": h.grade, "cycle": h.cycle,
             "created_at": iso(h.created_at), "due_at": iso(h.due_at),
             "reminders": h.reminders, "reassignments": h.reassignments,
             "answer_reason": h.answer_reason}
            for h, email in rows
        ]  # fmt: skip
    if as_json:
        console.print_json(dumps(items))
        return
    table = Table("handoff", "lead", "rep", "status", "score", "created", "due", "reason")
    for item in items:
        table.add_row(item["id"], item["lead"], item["rep"], item["status"],
                      f"{item['score']} {item['grade'] or ''}", item["created_at"][:16],
                      (item["due_at"] or "-")[:16], item["answer_reason"] or "")  # fmt: skip
    console.print(table)


@handoff_app.command("show")
def show(handoff_id: str = typer.Argument(..., help="the handoff's ID")) -> None:
    """A handoff and everything that happened to it: routing, notifications, reminders,
    reassignments, the answer.

    Example:
      nurture handoff show 3f2a9c...
    """
    from sqlalchemy import select

    from models.db import Handoff, HandoffEvent, as_utc

    _settings, sessions = _sessions()
    with sessions() as session:
        handoff = session.get(Handoff, handoff_id)
        if handoff is None:
            errors.print(f"no handoff {handoff_id}")
            raise typer.Exit(1)
        console.print(f"handoff {handoff.id}  lead {handoff.lead_id}  cycle {handoff.cycle}")
        console.print(f"rep {handoff.rep_id}  status {handoff.status}  score {handoff.score:.1f} "
                      f"grade {handoff.grade or '-'}  pool {handoff.pool or '-'}")  # fmt: skip
        console.print(f"why this rep: {handoff.routing or '-'}")
        console.print(f"why now: {handoff.reason}")
        events = session.scalars(
            select(HandoffEvent).where(HandoffEvent.handoff_id == handoff_id)
            .order_by(HandoffEvent.id)
        ).all()  # fmt: skip
        table = Table("at", "what", "rep", "channel", "status", "detail")
        for event in events:
            table.add_row(f"{as_utc(event.created_at):%Y-%m-%d %H:%M:%S}", event.kind,
                          event.rep_id or "", event.channel or "", event.status,
                          (event.detail or "")[:80])  # fmt: skip
        console.print(table)


@handoff_app.command("answer")
def answer(
    handoff_id: str = typer.Argument(..., help="the handoff's ID"),
    decision: str = typer.Argument(..., help="accept, reject or disqualify"),
    reason: str | None = typer.Option(None, help=f"needed to reject: {', '.join(REJECT_REASONS)}"),
    note: str | None = typer.Option(None, help="free text kept with the answer"),
    by: str = typer.Option("cli", help="who answers (a rep's id)"),
) -> None:
    """Answer a handoff: accept it, reject it (the lead is recycled into nurture after
    the cool-down in sales.yaml) or disqualify it. A handoff takes one answer.

    Examples:
      nurture handoff answer 3f2a9c... accept
      nurture handoff answer 3f2a9c... reject --reason not_ready --note "call in Q3"

    Exit codes: 0 answered; 1 refused (already answered, unknown handoff, Temporal
    unreachable); 2 bad usage.
    """
    from models.workflow_io import HandoffAnswer
    from services.answering import AnswerRefused, submit_answer
    from services.audit import cli_actor, record_now
    from services.runtime import connect_temporal

    if decision not in ("accept", "reject", "disqualify"):
        errors.print("the answer must be accept, reject or disqualify")
        raise typer.Exit(2)
    if reason is not None and reason not in REJECT_REASONS:
        errors.print(f"--reason must be one of {', '.join(REJECT_REASONS)}")
        raise typer.Exit(2)
    if decision == "reject" and reason is None:
        errors.print(f"a rejection needs --reason, one of {', '.join(REJECT_REASONS)}")
        raise typer.Exit(2)
    settings, sessions = _sessions()

    async def run():
        try:
            client = await connect_temporal(settings)
        except RuntimeError as exc:  # the SDK's "failed client connect"
            raise AnswerRefused(
                f"Temporal is not reachable ({exc}); nothing changed", 503
            ) from None
        request = HandoffAnswer(handoff_id=handoff_id, answer=decision, reason=reason,
                                note=note, by=by)  # fmt: skip
        return await submit_answer(client, sessions, request)

    try:
        result = asyncio.run(run())
    except AnswerRefused as exc:
        errors.print(f"not answered: {exc}")
        raise typer.Exit(1) from None
    detail = {"answer": decision, "reason": reason, "by": by}
    record_now(sessions, cli_actor(), "handoff.answer", handoff_id, detail)
    console.print(f"{result.message}; the lead is now {result.stage}")
