"""The tables, as SQLAlchemy Core objects for queries; Alembic migrations create them.

Every table that grows with traffic carries the partition number (or the entity
key it derives from), so Postgres can hash-partition it by partition later.

Every JSON column keeps the exact text written to it (migration 0004), so what
the codec encodes reads back equal and in the same order: keys in their order,
1.0 a float and 1 an int, -0.0 with its sign, ints of any length. Postgres
columns are ``json``, which stores the text as given and still answers ``->``
and ``->>`` (``jsonb`` reorders keys and turns numbers into ``numeric``);
SQLite columns are ``TEXT`` (a column declared ``JSON`` has numeric affinity,
which turns a top-level ``1.0`` into the integer 1 and ``2**70`` into a float).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSON as PGJSON
from sqlalchemy.engine import Dialect

#: The Alembic revision this code expects; `entities migrate` brings a database to it.
HEAD_REVISION = "0006_ack_watermarks"

metadata = sa.MetaData()


def dumps(value: Any) -> str:
    """The JSON text a store writes: compact, standard library, no NaN or infinity."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class JSONText(sa.types.TypeDecorator[Any]):
    """JSON in a TEXT column (SQLite): written with :func:`dumps`, read with ``json.loads``."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str:
        return dumps(value)  # None is stored as JSON null, as sa.JSON does

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


JSONType = JSONText().with_variant(PGJSON(), "postgresql")
TS = sa.DateTime(timezone=True)

#: Entity keys compare by code point on every backend (Postgres: collation "C"), so
#: list_entities orders and pages ids the same way everywhere.
KEY = sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")

snapshots = sa.Table(
    "entity_snapshots",
    metadata,
    sa.Column("entity_type", KEY, primary_key=True),
    sa.Column("entity_id", KEY, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("vsn", sa.Integer, nullable=False),
    sa.Column("state", JSONType, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

processed = sa.Table(
    "entity_processed",
    metadata,
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("entity_type", sa.String(255), nullable=False),
    sa.Column("entity_id", sa.String(255), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("reply", JSONType, nullable=True),
    sa.Column("processed_at", TS, nullable=False),
)

partitions = sa.Table(
    "entity_partitions",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("claimed_at", TS, nullable=True),
)

settings_table = sa.Table(
    "entity_settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

alarms = sa.Table(
    "entity_alarms",
    metadata,
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

outbox = sa.Table(
    "entity_outbox",
    metadata,
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("entity_type", sa.String(255), nullable=False),
    sa.Column("entity_id", sa.String(255), nullable=False),
    sa.Column("msg", JSONType, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("sender_type", sa.String(255), nullable=True),  # the entity that sent it
    sa.Column("sender_id", sa.String(255), nullable=True),
)

dead_letters = sa.Table(
    "entity_dead_letters",
    metadata,
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

#: Acknowledgement watermarks: at ``acked_before`` (the database's clock), every
#: processed record of ``partition`` committed before that instant had its message
#: acknowledged. A small history per partition, so the purge can pick the latest
#: watermark noted at least the retention ago (see Store.purge_processed).
acks = sa.Table(
    "entity_acks",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("acked_before", TS, primary_key=True),
)

sa.Index("ix_entity_processed_at", processed.c.processed_at)
sa.Index("ix_entity_alarms_due", alarms.c.status, alarms.c.fire_at)
sa.Index("ix_entity_outbox_partition", outbox.c.partition, outbox.c.seq)
