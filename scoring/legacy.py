"""The first scoring model (points per response type, two thresholds), kept only so that
lead workflows started before the score card replay and run on unchanged.

Their histories carry this model in the workflow input and score inside the workflow;
`workflows/lead.py` takes this path only when `workflow.patched("score-card")` is false.
Delete it once no such workflow is open (continue-as-new moves them onto the new path).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

LEGACY_STAGES = ("lead", "mql", "sql")


class LegacyThresholds(BaseModel):
    mql: int
    sql: int


class LegacyScoringModel(BaseModel):
    name: str = "default"
    points: dict[str, int]
    thresholds: LegacyThresholds


@dataclass(frozen=True)
class LegacyScoreStep:
    old_score: int
    new_score: int
    points: int
    reason: str
    old_stage: str
    new_stage: str

    @property
    def stages_crossed(self) -> list[str]:
        start, end = LEGACY_STAGES.index(self.old_stage), LEGACY_STAGES.index(self.new_stage)
        return list(LEGACY_STAGES[start + 1 : end + 1])


def legacy_apply_response(
    model: LegacyScoringModel, score: int, stage: str, response_type: str, detail: str = ""
) -> LegacyScoreStep:
    points = model.points.get(response_type, 0)
    new_score = max(0, score + points)
    reason = f"{response_type} {points:+d}" + (f" ({detail})" if detail else "")
    earned = "lead"
    if new_score >= model.thresholds.sql:
        earned = "sql"
    elif new_score >= model.thresholds.mql:
        earned = "mql"
    new_stage = stage
    if stage in LEGACY_STAGES and LEGACY_STAGES.index(earned) > LEGACY_STAGES.index(stage):
        new_stage = earned
    return LegacyScoreStep(score, new_score, points, reason, stage, new_stage)
