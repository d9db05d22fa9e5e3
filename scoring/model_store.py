"""Predictive models in the database: stored once trained, and the active one loaded by
every worker (the `predictive_models` table; services/predictive_models.py lists,
activates and retires them for people).

A worker asks which model is active at most every `refresh_seconds` (one indexed query)
and loads a new one only when the fingerprint changes, so activating or retiring a
model reaches every worker within that time, and a scoring activity pays nothing for it
otherwise.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.db import PredictiveModelRecord
from scoring.predictive import PredictiveModel, Training

REFRESH_SECONDS = 30.0


def store(session: Session, training: Training, actor: str | None = None) -> PredictiveModelRecord:
    """The trained model as a row: `refused` if training refused it, else a `candidate`
    (never active until a person activates it). Training the same model twice stores it once."""
    model = training.model
    existing = session.get(PredictiveModelRecord, model.fingerprint)
    if existing is not None:
        return existing
    summary = model.summary
    record = PredictiveModelRecord(
        fingerprint=model.fingerprint,
        kind=model.kind,
        status="refused" if training.refused else "candidate",
        horizon_days=model.horizon_days,
        trained_from=_utc(summary["trained_from"]),
        trained_to=_utc(summary["trained_to"]),
        tested_to=_utc(summary["tested_to"]),
        summary=summary,
        artifact=model.artifact(),
        created_by=actor,
    )
    session.add(record)
    return record


def load(record: PredictiveModelRecord) -> PredictiveModel:
    return PredictiveModel.load(record.artifact, record.summary, record.fingerprint)


def active_fingerprint(session: Session) -> str | None:
    return session.scalar(
        select(PredictiveModelRecord.fingerprint).where(PredictiveModelRecord.status == "active")
    )


class ActiveModel:
    """The active predictive model, as this process last saw it (None: none is active)."""

    def __init__(self, sessions: sessionmaker, refresh_seconds: float = REFRESH_SECONDS):
        self.sessions = sessions
        self.refresh_seconds = refresh_seconds
        self._model: PredictiveModel | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()  # activities run in a thread pool

    def get(self) -> PredictiveModel | None:
        if time.monotonic() - self._checked < self.refresh_seconds:
            return self._model
        with self._lock:
            if time.monotonic() - self._checked >= self.refresh_seconds:
                self._refresh()
        return self._model

    def _refresh(self) -> None:
        with self.sessions() as session:
            fingerprint = active_fingerprint(session)
            current = self._model.fingerprint if self._model else None
            if fingerprint != current:
                record = session.get(PredictiveModelRecord, fingerprint) if fingerprint else None
                self._model = load(record) if record is not None else None
        self._checked = time.monotonic()


def _utc(moment: str) -> datetime:
    """The summary's ISO time, in UTC."""
    parsed = datetime.fromisoformat(moment)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
