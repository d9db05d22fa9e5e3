"""`nurture status LEAD`: everything about one lead in one place.

From the database: the profile, consent, the score card now with its reasons (and
`predicted` with its reasons when a predictive model is active) and the stage history
(scoring/explain.py, as `nurture score` shows them), enrollments, each message with the
responses counted for it (the rules of `nurture report`), the other responses and the
handoffs. From the lead's workflow (its `state` query), when
Temporal answers: the current sequence step, the next action time, what it waits for,
a deferred send and the open handoff. Temporal unreachable is said, not an error.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db import Enrollment, ExperimentAssignment, Handoff, Lead, Message, Response
from models.definition_set import Definitions
from scoring.explain import explain, print_explanation
from services.json_output import iso, jsonable
from services.reports import response_links
from services.stuck import stuck_leads

RESPONSES_SHOWN = 20  # in the text view; --json has them all


def lead_status(
    session: Session, definitions: Definitions, lead: Lead, now: datetime
) -> dict[str, Any]:
    """The database's part of the status (JSON-ready: moments as `json_output.iso`)."""
    profile = {name: getattr(lead, name) for name in Lead.PROFILE_FIELDS}
    profile |= {
        "id": lead.id, "segment": lead.segment, "stage": lead.stage, "score": lead.score,
        "fit_score": lead.fit_score, "engagement_score": lead.engagement_score,
        "grade": lead.grade, "owner_rep_id": lead.owner_rep_id,
        "sql_hold_until": iso(lead.sql_hold_until), "created_at": iso(lead.created_at),
        "consent": {
            "email": {"allowed": lead.email_consent, "reason": lead.email_opt_out_reason},
            "sms": {"allowed": lead.sms_consent, "reason": lead.sms_opt_out_reason},
        },
    }  # fmt: skip
    enrollments = session.scalars(
        select(Enrollment).where(Enrollment.lead_id == lead.id).order_by(Enrollment.started_at)
    ).all()
    sequence_of = {e.id: e.sequence_id for e in enrollments}
    messages = session.scalars(
        select(Message).where(Message.lead_id == lead.id).order_by(Message.created_at)
    ).all()
    links = response_links(lead.id)
    counted = defaultdict(Counter)  # message id -> response type -> how many
    linked: dict[str, str] = {}  # response id -> message id
    for message_id, response_id, kind in session.execute(
        select(links.c.message_id, links.c.response_id, links.c.type)
    ):
        if message_id is not None:
            counted[message_id][kind] += 1
            linked[response_id] = message_id
    responses = session.scalars(
        select(Response).where(Response.lead_id == lead.id).order_by(Response.occurred_at)
    ).all()
    step_of = {m.id: m.step_id for m in messages}
    handoffs = session.scalars(
        select(Handoff).where(Handoff.lead_id == lead.id).order_by(Handoff.cycle)
    ).all()
    assignments = session.scalars(
        select(ExperimentAssignment).where(ExperimentAssignment.lead_id == lead.id)
        .order_by(ExperimentAssignment.assigned_at, ExperimentAssignment.experiment)
    ).all()  # fmt: skip
    stuck = stuck_leads(session, now, lead_id=lead.id)
    card = explain(session, definitions, lead, now)
    profile["predicted"] = card["card"].get("predicted")  # None: no predictive model active
    return {
        "lead": profile,
        "stuck": jsonable(stuck[0].as_dict()) if stuck else None,
        "score": card,
        "enrollments": [
            {"id": e.id, "sequence": e.sequence_id, "version": e.sequence_version,
             "segment": e.segment, "status": e.status, "exit_reason": e.exit_reason,
             "started_at": iso(e.started_at), "ended_at": iso(e.ended_at)}
            for e in enrollments
        ],
        "messages": [
            {"id": m.id, "sequence": sequence_of.get(m.enrollment_id), "step": m.step_id,
             "channel": m.channel, "template": m.template, "status": m.status,
             "status_reason": m.status_reason, "delivery_status": m.delivery_status,
             "created_at": iso(m.created_at), "sent_at": iso(m.sent_at),
             "not_before": iso(m.not_before), "subject": m.subject,
             "responses": dict(sorted(counted[m.id].items()))}
            for m in messages
        ],
        "responses": [
            {"id": r.id, "type": r.type, "occurred_at": iso(r.occurred_at), "source": r.source,
             "message_id": linked.get(r.id), "step": step_of.get(linked.get(r.id)),
             "data": r.data, "delivered_to_workflow": r.delivered_at is not None}
            for r in responses
        ],
        "handoffs": [
            {"id": h.id, "cycle": h.cycle, "rep": h.rep_id, "status": h.status,
             "score": h.score, "grade": h.grade, "created_at": iso(h.created_at),
             "due_at": iso(h.due_at), "answered_at": iso(h.answered_at),
             "answered_by": h.answered_by, "answer_reason": h.answer_reason}
            for h in handoffs
        ],
        "experiments": [
            {"experiment": a.experiment, "arm": a.arm, "holdout": a.holdout,
             "assigned_at": iso(a.assigned_at), "enrollment_id": a.enrollment_id}
            for a in assignments
        ],
    }  # fmt: skip


async def workflow_status(settings, lead_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The lead's workflow: described, and its `state` query answered. Never raises:
    {"reachable": False, "error": ...} when Temporal does not answer."""
    from temporalio.service import RPCError, RPCStatusCode

    from services import lead_client
    from services.runtime import connect_temporal

    workflow_id = lead_client.lead_workflow_id(lead_id)
    out: dict[str, Any] = {"address": settings.temporal_address, "workflow_id": workflow_id}
    try:
        client = await asyncio.wait_for(connect_temporal(settings), timeout)
    except Exception as exc:  # refused, unresolvable, timed out: the DB part still shows
        return out | {"reachable": False, "error": _short(exc)}
    out["reachable"] = True
    handle = lead_client.handle(client, lead_id)
    rpc_timeout = timedelta(seconds=timeout)
    try:
        description = await handle.describe(rpc_timeout=rpc_timeout)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return out | {"running": False, "status": None, "error": "no workflow for this lead"}
        return out | {"error": _short(exc)}
    out["status"] = description.status.name if description.status else None
    attempt = description.raw_description.pending_workflow_task.attempt
    if attempt > 1:  # its task fails again and again: the lead is stuck (nurture doctor)
        out["workflow_task_attempt"] = attempt
    out["running"] = out["status"] == "RUNNING"
    try:
        state = await lead_client.state(handle, rpc_timeout)
    except Exception as exc:  # no worker polling, or a closed workflow nobody replays
        return out | {"error": f"state query not answered: {_short(exc)}"}
    # Not model_dump(mode="json"): that writes UTC as `Z`, every other --json `+00:00`.
    return out | {"state": jsonable(state)}


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


# --- text -------------------------------------------------------------------------------------


def _when(moment: str | None) -> str:
    return moment[:19].replace("T", " ") if moment else "-"


def _in(moment: str | None, now: datetime) -> str:
    if not moment:
        return ""
    seconds = (datetime.fromisoformat(moment) - now).total_seconds()
    if seconds < 0:
        return f" ({duration(-seconds)} ago)"
    return f" (in {duration(seconds)})"


def duration(seconds: float) -> str:
    """3d 4h, 2h 5m, 40s: the two biggest units."""
    seconds = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def print_status(console: Console, data: dict[str, Any], now: datetime) -> None:
    """The text view of `lead_status` (with `workflow_status` under "workflow")."""
    _print_profile(console, data["lead"])
    if data.get("stuck"):
        stuck = data["stuck"]
        console.print(f"  [red]stuck[/red]: {stuck['unscored']} response(s) delivered but not "
                      f"scored since {_when(stuck['since'])} UTC (see `nurture doctor`)",
                      highlight=False)  # fmt: skip
    _print_workflow(console, data.get("workflow"), now)
    console.print()
    print_explanation(console, data["score"])
    _print_enrollments(console, data["enrollments"])
    _print_messages(console, data["messages"])
    _print_responses(console, data["responses"])
    _print_handoffs(console, data["handoffs"])
    _print_experiments(console, data["experiments"])


def _print_profile(console: Console, lead: dict[str, Any]) -> None:
    """Who the lead is, where it stands (segment, stage, score, owner) and its consent."""
    name = " ".join(filter(None, (lead["first_name"], lead["last_name"])))
    console.print(f"[bold]{escape(lead['email'])}[/bold]  {escape(name)}  (lead {lead['id']})",
                  highlight=False)  # fmt: skip
    works = ", ".join(filter(None, (
        lead["title"], lead["company"],
        f"{lead['company_size']} people" if lead["company_size"] else None, lead["industry"],
    )))  # fmt: skip
    where = ", ".join(filter(None, (lead["country"], f"time zone {lead['timezone']}",
                                    lead["phone"])))  # fmt: skip
    for line in (works, where, f"source {lead['source']}" if lead["source"] else ""):
        if line:
            console.print(f"  {escape(line)}", highlight=False)
    predicted = lead.get("predicted")
    console.print(
        f"  segment {lead['segment'] or '-'}  stage [bold]{lead['stage']}[/bold]  score "
        f"{lead['score']:.1f}  grade {lead['grade'] or '-'}"
        + (f"  predicted {predicted:.0%}" if predicted is not None else "")
        + f"  owner {lead['owner_rep_id'] or '-'}  created {_when(lead['created_at'])}",
        highlight=False,
    )
    consent = ", ".join(
        f"{channel} " + ("allowed" if c["allowed"] else f"opted out ({c['reason'] or '-'})")
        for channel, c in lead["consent"].items()
    )
    console.print(f"  consent: {escape(consent)}", highlight=False)
    if lead["attributes"]:
        console.print(f"  attributes: {escape(str(lead['attributes']))}", highlight=False)


def _print_enrollments(console: Console, enrollments: list[dict[str, Any]]) -> None:
    if not enrollments:
        return
    table = Table("sequence", "status", "started", "ended", "exit reason", title="enrollments")
    for e in enrollments:
        table.add_row(f"{e['sequence']} v{e['version']}", e["status"], _when(e["started_at"]),
                      _when(e["ended_at"]), e["exit_reason"] or "")  # fmt: skip
    console.print(table)


def _print_messages(console: Console, messages: list[dict[str, Any]]) -> None:
    """Each message with the responses counted for it ("click ×2")."""
    if not messages:
        console.print("no messages")
        return
    table = Table("sent", "sequence", "step", "channel", "status", "delivery", "responses",
                  title="messages")  # fmt: skip
    for m in messages:
        counts = ", ".join(f"{kind.split('.', 1)[1]}" + (f" ×{n}" if n > 1 else "")
                           for kind, n in m["responses"].items())  # fmt: skip
        status = m["status"] + (f": {m['status_reason']}" if m["status_reason"] else "")
        table.add_row(_when(m["sent_at"] or m["created_at"]), m["sequence"] or "",
                      m["step"] or "", m["channel"], status, m["delivery_status"] or "",
                      counts)  # fmt: skip
    console.print(table)


def _print_responses(console: Console, responses: list[dict[str, Any]]) -> None:
    """The latest RESPONSES_SHOWN responses (--json has them all)."""
    if not responses:
        console.print("no responses")
        return
    shown = responses[-RESPONSES_SHOWN:]
    title = "responses" + (f" (latest {len(shown)} of {len(responses)}: --json lists all)"
                           if len(shown) < len(responses) else "")  # fmt: skip
    table = Table("occurred", "type", "source", "for step", "detail", title=title)
    for r in shown:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(r["data"].items())
                           if k in ("url", "step", "reason", "body", "via"))  # fmt: skip
        table.add_row(_when(r["occurred_at"]), r["type"], r["source"], r["step"] or "",
                      escape(detail[:60]))  # fmt: skip
    console.print(table)


def _print_handoffs(console: Console, handoffs: list[dict[str, Any]]) -> None:
    if not handoffs:
        return
    table = Table("cycle", "handoff", "rep", "status", "score", "created", "answered",
                  title="handoffs")  # fmt: skip
    for h in handoffs:
        answered = _when(h["answered_at"]) if h["answered_at"] else ""
        if h["answered_by"]:
            answered += f" by {h['answered_by']}"
        if h["answer_reason"]:
            answered += f" ({h['answer_reason']})"
        table.add_row(str(h["cycle"]), h["id"], h["rep"], h["status"],
                      f"{h['score']:.1f} {h['grade'] or ''}", _when(h["created_at"]),
                      answered)  # fmt: skip
    console.print(table)


def _print_experiments(console: Console, experiments: list[dict[str, Any]]) -> None:
    """The arm of each experiment the lead is in (a holdout is sent nothing more)."""
    if not experiments:
        return
    table = Table("experiment", "arm", "holdout", "assigned", title="experiments")
    for e in experiments:
        table.add_row(escape(e["experiment"]), escape(e["arm"]), "yes" if e["holdout"] else "",
                      _when(e["assigned_at"]))  # fmt: skip
    console.print(table)


def _print_workflow(console: Console, workflow: dict[str, Any] | None, now: datetime) -> None:
    if workflow is None:
        return
    if not workflow.get("reachable"):
        console.print(
            f"[yellow]Temporal is not reachable[/yellow] at {workflow['address']} "
            f"({escape(workflow['error'])}): the workflow's state is not shown, the rest "
            "is from the database",
            highlight=False,
        )
        return
    status = workflow.get("status") or "not found"
    head = f"workflow {workflow['workflow_id']}: {status.lower()}"
    if workflow.get("workflow_task_attempt"):
        head += f", [red]its task failing[/red] (attempt {workflow['workflow_task_attempt']})"
    state = workflow.get("state")
    if state is None:
        console.print(f"{head} ({escape(workflow.get('error') or 'no state')})", highlight=False)
        return
    console.print(head, highlight=False)
    if state["sequence_id"]:
        line = f"  sequence {state['sequence_id']} ({state['enrollment_status']})"
        if state["step_id"]:
            line += f"  current step [bold]{state['step_id']}[/bold]"
        if state["waiting_for"]:
            line += f"  waiting for {state['waiting_for']}"
        console.print(line, highlight=False)
    else:
        console.print("  not enrolled in a sequence")
    if state["next_action_at"]:
        console.print(f"  next action at {_when(state['next_action_at'])} UTC"
                      f"{_in(state['next_action_at'], now)}", highlight=False)  # fmt: skip
    if state["deferred"]:
        d = state["deferred"]
        console.print(f"  deferred: {d['channel']} step {d['step_id']} until {_when(d['until'])}"
                      f" UTC ({escape(d['reason'])})", highlight=False)  # fmt: skip
    if state["sent_steps"]:
        console.print(f"  sent steps: {', '.join(state['sent_steps'])}", highlight=False)
    if state["handoff"]:
        h = state["handoff"]
        due = f", due {_when(h['due_at'])} UTC" if h["due_at"] and h["status"] == "pending" else ""
        console.print(f"  handoff {h['handoff_id']}: {h['status']} (rep {h['rep_id']}{due})",
                      highlight=False)  # fmt: skip
    if state["cool_down_until"]:
        console.print(f"  turned down by sales: nurtured again from "
                      f"{_when(state['cool_down_until'])} UTC", highlight=False)  # fmt: skip
    if state["next_rescore_at"]:
        console.print(f"  next decay rescore at {_when(state['next_rescore_at'])} UTC",
                      highlight=False)  # fmt: skip
    for problem in state["send_problems"]:
        console.print(f"  [red]send problem[/red] {escape(problem)}", highlight=False)
