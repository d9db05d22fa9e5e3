"""The Alembic environment: the target is the models' metadata (models/db.py).

models/schema.py runs it with an open connection in `config.attributes["connection"]`
(inside its transaction and lock); without one it connects to DATABASE_URL from our
settings. SQLite gets batch mode: its ALTER TABLE cannot change or drop most things, so
Alembic rebuilds the table instead.
"""

from __future__ import annotations

from alembic import context

from models.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _options(dialect_name: str) -> dict:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
    }


def run_offline() -> None:
    """`--sql`: print the SQL instead of running it."""
    from sqlalchemy.engine import make_url

    from infra.settings import get_settings

    url = config.attributes.get("url") or get_settings().effective_database_url
    context.configure(url=url, literal_binds=True, **_options(make_url(url).get_dialect().name))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
        return
    from infra.settings import get_settings

    engine = make_engine(get_settings().effective_database_url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **_options(connection.dialect.name))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
