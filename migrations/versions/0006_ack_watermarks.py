"""Acknowledgement watermarks, so processed records outlive their messages' acknowledgement.

A processed-message record may be purged only once its message can no longer
be delivered again: a partition's owner notes, from the database's clock, an
instant before which every record of the partition it committed has its
message acknowledged (``entity_acks``). The purge deletes a partition's records
committed before the latest watermark noted at least the retention ago, so the
resend window counts from the acknowledgement. A new table only: no existing
row changes and nothing is locked beyond the CREATE TABLE. After the upgrade
nothing is purged until each partition's first watermark is the retention old
(a day by default): the records table grows by a day's traffic once.

Revision ID: 0006_ack_watermarks
Revises: 0005_outbox_sender
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_ack_watermarks"
down_revision = "0005_outbox_sender"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entity_acks",
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("acked_before", sa.DateTime(timezone=True), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("entity_acks")
