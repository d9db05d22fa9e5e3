"""Moving leads in flight to the current version of their sequence (`nurture
migrate-leads`): each running enrollment on an older version is moved by its workflow's
`migrate` update, which refuses (and changes nothing) where the lead's current step has no
counterpart of the same type in the new version and the mapping names none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from channels.template_sets import TemplateVersions
from infra.settings import Settings
from models.db import Enrollment, Lead
from models.definitions import Sequence
from models.workflow_io import MigrateRequest
from services import lead_client
from services.runtime import connect_temporal, open_database

CONCURRENCY = 20  # updates in flight


@dataclass
class Outcome:
    lead_id: str
    email: str
    enrollment_id: str
    from_version: int
    status: str  # migrated | refused | failed | would migrate
    detail: str


async def migrate_in_flight(
    settings: Settings,
    target: Sequence,
    mapping: dict[str, str],
    dry_run: bool,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[Outcome]:
    """Move every running enrollment of `target` on an older version to it (the leads
    waiting in a step `mapping` names go on from its counterpart); a dry run only lists
    them. `progress(done, total)` after each lead."""
    database = open_database(settings)
    with database.sessions() as session:
        rows = session.execute(
            select(Enrollment, Lead.email)
            .join(Lead, Lead.id == Enrollment.lead_id)
            .where(Enrollment.sequence_id == target.id, Enrollment.status == "active",
                   Enrollment.sequence_version < target.version)
            .order_by(Enrollment.started_at)
        ).all()  # fmt: skip
    todo = [Outcome(e.lead_id, email, e.id, e.sequence_version, "would migrate", "")
            for e, email in rows]  # fmt: skip
    if dry_run or not todo:
        database.engine.dispose()
        return todo
    # The leads moved to the new version go on with today's templates too.
    templates = TemplateVersions(settings.definitions_dir / "templates", database.sessions)
    request = MigrateRequest(sequence=target, step_map=mapping, templates=templates.current())
    database.engine.dispose()
    client = await connect_temporal(settings)
    slots = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(outcome: Outcome) -> None:
        nonlocal done
        async with slots:
            try:
                result = await asyncio.wait_for(
                    lead_client.migrate(client, outcome.lead_id, request), timeout=60
                )
            except WorkflowUpdateFailedError as exc:  # the validator or the handler said no
                outcome.status, outcome.detail = "refused", str(exc.cause or exc)
            except (RPCError, TimeoutError) as exc:
                outcome.status, outcome.detail = "failed", f"{type(exc).__name__}: {exc}"
            else:
                outcome.status = "migrated"
                outcome.detail = (f"v{result.from_version} {result.from_step} -> "
                                  f"v{result.to_version} {result.to_step}")  # fmt: skip
        done += 1
        progress(done, len(todo))

    progress(0, len(todo))
    await asyncio.gather(*(one(o) for o in todo))
    return todo
