"""Outbox messages keep their sender, so a refusal at the receiver can name it and tell it.

Adds the nullable columns ``sender_type`` and ``sender_id`` to entity_outbox.
Rows written before the upgrade have no sender: their refusals are still
logged, counted and dead-lettered, naming only the receiver. Adding nullable
columns without a default changes only the catalog (no table rewrite): the
ACCESS EXCLUSIVE lock on entity_outbox lasts milliseconds.

Revision ID: 0005_outbox_sender
Revises: 0003_commit_fences
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_outbox_sender"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("entity_outbox") as batch:
        batch.add_column(sa.Column("sender_type", sa.String(255), nullable=True))
        batch.add_column(sa.Column("sender_id", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entity_outbox") as batch:
        batch.drop_column("sender_id")
        batch.drop_column("sender_type")
