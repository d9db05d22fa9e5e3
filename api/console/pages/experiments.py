"""The Experiments pages (docs/experiments.md): every experiment with its verdict, one
experiment's arms against control with the always-valid intervals, and the planning
helper (`nurture experiments plan`'s answer to a baseline rate and a minimum effect).

The results are counted over every assigned lead (services/experiment_results.py), up to
seconds at a million leads: too long for every page view. So a count is kept
RESULTS_MAX_AGE seconds, then shown while it is counted again in the background; a page
waits only for a count it has none of yet, or when asked to with `?recount=1`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from api.console.web import Console, Viewer, page_responses
from experiments import statistics
from models.definitions import EXPERIMENT_METRICS
from services.experiment_results import ExperimentResult, experiment_results

log = logging.getLogger("nurture.console")

RESULTS_MAX_AGE = 60.0  # seconds a count is shown before it is counted again
MAX_ARMS = 10  # the planning form's most arms, control included
FAMILY_ALPHA = 0.05  # the plan's false-positive rate, shared over the arms as the results do
MAX_LEADS_PER_DAY = 10_000_000
# A split's name is an identifier; a segment's holdout is `holdout:<segment>`.
ExperimentName = Annotated[str, PathParam(pattern=r"^(holdout:)?[a-z][a-z0-9_]*$",
                                          max_length=200)]  # fmt: skip
PlanField = Annotated[str | None, Query(max_length=30)]
HEADINGS = {"open": "Opens", "click": "Clicks", "mql": "MQL", "sql": "SQL",
            "accepted": "Accepted", "opportunity": "Opportunities", "won": "Won",
            "revenue": "Revenue"}  # fmt: skip
# The arms' table's columns, (metric, heading), in the definitions' order of the metrics.
COLUMNS = [(metric, HEADINGS[metric]) for metric in EXPERIMENT_METRICS]


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    allowed = console.allowed("experiments")
    kept = _Kept(console)

    @router.get("/console/experiments", response_class=HTMLResponse,
                responses=page_responses())  # fmt: skip
    async def experiments_page(
        request: Request,
        baseline: PlanField = None,
        effect: PlanField = None,
        arms: PlanField = None,
        leads_per_day: PlanField = None,
        recount: bool = False,
        _viewer: Viewer = Depends(allowed),
    ):
        """Every experiment, newest first, with its verdict; and the planning form: the
        leads and days needed to find `effect` (points) on a `baseline` rate (%) with
        `arms` arms at `leads_per_day`. A value that is not valid is said beside the form."""
        asked = PlanAsked(baseline, effect, arms, leads_per_day)
        counted = await kept.get(None, recount)
        newest_first = sorted(counted.results, key=lambda e: e.started_at, reverse=True)
        plan, problems = asked.plan() if asked.given else (None, [])
        return console.render(request, "experiments/list.html", experiments=newest_first,
                              counted=counted, asked=asked, plan=plan, problems=problems,
                              invalid={field for field, _ in problems},
                              max_arms=MAX_ARMS)  # fmt: skip

    @router.get("/console/experiments/{name}", response_class=HTMLResponse,
                responses=page_responses(404))  # fmt: skip
    async def experiment_page(request: Request, name: ExperimentName, recount: bool = False,
                              _viewer: Viewer = Depends(allowed)):  # fmt: skip
        """One experiment: each arm's leads and what they did, each arm against control
        with its always-valid interval, the sample-ratio check and the verdict."""
        try:
            counted = await kept.get(name, recount)
        except LookupError as exc:  # names the experiments there are
            return console.render(request, "message.html", 404, heading="No such experiment",
                                  message=f"There is {exc}.")  # fmt: skip
        (experiment,) = counted.results
        return console.render(request, "experiments/detail.html", e=experiment, counted=counted,
                              columns=COLUMNS)  # fmt: skip

    return router


# --- the planning form -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanAsked:
    """The planning form as sent (None: not sent; the form sends every field). Rates are
    in percent and the effect in percentage points, as a marketer says them."""

    baseline: str | None = None
    effect: str | None = None
    arms: str | None = None
    leads_per_day: str | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.baseline, self.effect, self.leads_per_day))

    def plan(self) -> tuple[statistics.Plan | None, list[tuple[str, str]]]:
        """statistics.plan's answer, or the problems of the fields, each named."""
        problems: list[tuple[str, str]] = []

        def number(field: str, text: str | None, low: float, high: float, what: str):
            value = _number(text)
            if value is None or not low < value < high:
                problems.append((field, what))
            return value

        baseline = number("baseline", self.baseline, 0, 100,
                          "the control's rate now, a percentage above 0 and below 100, "
                          "e.g. 4 for 4%")  # fmt: skip
        effect = number("effect", self.effect, -100, 100,
                        "the smallest change worth finding, in percentage points, not 0, "
                        "e.g. 1 to find 4% becoming 5%")  # fmt: skip
        if effect == 0:
            problems.append(("effect", "not 0: the smallest change worth finding"))
        elif baseline is not None and effect is not None and not 0 < baseline + effect < 100:
            problems.append(("effect", f"the baseline {baseline:g}% changed by {effect:+g} "
                             "points must stay above 0% and below 100%"))  # fmt: skip
        arms = _whole(self.arms or "2")
        if arms is None or not 2 <= arms <= MAX_ARMS:
            problems.append(("arms", f"a whole number from 2 to {MAX_ARMS}, control included"))
        per_day = None
        if (self.leads_per_day or "").strip():
            per_day = number("leads_per_day", self.leads_per_day, 0, MAX_LEADS_PER_DAY,
                             "the leads reaching the experiment a day: above 0, or "
                             "empty")  # fmt: skip
        if problems or baseline is None or effect is None or arms is None:
            return None, problems
        per_comparison = FAMILY_ALPHA / (arms - 1)  # Bonferroni, as the results compare
        found = statistics.plan(baseline / 100, effect / 100, arms, per_comparison,
                                leads_per_day=per_day)  # fmt: skip
        return found, []


def _number(text: str | None) -> float | None:
    """A number as typed (a trailing % allowed); None when it is not one."""
    try:
        value = float((text or "").strip().removesuffix("%").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _whole(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 3 else None


# --- results, kept -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    """The results of a count (every experiment, or one) and when it started."""

    results: list[ExperimentResult]
    at: datetime


class _Kept:
    """Counts kept per key (None: every experiment; else one experiment's name) for
    RESULTS_MAX_AGE seconds. An older count is shown at once and counted again in the
    background; a page without one, or asking `recount`, waits for it. One count per key
    at a time. An unknown name raises LookupError and keeps nothing."""

    def __init__(self, console: Console):
        self.console = console
        self.kept: dict[str | None, Counted] = {}
        self.running: dict[str | None, asyncio.Task[Counted]] = {}

    async def get(self, name: str | None, recount: bool = False) -> Counted:
        kept = self.kept.get(name)
        age = (datetime.now(UTC) - kept.at).total_seconds() if kept else None
        if age is not None and age <= RESULTS_MAX_AGE and not recount:
            return kept  # type: ignore[return-value]
        task = self.running.get(name)
        if task is None:
            task = self.running[name] = asyncio.create_task(self._count(name))
            task.add_done_callback(_log_failure)
        if kept is None or recount:
            return await asyncio.shield(task)  # the count goes on if the browser leaves
        return kept

    async def _count(self, name: str | None) -> Counted:
        started = datetime.now(UTC)
        try:
            results = await self.console.db.run(
                experiment_results, self.console.sessions, self.console.definitions, name
            )
        finally:
            self.running.pop(name, None)
        self.kept[name] = Counted(results, started)
        return self.kept[name]


def _log_failure(task: asyncio.Task) -> None:
    """A count that failed is logged (a page waiting for it shows the error; one that
    did not goes on showing the last count). An unknown name is no failure."""
    failure = None if task.cancelled() else task.exception()
    if failure is not None and not isinstance(failure, LookupError):
        log.error("counting experiment results failed", exc_info=failure)
