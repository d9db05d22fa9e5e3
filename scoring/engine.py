"""The pure scoring engine: responses + model -> score and stage.

No I/O, no clocks: the workflow calls it directly (it is deterministic), and so
can tests, backtests and batch rescoring.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.definitions import STAGES, ScoringModel


@dataclass(frozen=True)
class ScoreStep:
    """The effect of one response on a lead's score and stage."""

    old_score: int
    new_score: int
    points: int
    reason: str
    old_stage: str
    new_stage: str

    @property
    def stages_crossed(self) -> list[str]:
        """Every stage entered, in order (a big jump can pass MQL on its way to SQL)."""
        return list(STAGES[STAGES.index(self.old_stage) + 1 : STAGES.index(self.new_stage) + 1])


def stage_for(model: ScoringModel, score: int, current: str) -> str:
    """The stage a score earns; stages only move forward here (recycling is explicit)."""
    earned = "lead"
    if score >= model.thresholds.sql:
        earned = "sql"
    elif score >= model.thresholds.mql:
        earned = "mql"
    if current not in STAGES:  # stages beyond nurture (sales-owned) are left alone
        return current
    return earned if STAGES.index(earned) > STAGES.index(current) else current


def apply_response(
    model: ScoringModel, score: int, stage: str, response_type: str, detail: str = ""
) -> ScoreStep:
    points = model.points.get(response_type, 0)
    new_score = max(0, score + points)
    reason = f"{response_type} {points:+d}" + (f" ({detail})" if detail else "")
    return ScoreStep(score, new_score, points, reason, stage, stage_for(model, new_score, stage))
