"""Alembic migrations of the entity store (run with `entities migrate`)."""
