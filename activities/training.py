"""Weekly retraining's work: train a model on the stored history and store it as a
candidate (or refused), never active: a person compares and activates it
(docs/predictive.md, Drift and retraining). The workflow (workflows/retrain.py) runs
this once per scheduled run; the Schedule is services/retrain_schedule.py's.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field
from sqlalchemy.orm import sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.definition_set import Definitions
from scoring.model_store import store
from scoring.predictive import TrainingError, train
from scoring.stored_history import stored_history

log = logging.getLogger("nurture.training")


class RetrainRequest(BaseModel):
    actor: str = "schedule:nurture-retrain"  # stored as the model's created_by


class RetrainResult(BaseModel):
    fingerprint: str
    status: str  # candidate | refused (or the status of the same model stored before)
    reasons: list[str] = Field(default_factory=list)  # why it was refused
    examples: int = 0  # training moments
    leads: int = 0  # history read


class TrainingActivities:
    """Built with the worker's database and definitions (scoring.yaml's `predictive`)."""

    def __init__(self, sessions: sessionmaker, definitions: Definitions):
        self.sessions, self.definitions = sessions, definitions

    @activity.defn
    def train_candidate(self, request: RetrainRequest) -> RetrainResult:
        """Train on everything stored and keep the model as a candidate. Too little
        history is not retried: the next week's run has more."""
        history = stored_history(self.sessions)
        try:
            training = train(history, self.definitions, progress=_heartbeat)
        except TrainingError as exc:
            raise ApplicationError(str(exc), type="TrainingError", non_retryable=True) from None
        with self.sessions.begin() as session:
            record = store(session, training, request.actor)
            status = record.status
        log.info("trained %s (%s) on %d leads", training.model.fingerprint, status, len(history))
        return RetrainResult(fingerprint=training.model.fingerprint, status=status,
                             reasons=training.refused, examples=training.examples,
                             leads=len(history))  # fmt: skip


def _heartbeat(message: str) -> None:
    """Training's progress, as heartbeats when run as an activity (a test may call it)."""
    if activity.in_activity():
        activity.heartbeat(message)
