"""bench/generate_leads.py, the benchmarks' seeded leads, keeps up with the schema: every
profile field of a lead is generated (a field added to leads broke every benchmark that
generates leads until this test)."""

from sqlalchemy import func, select

from bench.generate_leads import generate
from models.db import Lead, Response, make_engine
from services.definitions import load_definitions
from tests.conftest import FIXTURE_DEFINITIONS


def test_leads_and_responses_are_generated_with_every_profile_field(database_url):
    definitions = load_definitions(FIXTURE_DEFINITIONS)
    made = generate(database_url, definitions, 50, 400)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Lead)) == 50
        assert connection.scalar(select(func.count()).select_from(Response)) == 400
        first = connection.execute(select(Lead).limit(1)).one()
    engine.dispose()
    assert first.email and first.locale is None and first.timezone == "UTC"
    assert sum(made.segments.values()) == 50
