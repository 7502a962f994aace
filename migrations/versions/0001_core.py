"""The core schema: snapshots, processed messages, partitions, settings, alarms, outbox,
dead letters.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "entity_snapshots",
        sa.Column("entity_type", sa.String(255), primary_key=True),
        sa.Column("entity_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("vsn", sa.Integer, nullable=False),
        sa.Column("state", JSONType, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "entity_processed",
        sa.Column("message_id", sa.String(255), primary_key=True),
        sa.Column("entity_type", sa.String(255), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("reply", JSONType, nullable=True),
        sa.Column("processed_at", TS, nullable=False),
    )
    op.create_index("ix_entity_processed_at", "entity_processed", ["processed_at"])
    op.create_table(
        "entity_partitions",
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("claimed_at", TS, nullable=True),
    )
    op.create_table(
        "entity_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_table(
        "entity_alarms",
        sa.Column("entity_type", sa.String(255), primary_key=True),
        sa.Column("entity_id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("fire_at", TS, nullable=False),
        sa.Column("payload", JSONType, nullable=True),
        sa.Column("scheduling_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("dispatched_at", TS, nullable=True),
    )
    op.create_index("ix_entity_alarms_due", "entity_alarms", ["status", "fire_at"])
    op.create_table(
        "entity_outbox",
        sa.Column("message_id", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("entity_type", sa.String(255), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("msg", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_entity_outbox_partition", "entity_outbox", ["partition", "seq"])
    op.create_table(
        "entity_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "entity_dead_letters",
        "entity_outbox",
        "entity_alarms",
        "entity_settings",
        "entity_partitions",
        "entity_processed",
        "entity_snapshots",
    ):
        op.drop_table(table)
