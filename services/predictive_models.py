"""Predictive models for people: train and store one, list them, activate, retire and roll
back (`nurture train`, `nurture models`; docs/predictive.md).

A model is trained as a `candidate` (or stored `refused`, with why) and is used by no
one until a person activates it. At most one model is `active`: activating another
puts the active one back to `candidate`, so `rollback` can bring it back with one
command. Retiring the active model stops predictions until another is activated.

Each change is one transaction with its audit entry, under a write lock on the table
(PostgreSQL: a table lock; SQLite: BEGIN IMMEDIATE), so two people activating at the
same time still leave one model active. A refused change raises `ModelError` and
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from models.db import AuditEntry, PredictiveModelRecord, as_utc, begin_writing, utcnow
from models.definition_set import Definitions
from models.scoring_model import PredictiveSettings
from scoring.history import HistoryLead
from scoring.model_store import store
from scoring.predictive import Training, calibration_error, train
from services.audit import record

# Audit actions that made a model active: who activated it is read from them.
ACTIVATIONS = ("model.activate", "model.rollback")


class ModelError(ValueError):
    """A refused lookup or change (unknown or ambiguous fingerprint, a refused model...):
    the message says why and what to do; `status` as HTTP would say it (404: no such
    model, 409: the change does not fit the models' state)."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


# --- reading -----------------------------------------------------------------------------------


def list_models(session: Session) -> list[PredictiveModelRecord]:
    """Every stored model, newest first."""
    query = select(PredictiveModelRecord).order_by(
        PredictiveModelRecord.created_at.desc(), PredictiveModelRecord.fingerprint
    )
    return list(session.scalars(query))


def find(session: Session, fingerprint: str) -> PredictiveModelRecord:
    """The model named by its fingerprint or a unique start of it (`pm-` may be left out)."""
    wanted = fingerprint.strip().lower()
    if not wanted.removeprefix("pm-"):
        raise ModelError("give a model's fingerprint (see `nurture models list`)", 404)
    if not wanted.startswith("pm-"):
        wanted = "pm-" + wanted
    exact = session.get(PredictiveModelRecord, wanted)
    if exact is not None:
        return exact
    known = session.scalars(select(PredictiveModelRecord.fingerprint)).all()
    matches = sorted(name for name in known if name.startswith(wanted))
    if not matches:
        raise ModelError(f"no model {fingerprint!r} (see `nurture models list`)", 404)
    if len(matches) > 1:
        raise ModelError(f"{fingerprint!r} is ambiguous: it starts {', '.join(matches)}; "
                         "give more of the fingerprint")  # fmt: skip
    return session.get(PredictiveModelRecord, matches[0])


def activated_by(session: Session, fingerprint: str) -> str | None:
    """Who made the model active last (from the audit log), None if no one has."""
    return session.scalar(
        select(AuditEntry.actor)
        .where(AuditEntry.target == fingerprint, AuditEntry.action.in_(ACTIVATIONS))
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )


def describe(record_: PredictiveModelRecord) -> dict[str, Any]:
    """What `models list/show` print: the model's identity, window, and its test figures
    beside the rules' (the drift reference and the feature names are left out)."""
    summary = record_.summary or {}
    metrics = summary.get("metrics") or {}
    return {
        "fingerprint": record_.fingerprint,
        "status": record_.status,
        "kind": record_.kind,
        "horizon_days": record_.horizon_days,
        "trained_from": record_.trained_from,
        "trained_to": record_.trained_to,
        "tested_from": summary.get("tested_from"),
        "tested_to": record_.tested_to,
        "examples": summary.get("examples"),
        "features": len(summary.get("features") or []),
        "versions": summary.get("versions"),
        "metrics": {
            side: _figures(metrics[side]) for side in ("model", "rules") if side in metrics
        },
        "refused": summary.get("refused") or [],
        "created_at": record_.created_at,
        "created_by": record_.created_by,
        "activated_at": record_.activated_at,
        "retired_at": record_.retired_at,
    }


def _figures(side: dict[str, Any]) -> dict[str, Any]:
    return {
        "roc_auc": side.get("roc_auc"),
        "pr_auc": side.get("pr_auc"),
        "brier": side.get("brier"),
        "calibration_error": round(calibration_error(side.get("deciles") or []), 4),
        "at_mql": side.get("at_mql"),
        "at_sql": side.get("at_sql"),
    }


# --- training ----------------------------------------------------------------------------------


def train_and_store(
    sessions: sessionmaker,
    history: Sequence[HistoryLead],
    definitions: Definitions,
    kind: str | None,
    test_fraction: float,
    actor: str,
    progress: Callable[[str], None] | None = None,
    *,
    settings: PredictiveSettings | None = None,
) -> tuple[PredictiveModelRecord, Training]:
    """Train on `history` and store the model: `candidate`, or `refused` with its reasons
    (kept for the record). A `TrainingError` (too little history) stores nothing. The
    same model trained again is stored once: its record is returned as it stands."""
    training = train(history, definitions, settings, kind=kind, test_fraction=test_fraction,
                     progress=progress)  # fmt: skip
    with sessions.begin() as session:
        stored = store(session, training, actor)
        new = stored in session.new
        record(session, actor, "model.train", stored.fingerprint,
               {"status": stored.status, "new": new, "kind": stored.kind,
                "refused": training.refused})  # fmt: skip
    return stored, training


# --- changing ----------------------------------------------------------------------------------


@contextmanager
def _changing(sessions: sessionmaker) -> Iterator[Session]:
    """A transaction holding the table's write lock: committed if the block ends, rolled
    back (nothing changed) if it raises."""
    with sessions() as session:
        begin_writing(session)  # SQLite: BEGIN IMMEDIATE
        if session.get_bind().dialect.name == "postgresql":
            # Plain reads (the workers' active-model check) go on; writers queue.
            session.execute(text("LOCK TABLE predictive_models IN SHARE ROW EXCLUSIVE MODE"))
        yield session
        session.commit()


def activate(sessions: sessionmaker, fingerprint: str, actor: str) -> PredictiveModelRecord:
    """Make the model the one every worker uses; the active one goes back to `candidate`."""
    with _changing(sessions) as session:
        chosen = find(session, fingerprint)
        previous = _make_active(session, chosen)
        record(session, actor, "model.activate", chosen.fingerprint,
               {"previous": previous})  # fmt: skip
    return chosen


def rollback(sessions: sessionmaker, actor: str) -> PredictiveModelRecord:
    """Activate again the model that was active before the current one: of the models
    once active that are neither refused nor retired, the one activated last."""
    with _changing(sessions) as session:
        current = _active(session)
        earlier = [m for m in list_models(session)
                   if m.status == "candidate" and m.activated_at is not None]  # fmt: skip
        if not earlier:
            raise ModelError("no model to roll back to: no other model was active before "
                             "(or it was retired; activate one with "
                             "`nurture models activate FINGERPRINT`)")  # fmt: skip
        chosen = max(earlier, key=lambda m: as_utc(m.activated_at))
        _make_active(session, chosen)
        record(session, actor, "model.rollback", chosen.fingerprint,
               {"previous": current.fingerprint if current else None})  # fmt: skip
    return chosen


def retire(sessions: sessionmaker, fingerprint: str, actor: str) -> PredictiveModelRecord:
    """Take the model out of use for good (until activated again by name). Retiring the
    active model leaves none active: predictions stop."""
    with _changing(sessions) as session:
        chosen = find(session, fingerprint)
        if chosen.status in ("retired", "refused"):
            raise ModelError(f"{chosen.fingerprint} is {chosen.status} already: "
                             "it is not used")  # fmt: skip
        was = chosen.status
        chosen.status, chosen.retired_at = "retired", utcnow()
        record(session, actor, "model.retire", chosen.fingerprint, {"was": was})
    return chosen


def _make_active(session: Session, chosen: PredictiveModelRecord) -> str | None:
    """`chosen` active, the active one (returned by fingerprint) a candidate again."""
    if chosen.status == "refused":
        reasons = "; ".join(chosen.summary.get("refused") or []) or "no reason was stored"
        raise ModelError(f"{chosen.fingerprint} was refused when it was trained and cannot be "
                         f"activated: {reasons}")  # fmt: skip
    if chosen.status == "active":
        raise ModelError(f"{chosen.fingerprint} is the active model already")
    current = _active(session)
    for model in session.scalars(select(PredictiveModelRecord)
                                 .where(PredictiveModelRecord.status == "active")):  # fmt: skip
        model.status = "candidate"
    session.flush()  # before the new one is active: never two at once
    chosen.status, chosen.activated_at, chosen.retired_at = "active", utcnow(), None
    return current.fingerprint if current else None


def _active(session: Session) -> PredictiveModelRecord | None:
    return session.scalars(
        select(PredictiveModelRecord)
        .where(PredictiveModelRecord.status == "active")
        .order_by(PredictiveModelRecord.activated_at.desc())
    ).first()
