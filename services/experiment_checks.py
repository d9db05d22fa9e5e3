"""`nurture validate`'s look at the database: each experiment recorded there (as its first
lead found it) compared with the definitions now, and each running one's result.

An experiment's arms are kept as they were when it started (`experiments.arms`: weight,
holdout, next step and a fingerprint of the steps only that arm reaches), so a change made
while it runs is told, at the split step in its sequence file (or at the segment's
holdout): "experiment subject_test's arm short changed while running: weight 1 -> 2".
Leads already in an arm keep it, so a change mixes two versions of the arm in one result.
A running experiment whose result is conclusive is told too: end it with `winner:`.

Only when a database is there to read: DATABASE_URL's, or the default SQLite file if it
exists (never created here). One that cannot be read is a note, not a problem: the
definitions are still valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from infra.settings import Settings
from models.db import ExperimentRecord, make_engine, session_factory
from models.definitions import HOLDOUT_ARM, Sequence, SplitStep
from models.yaml_source import DefinitionProblem, LocatedYaml
from services.definitions import Inspection
from services.experiment_results import ExperimentResult, experiment_results


@dataclass
class DatabaseCheck:
    problems: list[DefinitionProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not checked, and why


def check_experiments(inspection: Inspection, settings: Settings) -> DatabaseCheck:
    """The recorded experiments against `inspection`'s definitions (none if they have
    errors: those come first)."""
    check = DatabaseCheck()
    if inspection.definitions is None:
        return check
    url = settings.effective_database_url
    where = make_url(url).render_as_string(hide_password=True)
    if settings.database_url is None and not _sqlite_file(url).is_file():
        return check  # nothing has run here yet
    try:
        engine = make_engine(url)
    except (SQLAlchemyError, ValueError) as exc:
        check.notes.append(f"experiments not checked against the database ({where}): {exc}")
        return check
    try:
        if engine.dialect.name == "postgresql":
            from services.runtime import apply_postgres_timeouts

            apply_postgres_timeouts(engine, settings)
        if not inspect(engine).has_table(ExperimentRecord.__tablename__):
            check.notes.append(f"experiments not checked: the database ({where}) has no "
                               "experiments table yet (`nurture db upgrade`)")  # fmt: skip
            return check
        _compare(check, inspection, session_factory(engine))
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        check.notes.append(f"experiments not checked against the database ({where}): {reason}")
    finally:
        engine.dispose()
    return check


def _sqlite_file(url: str) -> Path:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return Path("/")  # not a file: always "there"
    return Path(parsed.database or "")


def _compare(check: DatabaseCheck, inspection: Inspection, sessions: sessionmaker) -> None:
    with sessions() as session:
        records = list(session.scalars(select(ExperimentRecord).order_by(ExperimentRecord.name)))
    defined = {record.name: _where_defined(inspection, record) for record in records}
    for record in records:
        if (found := defined[record.name]) is not None:  # else removed: nothing to change
            check.problems += found.changes(record)
    if any(found is not None and found.running for found in defined.values()):
        # All at once: the results cost the same few grouped queries for one or for all.
        for result in experiment_results(sessions, inspection.definitions):
            found = defined.get(result.name)
            if found is not None and found.running and result.status == "running":
                check.problems += found.conclusive(result)


_WHY = {
    "metric": "the primary metric is chosen before an experiment starts: a new one is a new "
    "experiment",
    "control": "the arms are compared with the control: another control is another comparison",
}


@dataclass
class _Split:
    """A recorded split experiment's step in the definitions now."""

    name: str
    sequence: Sequence
    index: int
    step: SplitStep
    source: LocatedYaml

    @property
    def running(self) -> bool:
        return self.step.winner is None

    def problem(self, *loc: Any, message: str) -> DefinitionProblem:
        return self.source.problem(("steps", self.index, *loc), message, severity="warning")

    def changes(self, record: ExperimentRecord) -> list[DefinitionProblem]:
        when = "while running" if self.running else "since it started"
        problems = []
        for field_name, before, now in (
            ("metric", record.metric, self.step.metric),
            ("control", record.control, self.step.control_arm),
        ):
            if before != now:
                problems.append(self.problem(field_name, message=(
                    f"experiment {self.name}'s {field_name} changed {when}: {before} -> {now} "
                    f"({_WHY[field_name]})")))  # fmt: skip
        recorded = {arm["name"]: arm for arm in record.arms}
        paths = self.sequence.arm_paths(self.step)
        for position, arm in enumerate(self.step.arms):
            if arm.name not in recorded:
                problems.append(self.problem("arms", position, message=(
                    f"experiment {self.name}'s arm {arm.name} was added {when}: it gets only "
                    "the leads from now on, over a shorter period than the other arms"
                )))  # fmt: skip
                continue
            what = _arm_changes(recorded[arm.name], arm, paths[arm.name])
            if what:
                problems.append(self.problem("arms", position, message=(
                    f"experiment {self.name}'s arm {arm.name} changed {when}: "
                    f"{', '.join(what)}")))  # fmt: skip
        names = {arm.name for arm in self.step.arms}
        for name in recorded:
            if name not in names:
                problems.append(self.problem("arms", message=(
                    f"experiment {self.name}'s arm {name} was removed {when}: its leads keep "
                    f"it, and go on down the control arm ({self.step.control_arm})")))  # fmt: skip
        return problems

    def conclusive(self, result: ExperimentResult) -> list[DefinitionProblem]:
        if not result.conclusive:
            return []
        verdict = f"experiment {self.name} is conclusive: {result.verdict.rstrip('.')}"
        return [self.problem("experiment", message=f"{verdict}; end it with `winner:`")]


@dataclass
class _Holdout:
    """A recorded segment holdout's segment in segments.yaml now."""

    name: str
    segment: str
    percent: float
    loc: tuple
    source: LocatedYaml

    running = True  # a holdout set to 0 has ended: not looked for

    def problem(self, message: str) -> DefinitionProblem:
        return self.source.problem(self.loc, message, severity="warning")

    def changes(self, record: ExperimentRecord) -> list[DefinitionProblem]:
        before = next((arm["weight"] for arm in record.arms if arm["name"] == HOLDOUT_ARM), None)
        if before is None or float(before) == self.percent:
            return []
        return [self.problem(
            f"experiment {self.name}: segment {self.segment}'s holdout changed while running: "
            f"{float(before):g}% -> {self.percent:g}% (leads already assigned keep their arm, "
            "so its result mixes both shares)"
        )]  # fmt: skip

    def conclusive(self, result: ExperimentResult) -> list[DefinitionProblem]:
        if not result.conclusive:
            return []
        return [self.problem(
            f"experiment {self.name} is conclusive: {result.verdict.rstrip('.')}; end it by "
            f"setting segment {self.segment}'s holdout to 0"
        )]  # fmt: skip


def _where_defined(inspection: Inspection, record: ExperimentRecord) -> _Split | _Holdout | None:
    """The split step (by experiment name: it is the key) or the segment holding leads out."""
    definitions = inspection.definitions
    if record.kind == "holdout":
        return _holdout(inspection, record)
    for sequence in definitions.sequences.values():
        for index, step in enumerate(sequence.steps):
            if isinstance(step, SplitStep) and sequence.experiment_of(step) == record.name:
                source = inspection.sources[sequence.id]
                return _Split(record.name, sequence, index, step, source)
    return None


def _holdout(inspection: Inspection, record: ExperimentRecord) -> _Holdout | None:
    segments = inspection.definitions.segments
    located = [(("segments", i, "holdout"), s) for i, s in enumerate(segments.segments)]
    located.append((("default", "holdout"), segments.default))
    for loc, segment in located:
        if segment.id == record.segment and inspection.segments_source is not None:
            if segment.holdout == 0:
                return None  # ended: leads are no longer held out
            return _Holdout(record.name, segment.id, segment.holdout, loc,
                            inspection.segments_source)  # fmt: skip
    return None


def _arm_changes(recorded: dict[str, Any], arm, path: str) -> list[str]:
    """What differs between an arm as it started and as it is now, for people."""
    changes = []
    if float(recorded.get("weight", 1)) != float(arm.weight):
        changes.append(f"weight {float(recorded['weight']):g} -> {float(arm.weight):g}")
    if bool(recorded.get("holdout")) != arm.holdout:
        changes.append("now a holdout" if arm.holdout else "no longer a holdout")
    if recorded.get("next") != arm.next:
        changes.append(f"next {recorded.get('next') or '(default)'} -> {arm.next or '(default)'}")
    if recorded.get("path") and recorded["path"] != path:
        changes.append("its steps changed")
    return changes
