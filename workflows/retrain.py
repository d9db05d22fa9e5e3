"""Weekly retraining: one run trains a candidate model on the stored history
(activities/training.py), on a Temporal Schedule while scoring.yaml says
`predictive.retrain: weekly` (services/retrain_schedule.py). Nothing is activated:
a person compares the candidate with `nurture models` and activates it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.training import RetrainRequest, RetrainResult, TrainingActivities

# A crash or a database outage is retried; too little history is not (non-retryable).
TRAIN_RETRIES = RetryPolicy(initial_interval=timedelta(minutes=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(minutes=30), maximum_attempts=3)  # fmt: skip


@workflow.defn
class RetrainWorkflow:
    @workflow.run
    async def run(self, request: RetrainRequest) -> RetrainResult:
        return await workflow.execute_activity_method(
            TrainingActivities.train_candidate, request,
            start_to_close_timeout=timedelta(hours=2), retry_policy=TRAIN_RETRIES,
        )  # fmt: skip
