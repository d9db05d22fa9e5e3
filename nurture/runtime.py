"""Wiring: turn settings into a database, channels, a Temporal client and a worker.

Shared by `worker.py`, the API, the CLI and the tests, so every process is put
together the same way.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.nurture import NurtureActivities
from channels.base import EmailChannel, SmsChannel
from channels.links import Links
from channels.outbox import OutboxChannel
from channels.sendgrid_email import SendGridEmailChannel
from channels.twilio_sms import TwilioSmsChannel
from models.db import SalesRepRow, create_schema, make_engine, session_factory
from models.loader import Definitions, load_definitions
from nurture.settings import Settings
from sales.activities import SalesActivities
from workflows import sandbox_runner
from workflows.lead import LeadWorkflow


def configure_logging(verbose: bool = True) -> None:
    """One log format for every process. The Twilio SDK logs each request with its
    parameters (phone numbers, message bodies) at INFO: kept to warnings."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)


@dataclass
class Database:
    engine: Engine
    sessions: sessionmaker


def open_database(settings: Settings) -> Database:
    """Connect and make sure the schema exists (migrations come with Alembic later)."""
    if settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    create_schema(engine)
    return Database(engine, session_factory(engine))


def sync_sales_reps(database: Database, definitions: Definitions) -> None:
    """Make sales_reps match sales.yaml (reps are never deleted: handoffs refer to them)."""
    with database.sessions.begin() as session:
        for rep in definitions.sales.reps:
            row = session.get(SalesRepRow, rep.id) or SalesRepRow(id=rep.id)
            row.name, row.email, row.phone, row.active = rep.name, rep.email, rep.phone, rep.active
            session.add(row)


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
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
) -> NurtureActivities:
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
    return NurtureActivities(
        sessions=database.sessions,
        email=email,
        sms=sms,
        templates_dir=templates_dir,
        sender=settings.sender,
        links=links,
        delivery=definitions.delivery,
        definitions=definitions,
        sales=sales,
    )


def build_worker(
    client: Client, settings: Settings, activities: NurtureActivities, **options
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[LeadWorkflow],
        workflow_runner=sandbox_runner(),
        activities=activities.all(),
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=32),
        graceful_shutdown_timeout=timedelta(seconds=10),
        **options,
    )


def load_and_prepare(settings: Settings) -> tuple[Definitions, Database]:
    """Definitions checked, database ready, reps synced: what every process needs first."""
    definitions = load_definitions(settings.definitions_dir)
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    return definitions, database
