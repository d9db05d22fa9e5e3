"""Alembic migrations of the Nurture schema (models/db.py). Run through `nurture db`;
models/schema.py configures Alembic from code (there is no alembic.ini)."""
