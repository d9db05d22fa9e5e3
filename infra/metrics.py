"""Nurture's own metrics, exported with the Temporal SDK's on the worker's Prometheus
endpoint (`NURTURE_METRICS_PORT`, `/metrics`).

They are recorded by the activities through `activity.metric_meter()`, so besides their
own labels each carries `namespace`, `task_queue` and `activity_type` (and the SDK's
`service_name`). Each is counted when the activity *writes* what it counts (the message
status, the score change, the handoff row...), not when it runs: a retried activity that
finds the row an earlier attempt wrote counts nothing. So a worker dying just after the
write loses that count, and a commit failing just after the count (the activity is then
retried) may count it twice; both are rare. Scoring outside a worker (`nurture rescore`)
is not counted here, nor are handoffs of workflows from before the `sales-handoff` patch.

Recording never raises: outside an activity, with metrics off, or if the meter fails,
it does nothing (the failure is logged at DEBUG).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger("infra.metrics")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | histogram
    unit: str
    labels: tuple[str, ...]
    description: str


# Marketing sends, once per status a send's `messages` row is given: sent, skipped (no
# consent), deferred (quiet hours or a cap; each deferral counts), failed (refused by the
# provider, or missing the compliance footer), retrying (provider unavailable, 429/5xx:
# retried), unknown (cut off during the provider call; never repeated).
MESSAGES = Metric(
    "nurture_messages_total", "counter", "messages", ("channel", "status", "sequence"),
    "Marketing messages by channel, outcome and sequence",
)  # fmt: skip

# Responses (open, click, reply, page view...) scored by a lead's workflow, by type.
RESPONSES = Metric(
    "nurture_responses_total", "counter", "responses", ("type",),
    "Responses scored, by response type",
)  # fmt: skip

# Score changes written: cause is response, decay, rescore or answer (a sales
# rejection rescoring the lead); direction up, down or none (rescored, same total).
SCORE_CHANGES = Metric(
    "nurture_score_changes_total", "counter", "changes", ("cause", "direction"),
    "Score changes written, by cause and direction",
)  # fmt: skip

# Stage changes written (lead, mql, pql, sql, accepted, disqualified), one per stage
# entered (lead -> mql -> sql at once is two), recycles and sales' answers included.
STAGE_CHANGES = Metric(
    "nurture_stage_changes_total", "counter", "changes", ("from_stage", "to_stage"),
    "Stage changes, by the stage left and the stage entered",
)  # fmt: skip

# Handoffs to sales: one per lead and qualification cycle, by routing pool and rep.
HANDOFFS = Metric(
    "nurture_handoffs_total", "counter", "handoffs", ("pool", "rep"),
    "Leads handed to a sales rep, by routing pool and rep",
)  # fmt: skip

# Notifications to reps (kind: new, reminder, reassigned_to, reassigned_away) per
# channel (email, sms, webhook, crm) and outcome: sent, skipped (no address, no CRM
# secret), retrying, failed (gave up), unknown (cut off mid-send; never repeated).
REP_NOTIFICATIONS = Metric(
    "nurture_rep_notifications_total", "counter", "notifications", ("channel", "kind", "status"),
    "Notifications to sales reps, by channel, kind and outcome",
)  # fmt: skip

# Speed to lead: seconds from the response that made the lead sales-qualified (its
# occurred_at, the provider's or the caller's time) to the first notification of the
# handoff sent to the rep, on whichever channel got there first. Handoffs caused by a
# rescore or decay (no response) are not in it.
HANDOFF_LATENCY = Metric(
    "nurture_handoff_latency_seconds", "histogram", "s", (),
    "Seconds from the SQL-crossing response to the rep's first notification",
)  # fmt: skip
HANDOFF_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# A provider's 429 (too many requests) to a marketing send, by channel. Each is retried
# with back-off; at the configured sends per second (NURTURE_EMAIL_SENDS_PER_SECOND,
# NURTURE_SMS_SENDS_PER_SECOND) there should be none: a steady count means the setting
# is above the account's limit.
PROVIDER_THROTTLED = Metric(
    "nurture_provider_throttled_total", "counter", "answers", ("channel",),
    "429 answers from the email and SMS providers to sends, retried with back-off",
)  # fmt: skip

ALL = (MESSAGES, RESPONSES, SCORE_CHANGES, STAGE_CHANGES, HANDOFFS, REP_NOTIFICATIONS,
       HANDOFF_LATENCY, PROVIDER_THROTTLED)  # fmt: skip
BUCKETS = {HANDOFF_LATENCY.name: HANDOFF_LATENCY_BUCKETS}  # for PrometheusConfig


def _meter() -> MetricMeter | None:
    if not activity.in_activity():
        return None
    meter = activity.metric_meter()
    return None if meter is MetricMeter.noop else meter


def enabled() -> bool:
    """Whether recording would export anything (in an activity, metrics on): lets a
    caller skip work done only for a metric."""
    try:
        return _meter() is not None
    except Exception:
        return False


def record(metric: Metric, value: float = 1, **labels: object) -> None:
    """Add `value` to a counter or record it in a histogram. Never raises."""
    try:
        meter = _meter()
        if meter is None:
            return
        attributes = {name: _label(labels.get(name)) for name in metric.labels}
        if metric.kind == "counter":
            meter.create_counter(metric.name, metric.description, metric.unit).add(
                int(value), attributes
            )
        else:
            meter.create_histogram_float(metric.name, metric.description, metric.unit).record(
                float(value), attributes
            )
    except Exception:  # a metric must never fail an activity
        log.debug("metric %s not recorded", metric.name, exc_info=True)


def _label(value: object) -> str:
    return "none" if value is None or value == "" else str(value)


def response_cause(cause: str) -> str:
    """The scoring activity's cause as a label: a response's type is `response`."""
    return cause if cause in ("decay", "rescore", "answer") else "response"


def direction(old: float | None, new: float) -> str:
    old = round(old or 0.0, 2)
    new = round(new, 2)
    return "up" if new > old else "down" if new < old else "none"


def worker_runtime(settings: Settings) -> Runtime:
    """The Temporal runtime of a worker process: Core's logs forwarded to Python logging
    (formatted and masked like ours) and, unless NURTURE_METRICS_PORT is 0, the SDK's
    metrics and these on NURTURE_METRICS_HOST:NURTURE_METRICS_PORT/metrics (loopback
    unless NURTURE_METRICS_HOST opts in to another address, e.g. 0.0.0.0).

    Raises SettingsError if the port cannot be bound."""
    from infra.settings import SettingsError

    prometheus = None
    if settings.metrics_port:
        prometheus = PrometheusConfig(
            bind_address=address(settings.metrics_host, settings.metrics_port),
            histogram_bucket_overrides=BUCKETS,
        )
    telemetry = TelemetryConfig(
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
        ),
        metrics=prometheus,
    )
    try:
        return Runtime(telemetry=telemetry)
    except ValueError as exc:  # "Failed starting Prometheus exporter: Address already in use"
        raise SettingsError(
            f"NURTURE_METRICS_PORT: cannot serve metrics on "
            f"{address(settings.metrics_host, settings.metrics_port)}: {exc}"
        ) from None


def address(host: str, port: int) -> str:
    """host:port, an IPv6 host in brackets ([::]:9464), as a socket address is written."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
