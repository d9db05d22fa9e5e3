"""Wiring: turn settings into a database, channels, a Temporal client and a worker.

Shared by `worker.py`, the API, the CLI and the tests, so every process is put
together the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker
from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from activities.consent import ConsentActivities
from activities.crm import CrmActivities
from activities.lead import LeadActivities
from activities.registry import Activities
from activities.reply_notices import ReplyNoticeActivities
from activities.sales import SalesActivities
from activities.training import TrainingActivities
from channels.base import EmailChannel, SmsChannel
from channels.links import Links
from channels.outbox import OutboxChannel
from channels.sendgrid_email import SendGridEmailChannel
from channels.twilio_sms import TwilioSmsChannel
from infra.logs import setup as setup_logging
from infra.settings import Settings, SettingsError, get_settings
from models.db import SalesRepRow, make_engine, session_factory
from models.definition_set import Definitions
from models.schema import ensure_schema
from models.workflow_io import send_queue
from services.definitions import load_definitions
from workflows import sandbox_runner
from workflows.confirmation import ConfirmationWorkflow
from workflows.crm_sync import CrmSyncWorkflow
from workflows.lead import LeadWorkflow
from workflows.retrain import RetrainWorkflow


def configure_logging(
    verbose: bool = True, log_format: str | None = None, level: str | None = None
) -> None:
    """One log set-up for every process (`infra.logs`): text or JSON lines on stderr,
    emails and phone numbers masked. The format and level are NURTURE_LOG_FORMAT and
    NURTURE_LOG_LEVEL unless given; not verbose: warnings and worse only. The Twilio SDK
    logs each request with its parameters at INFO: kept to warnings."""
    if log_format is None or level is None:
        try:
            settings = get_settings()
            log_format, level = log_format or settings.log_format, level or settings.log_level
        except SettingsError:  # reported by whatever reads the settings next
            log_format, level = log_format or "text", level or "INFO"
    number = logging.getLevelName(level)
    setup_logging(number if verbose else max(number, logging.WARNING), log_format)


@dataclass
class Database:
    engine: Engine
    sessions: sessionmaker


def open_database(settings: Settings) -> Database:
    """Connect and make sure the schema is the code's (models/schema.py): an empty
    database is migrated to head; one behind head is upgraded on SQLite and refused on
    PostgreSQL (`SchemaError`: run `nurture db upgrade`). PostgreSQL connections get
    NURTURE_DB_CONNECT_TIMEOUT and NURTURE_DB_STATEMENT_TIMEOUT; a SQLite file is made
    private (0600) if it is created here."""
    if settings.database_url is None:
        settings.ensure_state_dir()
    url = settings.effective_database_url
    create_private_sqlite_file(url)
    engine = make_engine(url, pool_size=settings.max_concurrent_activities)
    if engine.dialect.name == "postgresql":
        apply_postgres_timeouts(engine, settings)
    try:
        ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return Database(engine, session_factory(engine))


def create_private_sqlite_file(url: str) -> None:
    """Create the SQLite file of `url` empty and 0600 if it does not exist yet (SQLite
    would create it 0644: the leads' emails and phone numbers, readable by every user).
    Its -wal and -shm files take the same mode from it. An existing file is left alone."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return
    path = Path(name)
    if name.startswith("file:") or not path.parent.is_dir():
        return  # a URI filename, or a directory missing: SQLite says what is wrong
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # an empty file is a valid DB


def apply_postgres_timeouts(engine: Engine, settings: Settings) -> None:
    """Pass psycopg a connect timeout and a statement timeout for every new connection
    (the `do_connect` event adds them to its connect arguments). A `connect_timeout` or
    `statement_timeout` already in DATABASE_URL wins: it is the more specific choice."""
    statement_ms = math.ceil(settings.db_statement_timeout * 1000)  # 0: no timeout

    @event.listens_for(engine, "do_connect")
    def _timeouts(_dialect, _record, _args, parameters: dict) -> None:
        parameters.setdefault("connect_timeout", settings.db_connect_timeout)
        options = parameters.get("options") or ""
        if statement_ms and "statement_timeout" not in options:
            # A startup option, so the timeout holds from the first statement, with no
            # extra round trip. (PgBouncer: set NURTURE_DB_STATEMENT_TIMEOUT=0 and put
            # the timeout on the role, or let it pass `options` through.)
            parameters["options"] = f"{options} -c statement_timeout={statement_ms}".strip()


def sync_sales_reps(database: Database, definitions: Definitions) -> None:
    """Make sales_reps match sales.yaml (reps are never deleted: handoffs refer to them)."""
    with database.sessions.begin() as session:
        for rep in definitions.sales.reps:
            row = session.get(SalesRepRow, rep.id) or SalesRepRow(id=rep.id)
            row.name, row.email, row.phone, row.active = rep.name, rep.email, rep.phone, rep.active
            session.add(row)


def temporal_tls(settings: Settings) -> TLSConfig | bool:
    """mTLS with the client certificate, TLS alone for an API key, or plaintext."""
    if settings.temporal_tls_cert is not None:
        return TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
            server_root_ca_cert=(
                settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None
            ),
        )
    if settings.temporal_tls is not None:
        if settings.temporal_tls and settings.temporal_tls_ca:
            return TLSConfig(server_root_ca_cert=settings.temporal_tls_ca.read_bytes())
        return settings.temporal_tls
    return settings.temporal_api_key is not None  # Temporal Cloud's API keys need TLS


async def connect_temporal(settings: Settings, runtime: Runtime | None = None) -> Client:
    api_key = settings.temporal_api_key
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key.get_secret_value() if api_key else None,
        tls=temporal_tls(settings),
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )


def build_channels(settings: Settings) -> tuple[EmailChannel, SmsChannel]:
    """SendGrid and Twilio when their keys are set; the outbox otherwise."""
    outbox = OutboxChannel(settings.outbox_dir)
    email: EmailChannel = outbox
    sms: SmsChannel = outbox
    if settings.sendgrid_api_key:
        email = SendGridEmailChannel(
            settings.sendgrid_api_key.get_secret_value(), host=settings.sendgrid_host
        )
    if settings.twilio_account_sid and settings.twilio_auth_token:
        sms = TwilioSmsChannel(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            status_callback=f"{settings.public_url.rstrip('/')}/webhooks/twilio/status",
            api_base=settings.twilio_api_base,
        )
    return email, sms


def build_links(settings: Settings) -> Links:
    return Links(settings.resolved_secret_key(), settings.public_url, settings.inbound_domain)


def build_activities(
    settings: Settings, database: Database, definitions: Definitions | None = None
) -> Activities:
    """The activities, with the delivery policy (quiet hours, caps) of `definitions`
    (loaded from the settings' definitions directory if not given)."""
    definitions = definitions or load_definitions(settings.definitions_dir)
    email, sms = build_channels(settings)
    links = build_links(settings)
    templates_dir = settings.definitions_dir / "templates"
    sales = SalesActivities(
        sessions=database.sessions,
        definitions=definitions,
        email=email,
        sms=sms,
        links=links,
        templates_dir=templates_dir,
        sender=settings.sender,
    )
    lead = LeadActivities(
        sessions=database.sessions,
        email=email,
        sms=sms,
        templates_dir=templates_dir,
        sender=settings.sender,
        links=links,
        delivery=definitions.delivery,
        definitions=definitions,
        default_locale=settings.default_locale,
    )
    return Activities(
        lead=lead,
        sales=sales,
        crm=build_crm_activities(settings, database),
        training=TrainingActivities(database.sessions, definitions),
        consent=ConsentActivities(
            database.sessions, email, links, templates_dir, settings.sender, settings.default_locale
        ),
        replies=ReplyNoticeActivities(sales, templates_dir, settings.public_url),
    )


def build_crm_activities(settings: Settings, database: Database) -> CrmActivities:
    token = settings.hubspot_access_token
    return CrmActivities(
        database.sessions,
        hubspot_token=token.get_secret_value() if token else None,
        hubspot_host=settings.hubspot_host,
        currency=settings.hubspot_currency,
        overlap=timedelta(seconds=settings.crm_sync_overlap_seconds),
    )


def build_worker(client: Client, settings: Settings, activities: Activities, **options) -> Workers:
    """The lead workflow and every activity on the task queue, and each channel's sends on
    a queue of its own that Temporal holds to the provider's rate across every worker."""
    main = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[LeadWorkflow, CrmSyncWorkflow, RetrainWorkflow, ConfirmationWorkflow],
        workflow_runner=sandbox_runner(),
        # All of them, sends too: workflows started before the send queues send from here.
        activities=activities.all(),
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        max_cached_workflows=settings.max_cached_workflows,
        **_activity_options(settings),
        **options,
    )
    return Workers([main, *send_workers(client, settings, activities, **options)])


def send_workers(client: Client, settings: Settings, activities: Activities, **options):
    """A worker per channel polling that channel's send queue, at most the provider's
    sends per second across all workers (a task-queue rate limit, kept by Temporal)."""
    rates = {"email": settings.email_sends_per_second, "sms": settings.sms_sends_per_second}
    return [
        Worker(
            client,
            task_queue=send_queue(settings.task_queue, channel),
            activities=[activities.lead.send_message],
            max_task_queue_activities_per_second=rate,
            **_activity_options(settings),
            **options,
        )
        for channel, rate in rates.items()
    ]


def _activity_options(settings: Settings) -> dict:
    return {
        # One thread per activity slot: activities are synchronous (database, providers).
        "activity_executor": concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_concurrent_activities
        ),
        "max_concurrent_activities": settings.max_concurrent_activities,
        # On SIGTERM: no new tasks; running activities get this long to finish.
        "graceful_shutdown_timeout": timedelta(seconds=settings.shutdown_timeout),
    }


class Workers:
    """Several workers run and stopped as one: `async with` starts them all and, leaving
    the block, shuts them down together (each lets its running activities finish)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    async def __aenter__(self) -> Workers:
        started: list[Worker] = []
        try:
            for worker in self.workers:
                await worker.__aenter__()
                started.append(worker)
        except BaseException:
            await asyncio.gather(*(w.__aexit__(None, None, None) for w in started))
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.gather(*(worker.__aexit__(*exc_info) for worker in self.workers))


def load_and_prepare(settings: Settings) -> tuple[Definitions, Database]:
    """Definitions checked, database ready, reps synced: what every process needs first."""
    definitions = load_definitions(settings.definitions_dir)
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    return definitions, database
