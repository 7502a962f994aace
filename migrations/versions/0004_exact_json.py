"""Every JSON column keeps its exact text: Postgres ``json`` instead of ``jsonb``,
SQLite ``TEXT`` instead of ``JSON``.

``jsonb`` reorders object keys and stores numbers as ``numeric`` (1e300 reads
back as a 301-digit int, -0.0 as 0); SQLite's ``JSON`` declaration gives the
column numeric affinity, which turns a top-level ``1.0`` into the integer 1 and
``2**70`` into a float. After this revision both keep the text as written.

Existing rows are carried over as they are: on Postgres each value becomes
jsonb's own text of it (its keys in jsonb's order, which is all that is left of
the order they were written in); on SQLite numbers already converted stay
converted.

Each Postgres column is converted in its own transaction (``ALTER COLUMN ...
TYPE``, which rewrites the table and its indexes under an ACCESS EXCLUSIVE
lock), so a table is locked only while it alone is rewritten; a run stopped
half way is finished by running it again. docs/upgrading.md has the figures.

Revision ID: 0004
Revises: 0003_commit_fences
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003_commit_fences"
branch_labels = None
depends_on = None

#: (table, JSON column, nullable)
COLUMNS = (
    ("entity_snapshots", "state", False),
    ("entity_processed", "reply", True),
    ("entity_alarms", "payload", True),
    ("entity_outbox", "msg", False),
)


def _postgres(to_type: str) -> None:
    for table, column, _ in COLUMNS:
        with op.get_context().autocommit_block():
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {to_type} "
                f"USING {column}::{to_type}"
            )


def _sqlite(to_type: sa.types.TypeEngine[object], from_type: sa.types.TypeEngine[object]) -> None:
    # SQLite cannot change a column's type in place: batch mode copies the table.
    for table, column, nullable in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column, type_=to_type, existing_type=from_type, existing_nullable=nullable
            )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgres("json")
    else:
        _sqlite(sa.Text(), sa.JSON())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgres("jsonb")
    else:
        _sqlite(sa.JSON(), sa.Text())
