"""The Operations page: sends recorded `unknown`, stuck leads (and why, from Temporal),
webhook refusals, events waiting for a lead, the inbox backlog, whether workers poll the
task queues, and where the metrics and health endpoints are.

The database parts are counts and short pages (services/operations.py). Temporal is
asked with timeouts (DescribeTaskQueue, and the stuck leads' histories): a Temporal that
does not answer is said on the page, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from api.console.web import Console, Viewer, page_responses, web_tracking
from api.errors import error_responses
from infra.settings import Settings
from models.db import utcnow
from services import operations, stuck
from services.operations import Backlog, Refusal, UnknownNotice, UnknownSend, Waiting
from services.stuck import StuckLead

EXPLAIN_LEADS = 5  # stuck leads whose history is read from Temporal
EXPLAIN_TIMEOUT = 3.0  # seconds for all of them
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class FromDatabase:
    unknown_count: int
    unknown: list[UnknownSend]
    notices_count: int
    notices: list[UnknownNotice]
    stuck_responses: int  # up to operations.COUNT_CAP + 1
    stuck: list[StuckLead]
    refusals: list[Refusal]
    waiting: Waiting
    backlog: Backlog


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])
    settings = console.settings

    @router.get(
        "/console/operations",
        response_class=HTMLResponse,
        responses={**page_responses(), **error_responses(503)},
        include_in_schema=True,
    )
    async def operations_page(
        request: Request, _viewer: Viewer = Depends(console.allowed("operations"))
    ):
        """What needs an operator: unknown sends, stuck leads, refusals, waiting events,
        worker health, and the metrics endpoints."""
        found = await console.db.run(_read, console.sessions)
        client = console.intake.client
        health, _ = await asyncio.gather(
            operations.worker_health(client, settings.temporal_namespace, settings.task_queue),
            _explain(client, found.stuck[:EXPLAIN_LEADS]),
        )
        return console.render(
            request, "operations/page.html", found=found, health=health,
            polling=[queue.polling(utcnow()) for queue in health],
            endpoints=endpoints(settings), temporal_ui=_temporal_ui(settings), capped=capped,
            tracking=web_tracking(settings),
        )  # fmt: skip

    return router


def _read(sessions) -> FromDatabase:
    with sessions() as session:
        count, unknown = operations.unknown_sends(session)
        notices_count, notices = operations.unknown_notices(session)
        stuck_responses, stuck_leads = operations.stuck_leads(session)
        return FromDatabase(
            unknown_count=count,
            unknown=unknown,
            notices_count=notices_count,
            notices=notices,
            stuck_responses=stuck_responses,
            stuck=stuck_leads,
            refusals=operations.refusals(session),
            waiting=operations.waiting_events(session),
            backlog=operations.backlog(session),
        )


async def _explain(client, leads: list[StuckLead]) -> None:
    """What Temporal says of the first stuck leads (in place), if it says it in time."""
    if leads:
        # Past the timeout the page shows what the database knows.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stuck.explain(client, leads), EXPLAIN_TIMEOUT)


def capped(count: int) -> str:
    """A count that stopped at operations.COUNT_CAP: `10,000 or more`."""
    if count > operations.COUNT_CAP:
        return f"{operations.COUNT_CAP:,} or more"
    return f"{count:,}"


def endpoints(settings: Settings) -> list[dict[str, str | None]]:
    """Each worker's metrics and health endpoints, and the API's health: a link where this
    host's address is known, else where to find it."""
    host = settings.metrics_host
    found = []
    for name, port, path in (("Worker metrics (Prometheus)", settings.metrics_port, "/metrics"),
                             ("Worker health", settings.health_port, "/health")):  # fmt: skip
        if port == 0:
            found.append({"name": name, "url": None, "note": "off (port 0)"})
        elif host in WILDCARD_HOSTS:
            found.append({"name": name, "url": None, "note": f"port {port}, {path}, on each "
                          "worker's host"})  # fmt: skip
        else:
            shown = f"[{host}]" if ":" in host else host
            found.append({"name": name, "url": f"http://{shown}:{port}{path}", "note": None})
    found.append({"name": "API health", "url": "/health", "note": None})
    return found


def _temporal_ui(settings: Settings) -> str:
    host = settings.temporal_address.rsplit(":", 1)[0]
    return (f"http://{host}:{settings.temporal_ui_port}/namespaces/"
            f"{quote(settings.temporal_namespace)}/task-queues/")  # fmt: skip
