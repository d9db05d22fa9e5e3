"""The Sequences pages: every sequence with its leads, SQLs and goals met; one sequence
drawn as a graph with each step's figures, its goals with the leads each ended it for,
its messages previewed, its definitions' problems, and a form that simulates a lead
through it on a time-skipping server.

The figures are counted over the whole history (services/step_figures.py), as `nurture
report` counts them: too much work for every page view (6-9 s for one sequence at 100,000
leads, 300,000 sends and 400,000 responses on PostgreSQL, on a busy 2-core machine). So
each count is kept FIGURES_MAX_AGE seconds and counted again in the background once older,
only for the pages someone looks at; a page waits for a count only when it has none yet
(at most FIGURES_WAIT seconds). `?recount=1` asks for a new count at once (and waits at
most RECOUNT_WAIT for it). The definitions are checked (`nurture validate`) again only
when one of their files has changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field

from api.console.web import Console, Viewer, page_responses
from api.errors import error_responses
from models.definition_set import Definitions
from models.definitions import IDENTIFIER, EmailStep, Sequence, SmsStep
from models.yaml_source import DefinitionProblem
from services.preview import LeadError, Preview, preview, validate_lead
from services.reports import ReportFilter, goal_counts, sequence_goal_figures
from services.sequence_graph import describe_step, render_svg, reply_policy, sequence_graph
from services.sequence_pause import pause_of, paused_sequences
from services.simulate import (
    SAMPLE_FIELDS,
    SimulationError,
    SpecError,
    Timeline,
    parse_responses,
    simulate,
)
from services.step_figures import StepFigures, sequence_figures, step_figures
from services.validate import validate

log = logging.getLogger(__name__)

FIGURES_MAX_AGE = 300.0  # seconds a count is shown before it is counted again
FIGURES_WAIT = 0.15  # seconds a page waits for a count it does not have yet
RECOUNT_WAIT = 5.0  # seconds a page waits for the count asked for by `?recount=1`
SIMULATION_TIMEOUT = 120.0  # seconds of real time a simulation may take
SIMULATION_RETRY_AFTER = 30  # seconds: when another simulation is running
MAX_DAYS = 365
MAX_RESPONSES = 50
LEAD_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "title",
    "company",
    "company_size",
    "industry",
    "country",
    "timezone",
    "phone",
    "source",
)
SequenceId = Annotated[str, PathParam(pattern=IDENTIFIER, max_length=100)]
SAMPLE_FIELDS_AS_TEXT = {name: str(SAMPLE_FIELDS.get(name) or "") for name in LEAD_FIELDS}


class SimulationForm(BaseModel):
    """The simulate form: the lead's fields (empty ones left out; all empty: the sample
    lead), the planned responses (`2d: email.click step=welcome; ...`) and the days
    (empty: the sequence's longest path and a day)."""

    model_config = ConfigDict(extra="ignore")  # the CSRF field
    responses: str = Field("", max_length=4000)
    days: str = Field("", max_length=20)
    # Bounds on size only: validate_lead says what is wrong with a field, by its name.
    email: str = Field("", max_length=1000)
    first_name: str = Field("", max_length=1000)
    last_name: str = Field("", max_length=1000)
    title: str = Field("", max_length=1000)
    company: str = Field("", max_length=1000)
    company_size: str = Field("", max_length=1000)
    industry: str = Field("", max_length=1000)
    country: str = Field("", max_length=1000)
    timezone: str = Field("", max_length=1000)
    phone: str = Field("", max_length=1000)
    source: str = Field("", max_length=1000)

    def lead_fields(self) -> dict[str, str]:
        return {name: value for name in LEAD_FIELDS if (value := getattr(self, name).strip())}


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    counts = _Counts(console)
    checks = _Checks(Path(console.settings.definitions_dir))
    _add_pages(router, console, counts, checks)
    _add_simulate(router, console, counts, checks)
    return router


def _add_pages(router: APIRouter, console: Console, counts: _Counts, checks: _Checks) -> None:
    definitions = console.definitions

    @router.get(
        "/console/sequences",
        response_class=HTMLResponse,
        responses=page_responses(),
        include_in_schema=True,
    )
    async def sequences_page(
        request: Request,
        recount: bool = False,
        _viewer: Viewer = Depends(console.allowed("sequences")),
    ):
        """Every sequence: its segments, version, leads in it and done, and its SQLs."""
        counted = await counts.get(("sequences",), sequence_figures, recount)
        goals = await counts.get(("goals",), goal_counts, recount, ReportFilter())
        problems = await run_in_threadpool(checks.problems)
        paused = await console.db.run(paused_sequences, console.sessions)
        return console.render(
            request,
            "sequences/list.html",
            rows=_list_rows(definitions, counted.figures),
            paused={p.sequence_id: p for p in paused},
            counted=counted,
            goals=goals,
            problems=problems,
            where=checks.where,
        )

    @router.get(
        "/console/sequences/{sequence_id}",
        response_class=HTMLResponse,
        responses=page_responses(404),
        include_in_schema=True,
    )
    async def sequence_page(
        request: Request,
        sequence_id: SequenceId,
        recount: bool = False,
        _viewer: Viewer = Depends(console.allowed("sequences")),
    ):
        """One sequence: its graph with each step's figures, its problems, its messages
        previewed and (admins and marketers) the simulate form."""
        sequence = definitions.sequences.get(sequence_id)
        if sequence is None:
            return _not_found(console, request, sequence_id)
        context = await _sequence_context(console, counts, checks, sequence, recount)
        return console.render(
            request,
            "sequences/detail.html",
            **context,
            flash=request.query_params.get("flash"),
            invalid=[],
            failure=None,
            timeline=None,
            form=SimulationForm(**SAMPLE_FIELDS_AS_TEXT),
        )


def _add_simulate(router: APIRouter, console: Console, counts: _Counts, checks: _Checks) -> None:
    definitions = console.definitions
    # A simulation takes a core for seconds; and two at once, each in its thread, collide in
    # Alembic's module-level state while migrating their databases (seen: a crash).
    one_at_a_time = asyncio.Semaphore(1)

    @router.post(
        "/console/sequences/{sequence_id}/simulate",
        response_class=HTMLResponse,
        responses={**page_responses(404, 503), **error_responses(html=(429,))},
        include_in_schema=True,
    )
    async def simulate_lead(
        request: Request,
        sequence_id: SequenceId,
        form: Annotated[SimulationForm, Form()],
        _viewer: Viewer = Depends(console.form_checked("simulate")),
    ):
        """Runs the real workflow for a sample lead on a time-skipping server and shows its
        timeline: the result alone for htmx, else the whole page. 422: a field not valid
        (nothing run); 429: another simulation is running; 503: it took too long."""
        sequence = definitions.sequences.get(sequence_id)
        if sequence is None:
            return _not_found(console, request, sequence_id)
        answer = _Answer(console, counts, checks, request, sequence, form)
        planned, problems = _read_form(form)
        if problems:
            return await answer(422, invalid=problems)
        if one_at_a_time.locked():
            return await answer(
                429,
                retry_after=SIMULATION_RETRY_AFTER,
                failure="Another simulation is running: try again in a moment.",
            )
        async with one_at_a_time:
            try:
                timeline = await run_in_threadpool(_simulate, definitions, sequence.id, *planned)
            except SimulationError as exc:  # refused before anything ran
                return await answer(422, invalid=[("simulation", str(exc))])
            except TimeoutError:
                return await answer(
                    503,
                    retry_after=SIMULATION_RETRY_AFTER,
                    failure=f"The simulation took longer than "
                    f"{SIMULATION_TIMEOUT:g} s and was stopped.",
                )
        return await answer(200, timeline=timeline)


# --- the pages' contents -----------------------------------------------------------------------


def _list_rows(definitions: Definitions, figures: dict | None) -> list[dict[str, Any]]:
    """Each defined sequence, then any a lead is enrolled in that is no longer defined."""
    segments: dict[str, list[str]] = {}
    for segment in [*definitions.segments.segments, definitions.segments.default]:
        segments.setdefault(segment.sequence, []).append(segment.id)
    rows = [
        {
            "id": s.id,
            "name": s.name,
            "version": s.version,
            "description": s.description,
            "segments": segments.get(s.id, []),
            "steps": len(s.steps),
            "messages": len(s.templates()),
            "goals": len(s.goals),
            "defined": True,
            "figures": (figures or {}).get(s.id),
        }
        for s in sorted(definitions.sequences.values(), key=lambda s: s.id)
    ]
    for sequence_id in sorted(set(figures or {}) - set(definitions.sequences)):
        rows.append(
            {
                "id": sequence_id,
                "name": "(no longer defined)",
                "defined": False,
                "segments": [],
                "figures": figures[sequence_id],
            }
        )
    return rows


async def _sequence_context(
    console: Console, counts: _Counts, checks: _Checks, sequence: Sequence, recount: bool = False
) -> dict[str, Any]:
    counted = await counts.get(("steps", sequence.id), step_figures, recount, sequence.id)
    figures = counted.figures or {}
    goal_ids = tuple(goal.id for goal in sequence.goals)
    goals = None  # each goal's leads and rate, counted as `nurture report` counts them
    if goal_ids:
        goals = await counts.get(("goals", sequence.id), sequence_goal_figures, recount,
                                 sequence.id, goal_ids)  # fmt: skip
    problems = await run_in_threadpool(checks.problems, sequence.id)
    previews = await run_in_threadpool(_previews, console.definitions, sequence)
    graph = sequence_graph(sequence)
    steps = [
        {
            "id": step.id,
            "type": step.type,
            "what": describe_step(step, sequence),
            "ways": [edge for edge in graph.edges if edge.source == step.id],
            "figures": figures.get(step.id),
        }
        for step in sequence.steps
    ]
    return {
        "sequence": sequence,
        "pause": await console.db.run(pause_of, console.sessions, sequence.id),
        "replies": reply_policy(sequence),
        "svg": render_svg(graph, _notes(sequence, counted)),
        "steps": steps,
        "counted": counted,
        "goals": goals,
        "problems": problems,
        "where": checks.where,
        "previews": previews,
        "segments": [
            s.id
            for s in [*console.definitions.segments.segments, console.definitions.segments.default]
            if s.sequence == sequence.id
        ],
    }


def _notes(sequence: Sequence, counted: Counted) -> dict[str, str]:
    """The lines of figures in the node of each message step, once counted."""
    if counted.at is None:
        return {}
    notes = {}
    for step_id, channel, _template in sequence.templates():
        f = (counted.figures or {}).get(step_id) or StepFigures(step_id, channel)
        if channel == "sms":
            answered = f"replied {f.replied:,}"
        else:
            answered = f"opened {f.opened:,} · clicked {f.clicked:,}"
        notes[step_id] = f"sent {f.sent:,} · {answered}\nSQLs {f.sql_last_touch:,} (last touch)"
    return notes


def _previews(definitions: Definitions, sequence: Sequence) -> list[dict[str, Any]]:
    """Each message step rendered for the sample lead, or why it could not be."""
    found = []
    for step in sequence.steps:
        if not isinstance(step, EmailStep | SmsStep):
            continue
        try:
            rendered: Preview | None = preview(definitions, sequence.id, step.id)
            problem = None
        except (TemplateError, OSError) as exc:
            rendered, problem = None, f"{type(exc).__name__}: {exc}"
        found.append({"step": step, "preview": rendered, "problem": problem})
    return found


def _not_found(console: Console, request: Request, sequence_id: str) -> HTMLResponse:
    known = ", ".join(sorted(console.definitions.sequences)) or "none"
    return console.render(
        request,
        "message.html",
        404,
        heading="No such sequence",
        message=f"There is no sequence {sequence_id!r} (sequences: {known}).",
    )


# --- simulating --------------------------------------------------------------------------------

_Planned = tuple[dict[str, str] | None, list, int | None]


def _read_form(form: SimulationForm) -> tuple[_Planned, list[tuple[str, str]]]:
    """(lead fields or None for the sample lead, planned responses, days) and the problems
    of each field that is not valid, named by field."""
    problems: list[tuple[str, str]] = []
    fields = form.lead_fields() or None  # every field empty: the sample lead
    try:
        if fields:
            validate_lead(fields, "lead")
    except LeadError as exc:  # one line a field: "lead: country: String should have..."
        for line in str(exc).splitlines():
            _source, field, message = (line.split(": ", 2) + ["", ""])[:3]
            problems.append((field or "lead", message or line))
    planned: list = []
    try:
        planned = parse_responses(form.responses)
    except SpecError as exc:
        problems.append(("responses", str(exc)))
    if len(planned) > MAX_RESPONSES:
        problems.append(("responses", f"at most {MAX_RESPONSES} responses at once"))
    days = None
    if form.days.strip():
        if not form.days.strip().isdigit() or not 1 <= int(form.days) <= MAX_DAYS:
            problems.append(("days", f"a whole number of days from 1 to {MAX_DAYS}, or empty"))
        else:
            days = int(form.days)
    return (fields, planned, days), problems


def _simulate(
    definitions: Definitions,
    sequence_id: str,
    fields: dict[str, str] | None,
    planned: list,
    days: int | None,
) -> Timeline:
    """In a thread, on its own event loop: the simulation's worker, server and database
    calls never hold up the console's requests. Stopped after SIMULATION_TIMEOUT."""
    run = simulate(definitions, sequence_id, fields, planned, days)
    return asyncio.run(asyncio.wait_for(run, SIMULATION_TIMEOUT))


class _Answer:
    """A simulation's answer: the result fragment for htmx, else the whole page with it."""

    def __init__(
        self,
        console: Console,
        counts: _Counts,
        checks: _Checks,
        request: Request,
        sequence: Sequence,
        form: SimulationForm,
    ):
        self.console, self.counts, self.checks = console, counts, checks
        self.request, self.sequence, self.form = request, sequence, form

    async def __call__(
        self, status: int, retry_after: int | None = None, **result: Any
    ) -> HTMLResponse:
        result = {"invalid": [], "failure": None, "timeline": None, **result}
        if self.request.headers.get("hx-request") == "true":
            page = self.console.render(
                self.request, "sequences/_simulation.html", status, sequence=self.sequence, **result
            )
        else:
            context = await _sequence_context(self.console, self.counts, self.checks, self.sequence)
            page = self.console.render(
                self.request, "sequences/detail.html", status, **context, form=self.form, **result
            )
        if retry_after is not None:
            page.headers["Retry-After"] = str(retry_after)
        return page


# --- figures and problems, kept ----------------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    """A count kept: its figures and when it was counted (None: not yet), and why the
    latest count failed, if it did (the figures are then the count before)."""

    figures: Any = None
    at: datetime | None = None
    failure: str | None = None


class _Counts:
    """Counts over the whole history, kept FIGURES_MAX_AGE seconds and counted again in the
    background once older: a page shows the last count at once. One count per key runs at
    a time; a page without a count waits FIGURES_WAIT for it, one asking for a recount
    RECOUNT_WAIT."""

    def __init__(self, console: Console):
        self.console = console
        self.kept: dict[tuple, Counted] = {}
        self.running: dict[tuple, asyncio.Task] = {}

    async def get(self, key: tuple, count: Callable, recount: bool, *args: Any) -> Counted:
        kept = self.kept.get(key, Counted())
        age = (datetime.now(UTC) - kept.at).total_seconds() if kept.at else None
        if age is None or recount or age > FIGURES_MAX_AGE:
            task = self.running.get(key)
            if task is None:
                task = asyncio.create_task(self._count(key, count, *args))
                self.running[key] = task
            if age is None or recount:
                wait = RECOUNT_WAIT if recount else FIGURES_WAIT
                await asyncio.wait({task}, timeout=wait)  # left running if longer
                kept = self.kept.get(key, kept)
        return kept

    async def _count(self, key: tuple, count: Callable, *args: Any) -> None:
        started = datetime.now(UTC)
        try:
            figures = await self.console.db.run(_in_session, self.console.sessions, count, *args)
            self.kept[key] = Counted(figures, started)
        except Exception as exc:  # the last count stays; the next page view tries again
            log.exception("counting %s failed", key)
            failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.kept[key] = replace(self.kept.get(key, Counted()), failure=failure)
        finally:
            self.running.pop(key, None)


def _in_session(sessions, count: Callable, *args: Any) -> Any:
    with sessions() as session:
        return count(session, *args)


class _Checks:
    """`nurture validate`'s problems of the definitions directory, checked again only when
    one of its files changed (by path, size and modification time)."""

    def __init__(self, root: Path):
        self.root = root
        self.signature: tuple | None = None
        self.found: list[DefinitionProblem] = []
        self.files: dict[str, Path] = {}  # sequence id -> its file

    def problems(self, sequence_id: str | None = None) -> list[DefinitionProblem]:
        """Every problem, or those of one sequence: in its file, or in a template that
        one of its steps uses (the message says `used by <sequence>.<step>`)."""
        signature = self._signature()
        if signature != self.signature:
            self.found, self.files = validate(self.root), self._sequence_files()
            self.signature = signature
        if sequence_id is None:
            return self.found
        own = self.files.get(sequence_id)
        used = re.compile(rf"(^|[ ,]){re.escape(sequence_id)}\.")
        return [
            p
            for p in self.found
            if (own is not None and Path(p.file).resolve() == own)
            or used.search(p.message.partition("used by ")[2])
        ]

    def _signature(self) -> tuple:
        files = [
            *self.root.glob("*.y*ml"),
            *self.root.glob("sequences/*"),
            *(self.root / "templates").rglob("*"),
        ]
        return tuple(
            sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
        )

    def _sequence_files(self) -> dict[str, Path]:
        """Each sequence's file, by the id it declares (by its name if it cannot be read)."""
        found: dict[str, Path] = {}
        for path in sorted((self.root / "sequences").glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                data = None
            declared = data.get("id") if isinstance(data, dict) else None
            found.setdefault(declared if isinstance(declared, str) else path.stem, path.resolve())
        return found

    def where(self, problem: DefinitionProblem) -> str:
        """file:line:column, the file relative to the definitions directory."""
        try:
            file = os.path.relpath(problem.file, self.root)
        except ValueError:
            file = problem.file
        return ":".join([file, *(str(n) for n in (problem.line, problem.column) if n)])
