"""The Sequences pages: every sequence with its leads and SQLs; one sequence drawn as a
graph with each step's figures, its messages previewed, its definitions' problems, and a
form that simulates a lead through it on a time-skipping server.

The figures are counted over the whole history (services/step_figures.py): too much work
for every page view at 100,000 leads, so each count is kept for FIGURES_MAX_AGE seconds
and counted again in the background when older; a page waits for a count only when it
has none yet (at most FIGURES_WAIT seconds). `?recount=1` asks for a new count at once.
The definitions are checked (`nurture validate`) again only when a file has changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
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
from services.sequence_graph import describe_step, render_svg, sequence_graph
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

FIGURES_MAX_AGE = 60.0  # seconds a count is shown before it is counted again
FIGURES_WAIT = 1.0  # seconds a page waits for a count it does not have yet
SIMULATION_TIMEOUT = 120.0  # seconds of real time a simulation may take
SIMULATION_RETRY_AFTER = 30  # seconds: when another simulation is running
MAX_DAYS = 365
MAX_RESPONSES = 50
LEAD_FIELDS = ("email", "first_name", "last_name", "title", "company", "company_size",
               "industry", "country", "timezone", "phone", "source")  # fmt: skip
SequenceId = Annotated[str, PathParam(pattern=IDENTIFIER, max_length=100)]


class SimulationForm(BaseModel):
    """The simulate form: the sample lead's fields (empty ones left out), the planned
    responses (`2d: email.click step=welcome; ...`) and the days (empty: the default)."""

    model_config = ConfigDict(extra="ignore")  # the CSRF field
    responses: str = Field("", max_length=4000)
    days: str = Field("", max_length=6)
    email: str = Field("", max_length=320)
    first_name: str = Field("", max_length=100)
    last_name: str = Field("", max_length=100)
    title: str = Field("", max_length=200)
    company: str = Field("", max_length=200)
    company_size: str = Field("", max_length=12)
    industry: str = Field("", max_length=100)
    country: str = Field("", max_length=2)
    timezone: str = Field("", max_length=64)
    phone: str = Field("", max_length=40)
    source: str = Field("", max_length=100)

    def lead_fields(self) -> dict[str, str]:
        return {name: value for name in LEAD_FIELDS if (value := getattr(self, name).strip())}


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    counts = _Counts(console)
    checks = _Checks(Path(console.settings.definitions_dir))
    one_at_a_time = asyncio.Semaphore(1)
    definitions: Definitions = console.definitions

    @router.get("/console/sequences", response_class=HTMLResponse,
                responses=page_responses(), include_in_schema=True)  # fmt: skip
    async def sequences_page(request: Request, recount: bool = False,
                             _viewer: Viewer = Depends(console.allowed("sequences"))):  # fmt: skip
        """Every sequence: its segments, version, leads in it and done, and its SQLs."""
        figures, counted = await counts.get(("sequences",), sequence_figures, recount)
        problems = await console.db.run(checks.problems)
        return console.render(request, "sequences/list.html", rows=_list_rows(definitions, figures),
                              counted=counted, problems=problems, root=checks.root)  # fmt: skip

    @router.get("/console/sequences/{sequence_id}", response_class=HTMLResponse,
                responses=page_responses(404), include_in_schema=True)  # fmt: skip
    async def sequence_page(request: Request, sequence_id: SequenceId, recount: bool = False,
                            _viewer: Viewer = Depends(console.allowed("sequences"))):  # fmt: skip
        """One sequence: its graph with each step's figures, its problems, its messages
        previewed and (admins and marketers) the simulate form."""
        sequence = definitions.sequences.get(sequence_id)
        if sequence is None:
            return _not_found(console, request, sequence_id)
        context = await _sequence_context(console, counts, checks, sequence, recount)
        return console.render(request, "sequences/detail.html", **context,
                              form=SimulationForm(**SAMPLE_FIELDS_AS_TEXT))  # fmt: skip

    @router.post("/console/sequences/{sequence_id}/simulate", response_class=HTMLResponse,
                 responses={**page_responses(404, 503), **error_responses(html=(429,))},
                 include_in_schema=True)  # fmt: skip
    async def simulate_lead(request: Request, sequence_id: SequenceId,
                            form: Annotated[SimulationForm, Form()],
                            _viewer: Viewer = Depends(console.form_checked("simulate"))):  # fmt: skip
        """Runs the real workflow for a sample lead on a time-skipping server and shows its
        timeline: the result alone for htmx, else the whole page. 422: a field not valid
        (nothing run); 429: another simulation is running; 503: it took too long."""
        sequence = definitions.sequences.get(sequence_id)
        if sequence is None:
            return _not_found(console, request, sequence_id)
        answer = _Answer(console, counts, checks, request, sequence, form)
        planned, problems = _read_form(form)
        if problems:
            return await answer(422, problems=problems)
        if one_at_a_time.locked():
            return await answer(429, retry_after=SIMULATION_RETRY_AFTER,
                                failure="Another simulation is running: try again in a moment.")  # fmt: skip
        async with one_at_a_time:
            try:
                timeline = await run_in_threadpool(_simulate, definitions, sequence.id, *planned)
            except SimulationError as exc:  # refused before anything ran
                return await answer(422, problems=[("simulation", str(exc))])
            except TimeoutError:
                return await answer(503, retry_after=SIMULATION_RETRY_AFTER,
                                    failure=f"The simulation took longer than "
                                            f"{SIMULATION_TIMEOUT:g} s and was stopped.")  # fmt: skip
        return await answer(200, timeline=timeline)

    return router


SAMPLE_FIELDS_AS_TEXT = {name: str(SAMPLE_FIELDS.get(name) or "") for name in LEAD_FIELDS}


# --- the pages' contents -----------------------------------------------------------------------


def _list_rows(definitions: Definitions, figures: dict | None) -> list[dict[str, Any]]:
    """Each defined sequence, then any a lead is enrolled in that is no longer defined."""
    segments: dict[str, list[str]] = {}
    for segment in [*definitions.segments.segments, definitions.segments.default]:
        segments.setdefault(segment.sequence, []).append(segment.id)
    rows = [
        {"id": s.id, "name": s.name, "version": s.version, "description": s.description,
         "segments": segments.get(s.id, []), "steps": len(s.steps),
         "messages": len(s.templates()), "defined": True,
         "figures": (figures or {}).get(s.id)}
        for s in sorted(definitions.sequences.values(), key=lambda s: s.id)
    ]  # fmt: skip
    for sequence_id in sorted(set(figures or {}) - set(definitions.sequences)):
        rows.append({"id": sequence_id, "name": "(no longer defined)", "defined": False,
                     "segments": [], "figures": figures[sequence_id]})  # fmt: skip
    return rows


async def _sequence_context(console: Console, counts: _Counts, checks: _Checks,
                            sequence: Sequence, recount: bool = False) -> dict[str, Any]:  # fmt: skip
    figures, counted = await counts.get(("steps", sequence.id), step_figures, recount, sequence.id)
    problems = await console.db.run(checks.problems, sequence.id)
    previews = await run_in_threadpool(_previews, console.definitions, sequence)
    graph = sequence_graph(sequence)
    steps = [
        {"id": step.id, "type": step.type, "what": describe_step(step),
         "ways": [edge for edge in graph.edges if edge.source == step.id],
         "figures": (figures or {}).get(step.id)}
        for step in sequence.steps
    ]  # fmt: skip
    return {
        "sequence": sequence,
        "svg": render_svg(graph, _notes(figures or {})),
        "steps": steps,
        "counted": counted,
        "problems": problems,
        "root": checks.root,
        "previews": previews,
        "segments": [s.id for s in [*console.definitions.segments.segments,
                                    console.definitions.segments.default]
                     if s.sequence == sequence.id],
    }  # fmt: skip


def _notes(figures: dict[str, StepFigures]) -> dict[str, str]:
    """The line of figures under each step that sent something, in its node."""
    return {
        step: f"sent {f.sent:,} · opened {f.opened:,} · clicked {f.clicked:,} · "
        f"SQLs {f.sql_last_touch:,}"
        for step, f in figures.items()
    }


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
    return console.render(request, "message.html", 404, heading="No such sequence",
                          message=f"There is no sequence {sequence_id!r} (sequences: {known}).")  # fmt: skip


# --- simulating --------------------------------------------------------------------------------

_Planned = tuple[dict[str, str], list, int | None]


def _read_form(form: SimulationForm) -> tuple[_Planned, list[tuple[str, str]]]:
    """(lead fields, planned responses, days) and the problems of each field that is not
    valid, named by field."""
    problems: list[tuple[str, str]] = []
    fields = form.lead_fields()
    try:
        validate_lead(fields, "lead")
    except LeadError as exc:
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


def _simulate(definitions: Definitions, sequence_id: str, fields: dict[str, str], planned: list,
              days: int | None) -> Timeline:  # fmt: skip
    """In a thread, on its own event loop: the simulation's worker, server and database
    calls never hold up the console's requests. Stopped after SIMULATION_TIMEOUT."""
    run = simulate(definitions, sequence_id, fields, planned, days)
    return asyncio.run(asyncio.wait_for(run, SIMULATION_TIMEOUT))


class _Answer:
    """A simulation's answer: the result fragment for htmx, else the whole page with it."""

    def __init__(self, console: Console, counts: _Counts, checks: _Checks, request: Request,
                 sequence: Sequence, form: SimulationForm):  # fmt: skip
        self.console, self.counts, self.checks = console, counts, checks
        self.request, self.sequence, self.form = request, sequence, form

    async def __call__(self, status: int, retry_after: int | None = None,
                       **result: Any) -> HTMLResponse:  # fmt: skip
        result = {"problems": [], "failure": None, "timeline": None, **result}
        if self.request.headers.get("hx-request") == "true":
            page = self.console.render(self.request, "sequences/_simulation.html", status,
                                       sequence=self.sequence, **result)  # fmt: skip
        else:
            context = await _sequence_context(self.console, self.counts, self.checks,
                                              self.sequence)  # fmt: skip
            page = self.console.render(self.request, "sequences/detail.html", status,
                                       **context, form=self.form, **result)  # fmt: skip
        if retry_after is not None:
            page.headers["Retry-After"] = str(retry_after)
        return page


# --- figures and problems, kept ----------------------------------------------------------------


class _Counts:
    """Counts over the whole history, kept FIGURES_MAX_AGE seconds and counted again in the
    background once older: a page shows the last count at once. One count per key runs at
    a time; a page without a count (or asking for a recount) waits FIGURES_WAIT for it."""

    def __init__(self, console: Console):
        self.console = console
        self.kept: dict[tuple, tuple[datetime, Any]] = {}
        self.running: dict[tuple, asyncio.Task] = {}

    async def get(self, key: tuple, count: Callable, recount: bool,
                  *args: Any) -> tuple[Any, datetime | None]:  # fmt: skip
        """(the figures, when they were counted), or (None, None) while being counted."""
        kept = self.kept.get(key)
        age = (datetime.now(UTC) - kept[0]).total_seconds() if kept else None
        if kept is None or recount or age > FIGURES_MAX_AGE:
            task = self.running.get(key)
            if task is None:
                task = asyncio.create_task(self._count(key, count, *args))
                self.running[key] = task
            if kept is None or recount:
                await asyncio.wait({task}, timeout=FIGURES_WAIT)  # left running if longer
                kept = self.kept.get(key, kept)
        return (kept[1], kept[0]) if kept else (None, None)

    async def _count(self, key: tuple, count: Callable, *args: Any) -> None:
        try:
            started = datetime.now(UTC)
            value = await self.console.db.run(_in_session, self.console.sessions, count, *args)
            self.kept[key] = (started, value)
        except Exception:  # the last count stays; the next page view tries again
            log.exception("counting %s failed", key)
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
        self.files: dict[str, str] = {}  # sequence id -> its file

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
        return [p for p in self.found
                if (own and os.path.samefile(p.file, own) if os.path.exists(p.file) else False)
                or f"{sequence_id}." in p.message.partition("used by ")[2]]  # fmt: skip

    def _signature(self) -> tuple:
        files = [*self.root.glob("*.y*ml"), *self.root.glob("sequences/*"),
                 *(self.root / "templates").rglob("*")]  # fmt: skip
        return tuple(sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns)
                            for f in files if f.is_file()))  # fmt: skip

    def _sequence_files(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in sorted((self.root / "sequences").glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                found.setdefault(data["id"], str(path))
        return found

    def where(self, problem: DefinitionProblem) -> str:
        """file:line:column, the file relative to the definitions directory."""
        try:
            file = os.path.relpath(problem.file, self.root)
        except ValueError:
            file = problem.file
        return ":".join([file, *(str(n) for n in (problem.line, problem.column) if n)])
