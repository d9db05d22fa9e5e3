"""Where a lead's arm is kept: the first assignment of a lead to an experiment is stored
and is its arm for good (a retry, a replay, a second visit to the split, a recycle, a
change of weights all find it). The experiment itself is stored with its first lead, as
it was then, for `validate` to compare the definitions with."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from experiments.assignment import assign, held_out
from models.db import ExperimentAssignment, ExperimentRecord, as_utc
from models.definitions import HOLDOUT_ARM, NURTURED_ARM
from models.workflow_io import ArmAssigned, ArmRequest


def draw(request: ArmRequest) -> str:
    """The arm the lead falls in, from the experiment's name and the lead's ID alone."""
    if request.kind == "holdout":
        inside = held_out(request.segment or "", request.lead_id, request.percent or 0)
        return HOLDOUT_ARM if inside else NURTURED_ARM
    return assign(request.experiment, request.lead_id,
                  [(arm.name, arm.weight) for arm in request.arms])  # fmt: skip


def assign_arm(session: Session, request: ArmRequest) -> ArmAssigned:
    """The lead's arm: the stored one, else (unless the experiment has a winner) a new one,
    stored with the time. Safe to repeat, and to race: the key keeps the first."""
    holdouts = {arm.name for arm in request.arms if arm.holdout}
    stored = _stored(session, request)
    if stored is not None:
        return stored
    if request.winner is not None:  # ended: not in the experiment, on the winner's path
        return ArmAssigned(experiment=request.experiment, arm=request.winner,
                           holdout=request.winner in holdouts)  # fmt: skip
    arm = draw(request)
    _record_experiment(session, request)
    try:
        with session.begin_nested():
            session.add(ExperimentAssignment(
                experiment=request.experiment, lead_id=request.lead_id, arm=arm,
                holdout=arm in holdouts, enrollment_id=request.enrollment_id,
                assigned_at=request.at,
            ))  # fmt: skip
    except IntegrityError:  # a concurrent attempt stored it first: theirs stands
        pass
    return _stored(session, request)


def _stored(session: Session, request: ArmRequest) -> ArmAssigned | None:
    row = session.get(ExperimentAssignment, (request.experiment, request.lead_id))
    if row is None:
        return None
    return ArmAssigned(experiment=row.experiment, arm=row.arm, holdout=row.holdout,
                       assigned_at=as_utc(row.assigned_at))  # fmt: skip


def _record_experiment(session: Session, request: ArmRequest) -> None:
    """The experiment as its first lead found it (another lead's worker may store it at
    the same moment: then theirs stands)."""
    if session.get(ExperimentRecord, request.experiment) is not None:
        return
    try:
        with session.begin_nested():
            session.add(ExperimentRecord(
                name=request.experiment, kind=request.kind, sequence_id=request.sequence_id,
                step_id=request.step_id, segment=request.segment, control=request.control,
                metric=request.metric, arms=[arm.model_dump() for arm in request.arms],
                started_at=request.at,
            ))  # fmt: skip
    except IntegrityError:
        pass


def experiment_records(session: Session) -> dict[str, ExperimentRecord]:
    return {row.name: row for row in session.scalars(select(ExperimentRecord))}
