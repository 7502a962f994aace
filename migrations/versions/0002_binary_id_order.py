"""Entity ids sort by code point on Postgres, whatever the database's collation.

``list_entities`` pages through ids in order; under a linguistic collation
(en_US.UTF-8, ICU) Postgres ordered them differently from SQLite and Python
("_x" < "a" < "B"). The key columns of entity_snapshots get the "C" collation,
so the primary key index itself is in code-point order and paging stays an
index scan. SQLite already compares text by code point: nothing to do there.

Revision ID: 0002_binary_id_order
Revises: 0001_core
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_binary_id_order"
down_revision = "0001_core"
branch_labels = None
depends_on = None

KEY_COLUMNS = ("entity_type", "entity_id")


def _collate(collation: str | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in KEY_COLUMNS:
        op.alter_column(
            "entity_snapshots",
            column,
            type_=sa.String(255, collation=collation),
            existing_type=sa.String(255),
            existing_nullable=False,
        )


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
