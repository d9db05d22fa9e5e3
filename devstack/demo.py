"""`nurture demo`: the whole engine on the embedded defaults, end to end, in about a minute.

It starts its own Temporal dev server (in memory), worker and API on free ports,
with a fresh SQLite database, imports the example leads through `POST /leads`
into the seconds-long `demo` sequence, then plays responses through the real
events API (`POST /events`) while printing what the engine does, as it does it,
from the database: messages sent, score changes, stage changes and handoffs. Sales
then accepts the hot leads' handoffs and the CRM posts their outcomes (`POST
/outcomes`: a win, a loss, an open deal), so `nurture report` shows the funnel to won
and `--attribution` the revenue by sequence.
"""

from __future__ import annotations

import asyncio
import csv
import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from devstack.stack import RunningStack, console_sign_in, running_stack
from devstack.temporal_server import TemporalDevServer, free_port
from infra.settings import Settings, get_settings
from models.db import Handoff, Lead, Message, SalesRepRow, ScoreChange, StageChange
from services.attribution_report import attribution
from services.reports import ReportFilter

LEADS_FILE = Path("examples/leads.csv")
# What a hot lead does, in order: enough to pass MQL and then SQL.
HOT_JOURNEY = [
    ("email.open", {}),
    ("email.click", {"step": "welcome"}),
    ("page.view", {"url": "/pricing"}),
    # A demo request that answers BANT's budget and timeline: SQL needs them too.
    ("form.submitted", {"form": "demo-request", "budget": "approved", "timeline": "this quarter"}),
    ("content.download", {"asset": "roi-calculator"}),
    ("product.action", {"action": "invite_teammate"}),
    ("webinar.attended", {"webinar": "product-tour"}),
    ("trial.started", {}),
    ("email.reply", {"step": "check_in"}),
]
HOT_LEADS = ("priya.natarajan@example.com", "tom.becker@example.org", "raj.patel@example.com")
# What sales makes of the hot leads, posted as the CRM would (POST /outcomes): a win, a
# loss (recycled into nurture after the cool-down) and a deal still open.
OUTCOMES = [
    ("priya.natarajan@example.com", [("created", "18000"), ("won", "24000")]),
    ("tom.becker@example.org", [("created", "9000"), ("lost", "9000")]),
    ("raj.patel@example.com", [("created", "12000")]),
]
WARM_JOURNEY = [
    ("email.open", {}),
    ("email.click", {"step": "welcome"}),
    ("page.view", {"url": "/blog"}),
]


def demo_settings(base: Settings) -> Settings:
    state = base.state_dir / "demo"
    shutil.rmtree(state, ignore_errors=True)  # a fresh run every time
    return base.model_copy(
        update={
            "state_dir": state,
            "database_url": None,  # the embedded default: SQLite under the demo state dir
            "temporal_address": f"127.0.0.1:{free_port()}",
            "api_port": free_port(),
            "task_queue": "nurture-demo",
        }
    )


def run_demo(console: Console, timeout: float) -> bool:
    settings = demo_settings(get_settings())
    server = TemporalDevServer(
        port=int(settings.temporal_address.rsplit(":", 1)[1]),
        ui_port=None,
        db_file=None,
        log_file=settings.state_dir / "temporal.log",
    )
    console.rule("Nurture demo")
    console.print("starting the Temporal dev server, a worker and the API...")
    with server:
        return asyncio.run(_demo(console, settings, timeout))


async def _demo(console: Console, settings: Settings, timeout: float) -> bool:
    started = time.monotonic()
    async with running_stack(settings) as stack:
        console.print(f"console: {console_sign_in(stack)}", highlight=False)
        headers = {"Authorization": f"Bearer {settings.resolved_api_token()}"}
        async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as http:
            watcher = asyncio.create_task(_watch(console, stack))
            leads = await _import_leads(console, http)
            await _play_responses(console, http, leads, started, timeout)
            remaining = max(5.0, timeout - (time.monotonic() - started))
            handed_off = await _wait_for_handoffs(stack, len(HOT_LEADS), min(30.0, remaining))
            if handed_off:
                await _accept_handoffs(console, http, stack)
                await _post_outcomes(console, http)
                await _wait_for_stages(stack, len(OUTCOMES), 15.0)
            watcher.cancel()
        _summary(console, stack, time.monotonic() - started)
    if handed_off:
        console.print(f"[green]demo ok[/green]: {handed_off} lead(s) handed off to sales")
    else:
        console.print("[red]demo failed[/red]: no lead was handed off in time")
    return handed_off > 0


def _check(response: httpx.Response, what: str) -> None:
    """Fail with the API's own explanation, not just the status line."""
    if response.is_error:
        raise RuntimeError(f"{what}: the API answered {response.status_code}: {response.text}")


async def _import_leads(console: Console, http: httpx.AsyncClient) -> list[dict]:
    with LEADS_FILE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    leads = []
    for row in rows:
        payload = {key: value for key, value in row.items() if value}
        if "company_size" in payload:
            payload["company_size"] = int(payload["company_size"])
        payload["sequence"] = "demo"  # the seconds-long sequence; the segment is still chosen
        response = await http.post("/leads", json=payload)
        _check(response, f"{LEADS_FILE.name} lead {payload.get('email')}")
        body = response.json()
        leads.append(payload | body)
        console.print(
            f"[cyan]enrolled[/cyan] {payload['email']:<30} segment={body['segment']:<20} "
            f"sequence={body['sequence']}",
            highlight=False,
        )
    return leads


async def _play_responses(
    console: Console, http: httpx.AsyncClient, leads: list[dict], started: float, timeout: float
) -> None:
    """Three hot leads walk the hot journey, others browse a little; one event every ~1.5 s."""
    rng = random.Random(7)
    hot = [lead for lead in leads if lead["email"] in HOT_LEADS]
    warm = rng.sample([lead for lead in leads if lead not in hot], 6)
    plan: list[tuple[dict, str, dict]] = []
    for step in range(max(len(HOT_JOURNEY), len(WARM_JOURNEY))):
        for lead in hot:
            if step < len(HOT_JOURNEY):
                plan.append((lead, *HOT_JOURNEY[step]))
        for lead in warm:
            if step < len(WARM_JOURNEY) and rng.random() < 0.6:
                plan.append((lead, *WARM_JOURNEY[step]))
    await asyncio.sleep(3)  # let the welcome emails go out first
    for index in range(0, len(plan), 4):
        if time.monotonic() - started > timeout:
            return
        batch = [
            {
                "lead_id": lead["lead_id"],
                "type": kind,
                "data": data,
                "event_id": f"demo-{lead['lead_id']}-{kind}-{n}",
            }  # fmt: skip
            for n, (lead, kind, data) in enumerate(plan[index : index + 4], start=index)
        ]
        response = await http.post("/events", json=batch)
        _check(response, "demo events")
        for event, (lead, kind, _data) in zip(batch, plan[index : index + 4], strict=True):
            text = f"{kind}  (POST /events {event['event_id'][-20:]})"
            console.print(
                f"[magenta]response[/magenta] {lead['email']:<30} {text}", highlight=False
            )
        await asyncio.sleep(1.5)


async def _accept_handoffs(console: Console, http: httpx.AsyncClient, stack: RunningStack) -> None:
    """Sales accepts the hot leads' handoffs before the CRM opens their opportunities, as
    a rep would: the funnel (`nurture report`) then runs through accepted to won."""
    with stack.database.sessions() as session:
        pending = session.execute(
            select(Handoff.id, Handoff.rep_id, Lead.email).join(Lead, Lead.id == Handoff.lead_id)
            .where(Handoff.status == "pending", Lead.email.in_(HOT_LEADS))
        ).all()  # fmt: skip
    for handoff_id, rep_id, email in pending:
        answer = {"answer": "accept", "by": rep_id}
        response = await http.post(f"/handoffs/{handoff_id}/answer", json=answer)
        if response.status_code == 409:  # answered or reassigned meanwhile: nothing to do
            continue
        _check(response, "demo answer")
        console.print(f"[magenta]sales[/magenta]    {email:<30} accepted the handoff  "
                      "(POST /handoffs/ID/answer)", highlight=False)  # fmt: skip


async def _post_outcomes(console: Console, http: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    events = []
    for number, (email, steps) in enumerate(OUTCOMES, start=1):
        for second, (kind, amount) in enumerate(steps):
            event = {"opportunity_id": f"demo-opp-{number}", "kind": kind, "email": email,
                     "occurred_at": (now + timedelta(seconds=second)).isoformat(),
                     "amount": amount, "currency": "USD"}  # fmt: skip
            events.append(event | ({"lost_reason": "budget"} if kind == "lost" else {}))
            console.print(f"[magenta]CRM[/magenta]      {email:<30} opportunity {kind} "
                          f"${int(amount):,}  (POST /outcomes)", highlight=False)  # fmt: skip
    _check(await http.post("/outcomes", json={"events": events}), "demo outcomes")


async def _wait_for_stages(stack: RunningStack, expected: int, timeout: float) -> None:
    """Until the leads' workflows have moved the stages the outcomes call for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.database.sessions() as session:
            moved = session.scalar(select(func.count()).select_from(Lead).where(
                Lead.stage.in_(("opportunity", "customer", "closed_lost"))))  # fmt: skip
        if moved >= expected:
            break
        await asyncio.sleep(0.3)
    await asyncio.sleep(1)  # let the watcher print the last lines


async def _wait_for_handoffs(stack: RunningStack, expected: int, timeout: float) -> int:
    """Wait (at most `timeout` s) until the hot leads are handed off; return how many were."""
    deadline = time.monotonic() + timeout
    while True:
        with stack.database.sessions() as session:
            count = session.scalar(select(func.count()).select_from(Handoff))
        if count >= expected or time.monotonic() > deadline:
            await asyncio.sleep(1)  # let the watcher print the last lines
            return count
        await asyncio.sleep(0.3)


async def _watch(console: Console, stack: RunningStack) -> None:
    """Print messages, score changes, stage changes and handoffs as rows appear."""
    seen: set[tuple[str, object]] = set()

    def show(kind: str, key: object, style: str, email: str, text: str) -> None:
        if (kind, key) not in seen:
            seen.add((kind, key))
            console.print(f"[{style}]{kind:<8}[/{style}] {email:<30} {text}", highlight=False)

    while True:
        with stack.database.sessions() as session:
            emails = dict(session.execute(select(Lead.id, Lead.email)).all())
            for m in session.scalars(select(Message).where(Message.status == "sent")):
                show("sent", m.id, "blue", emails[m.lead_id], f"{m.channel:<5} step={m.step_id}")
            for c in session.scalars(select(ScoreChange).order_by(ScoreChange.id)):
                text = f"{c.old_score:>5.1f} -> {c.new_score:<5.1f} {c.reason}"
                show("score", c.id, "yellow", emails[c.lead_id], text)
            for c in session.scalars(select(StageChange).order_by(StageChange.id)):
                text = f"{c.from_stage} -> {c.to_stage.upper()}"
                show("stage", c.id, "bold green", emails[c.lead_id], text)
            for h in session.scalars(select(Handoff)):
                rep = session.get(SalesRepRow, h.rep_id)
                text = f"-> {rep.name} (score {h.score})"
                show("HANDOFF", h.id, "bold red", emails[h.lead_id], text)
        await asyncio.sleep(0.3)


def _summary(console: Console, stack: RunningStack, elapsed: float) -> None:
    with stack.database.sessions() as session:
        stages = dict(session.execute(select(Lead.stage, func.count()).group_by(Lead.stage)).all())
        sent = dict(
            session.execute(
                select(Message.channel, func.count()).where(Message.status == "sent")
                .group_by(Message.channel)
            ).all()
        )  # fmt: skip
        handoffs = session.scalar(select(func.count()).select_from(Handoff))
    table = Table(title=f"after {elapsed:.0f} s")
    table.add_column("what")
    table.add_column("count", justify="right")
    for stage in ("lead", "mql", "pql", "sql", "opportunity", "customer", "closed_lost"):
        table.add_row(f"leads at {stage.upper()}", str(stages.get(stage, 0)))
    table.add_row("emails sent", str(sent.get("email", 0)))
    table.add_row("SMS sent", str(sent.get("sms", 0)))
    table.add_row("handoffs", str(handoffs))
    console.print(table)
    _revenue_by_sequence(console, stack)
    console.print(f"messages are in {stack.settings.outbox_dir}/")


def _revenue_by_sequence(console: Console, stack: RunningStack) -> None:
    """What `nurture report --attribution linear` says of the demo's outcomes."""
    with stack.database.sessions() as session:
        report = attribution(session, ReportFilter(), "linear", "sequence")
    if not report["rows"]:
        return
    table = Table(title="credited by sequence (linear: nurture report --attribution linear)")
    for column in ("sequence", "SQLs", "pipeline USD", "revenue USD"):
        table.add_column(column, justify="left" if column == "sequence" else "right")
    for row in report["rows"]:
        pipeline, revenue = row.get("pipeline USD", 0), row.get("revenue USD", 0)
        table.add_row(
            row["key"], f"{row.get('sqls', 0):.2f}", f"{pipeline:,.0f}", f"{revenue:,.0f}"
        )
    console.print(table)
