"""The SQL state store on SQLAlchemy 2: Postgres (psycopg 3) and SQLite.

Version fences are enforced by the database: an update names the expected
version in its WHERE clause and a new entity is inserted only if absent, so a
stale writer changes nothing. The partition epoch is read ``FOR SHARE`` in the
same transaction, so a claim by a new owner waits for, or invalidates, every
commit of the old one. Driver errors become StoreError at one boundary
(:class:`~entities.store.sql_support.SQLTables`). Alarms and the outbox and dead
letters live in their own modules (``sql_alarms``, ``sql_letters``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from entities.errors import ConfigurationError, FenceError, SchemaError
from entities.store import schema as t
from entities.store import sql_commit
from entities.store.base import (
    CommitBatch,
    Key,
    Processed,
    Snapshot,
    Store,
    Write,
)
from entities.store.sql_alarms import AlarmTables
from entities.store.sql_letters import LetterTables
from entities.store.sql_records import RecordTables
from entities.store.sql_support import (
    _aware,
    _text,
    utcnow,
)

# One fixed statement for every batch's updates (compiled and prepared once): the
# batch's rows arrive as arrays, unnested into a table to join on the fence.
_UPDATE_MANY = sa.text(
    """
    UPDATE entity_snapshots AS s
    SET version = v.expected + 1, vsn = v.vsn, state = CAST(v.state AS JSON),
        updated_at = :now
    FROM unnest(:types, :ids, :expected, :vsns, :states)
        AS v(entity_type, entity_id, expected, vsn, state)
    WHERE s.entity_type = v.entity_type AND s.entity_id = v.entity_id
      AND s.version = v.expected
    RETURNING s.entity_type, s.entity_id
    """
).bindparams(
    sa.bindparam("types", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("ids", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("expected", type_=postgresql.ARRAY(sa.BigInteger)),
    sa.bindparam("vsns", type_=postgresql.ARRAY(sa.Integer)),
    sa.bindparam("states", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("now", type_=sa.DateTime(timezone=True)),
)


def make_engine(url: str, pool_size: int = 8, pre_ping: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE.

    ``pre_ping`` tests every pooled connection before use (a round trip); a
    worker turns it off, since it retries a batch whose connection failed.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        json_serializer=t.dumps,
    )


class SQLStore(RecordTables, AlarmTables, LetterTables, Store):
    """The Store on a SQLAlchemy engine (Postgres or SQLite)."""

    def __init__(self, url_or_engine: str | Engine, pool_size: int = 8) -> None:
        self.engine = (
            make_engine(url_or_engine, pool_size)
            if isinstance(url_or_engine, str)
            else url_or_engine
        )
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    # -- schema and partitions ------------------------------------------------

    def check_schema(self) -> None:
        def revision(conn: Connection) -> str | None:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

        found = self._read(revision)
        if found != t.HEAD_REVISION:
            where = self.engine.url.render_as_string(hide_password=True)
            state = "has no entity schema" if found is None else f"is at revision {found}"
            raise SchemaError(
                f"the database {where} {state}; this code needs {t.HEAD_REVISION}. "
                "Run `entities migrate` (or `alembic upgrade head`) first."
            )

    def ensure_partitions(self, partitions: int) -> None:
        with self._tx() as conn:
            recorded = conn.execute(
                sa.select(t.settings_table.c.value).where(t.settings_table.c.key == "partitions")
            ).scalar()
            if recorded is None:
                conn.execute(
                    self._insert(t.settings_table)
                    .values(key="partitions", value=str(partitions))
                    .on_conflict_do_nothing()
                )
                recorded = conn.execute(
                    sa.select(t.settings_table.c.value).where(
                        t.settings_table.c.key == "partitions"
                    )
                ).scalar()
            if recorded is not None and int(recorded) != partitions:
                raise ConfigurationError(
                    f"ENTITIES_PARTITIONS is {partitions} but this deployment was created with "
                    f"{recorded} partitions; the count is fixed because it decides where every "
                    f"entity lives. Set ENTITIES_PARTITIONS={recorded}."
                )
            conn.execute(
                self._insert(t.partitions)
                .values([{"partition": p, "epoch": 0} for p in range(partitions)])
                .on_conflict_do_nothing()
            )

    def claim_partition(self, partition: int, owner: str) -> int:
        return self.claim_partitions([partition], owner)[partition]

    def claim_partitions(self, partitions: Sequence[int], owner: str) -> dict[int, int]:
        wanted = sorted(set(partitions))  # held leases: no other worker claims these now
        if not wanted:
            return {}
        with self._tx() as conn:
            rows = conn.execute(
                sa.update(t.partitions)
                .where(t.partitions.c.partition.in_(wanted))
                .values(epoch=t.partitions.c.epoch + 1, owner=owner, claimed_at=utcnow())
                .returning(t.partitions.c.partition, t.partitions.c.epoch)
            ).all()
            epochs = {int(r.partition): int(r.epoch) for r in rows}
            missing = [p for p in wanted if p not in epochs]
            if missing:  # rolls the claims back: nothing is half claimed
                raise ConfigurationError(
                    f"partition {missing[0]} is not recorded; run a worker setup"
                )
        return epochs

    def partition_owners(self) -> dict[int, tuple[int, str | None]]:
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.partitions.c.partition, t.partitions.c.epoch, t.partitions.c.owner)
            ).all()
        )
        return {r.partition: (r.epoch, r.owner) for r in rows}

    # -- snapshots ------------------------------------------------------------

    @staticmethod
    def _snapshot(row: Any) -> Snapshot:
        return Snapshot(
            row.entity_type,
            row.entity_id,
            row.version,
            row.vsn,
            row.state,
            _aware(row.updated_at),
        )

    def load(self, entity_type: str, entity_id: str) -> Snapshot | None:
        return self.load_many([(entity_type, entity_id)]).get((entity_type, entity_id))

    def load_many(self, keys: Iterable[Key]) -> dict[Key, Snapshot]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        cond = sa.tuple_(t.snapshots.c.entity_type, t.snapshots.c.entity_id).in_(wanted)
        rows = self._read(lambda c: c.execute(sa.select(t.snapshots).where(cond)).all())
        return {(r.entity_type, r.entity_id): self._snapshot(r) for r in rows}

    def rewrite_snapshot(self, snapshot: Snapshot, vsn: int, state: dict[str, Any]) -> bool:
        s = t.snapshots.c
        key = (s.entity_type == snapshot.entity_type) & (s.entity_id == snapshot.entity_id)
        with self._tx() as conn:
            row = conn.execute(sa.select(t.snapshots).where(key).with_for_update()).first()
            if row is None or self._snapshot(row) != snapshot:
                return False
            conn.execute(
                sa.update(t.snapshots)
                .where(key)
                .values(version=snapshot.version + 1, vsn=vsn, state=state, updated_at=utcnow())
            )
        return True

    def list_ids(self, entity_type: str, limit: int = 100, after: str | None = None) -> list[str]:
        query = (
            sa.select(t.snapshots.c.entity_id)
            .where(t.snapshots.c.entity_type == entity_type)
            .order_by(t.snapshots.c.entity_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(t.snapshots.c.entity_id > after)
        return list(self._read(lambda c: c.execute(query).scalars().all()))

    # -- the fenced commit ----------------------------------------------------

    def commit(self, batch: CommitBatch) -> dict[str, Processed]:
        if not batch:
            return self.processed(batch.lookups)
        now = utcnow()
        if self.dialect == "postgresql" and sql_commit.takes(batch):
            return sql_commit.commit(self.engine, batch, now)
        with self._tx() as conn:
            recorded_at = now  # the store's clock: the server's on Postgres
            if batch.epoch is not None:
                recorded_at = self._check_epoch(conn, batch.partition, batch.epoch) or now
            elif self.dialect == "postgresql" and batch.processed:
                recorded_at = conn.execute(sa.select(sa.func.now())).scalar_one()
            found = self._records(conn, batch.lookups) if batch.lookups else {}
            if self.dialect == "postgresql":
                self._write_many(conn, batch.writes, now)
            else:
                for w in batch.writes:
                    self._write(
                        conn, w.entity_type, w.entity_id, w.expected_version, w.vsn, w.state, now
                    )
            if batch.processed:
                self._record_processed(conn, batch.processed, recorded_at)
            for entity_type, entity_id in batch.alarm_clears:
                self._clear_alarms(conn, entity_type, entity_id)
            for change in batch.alarms:
                self._set_alarm(conn, change)
            # After the changes: an outcome names its scheduling, so a change that made
            # another one leaves it no row to touch, and a firing of the scheduling a
            # change of this batch wrote (entities.alarm_ops) removes what it wrote.
            for outcome in batch.alarm_outcomes:
                self._alarm_outcome(conn, outcome, now)
            if batch.outbox:
                seq = self._next_outbox_seq(conn, {m.partition for m in batch.outbox}, now)
                conn.execute(
                    sa.insert(t.outbox),
                    [
                        {
                            "message_id": m.message_id,
                            "partition": m.partition,
                            "seq": seq + i,
                            "entity_type": m.entity_type,
                            "entity_id": m.entity_id,
                            "msg": m.msg,
                            "created_at": now,
                            "sender_type": m.sender[0] if m.sender else None,
                            "sender_id": m.sender[1] if m.sender else None,
                        }
                        for i, m in enumerate(batch.outbox)
                    ],
                )
            if batch.dead_letters:
                conn.execute(
                    sa.insert(t.dead_letters),
                    [
                        {
                            "queue": _text(d.queue),
                            "reason": _text(d.reason),
                            "raw": _text(d.raw),
                            "created_at": now,
                        }
                        for d in batch.dead_letters
                    ],
                )
        return found

    @staticmethod
    def _next_outbox_seq(conn: Connection, partitions: set[int], now: dt.datetime) -> int:
        # After every pending message of those partitions, whatever the clock says: a
        # clock that stands still (the test kit's) or runs behind on the next owner's
        # host must not publish a later commit's messages first.
        last = conn.execute(
            sa.select(sa.func.max(t.outbox.c.seq)).where(t.outbox.c.partition.in_(partitions))
        ).scalar()
        clock_seq = int(now.timestamp() * 1_000_000)
        return clock_seq if last is None else max(clock_seq, int(last) + 1)

    def _write_many(self, conn: Connection, writes: list[Write], now: dt.datetime) -> None:
        """Fenced writes in three statements whatever their number (Postgres).

        New entities: one multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING;
        updates: one UPDATE ... FROM unnest(arrays) WHERE version = expected
        RETURNING. A row missing from either RETURNING is a stale write.
        """
        s = t.snapshots.c
        inserts = [w for w in writes if w.state is not None and w.expected_version == 0]
        updates = [w for w in writes if w.state is not None and w.expected_version > 0]
        for w in writes:
            if w.state is None:
                self._write(conn, w.entity_type, w.entity_id, w.expected_version, w.vsn, None, now)
        if inserts:
            stmt = (
                postgresql.insert(t.snapshots)
                .on_conflict_do_nothing()
                .returning(s.entity_id, sort_by_parameter_order=True)
            )
            rows = conn.execute(
                stmt,
                [
                    {
                        "entity_type": w.entity_type,
                        "entity_id": w.entity_id,
                        "version": 1,
                        "vsn": w.vsn,
                        "state": w.state,
                        "updated_at": now,
                    }
                    for w in inserts
                ],
            ).all()
            if len(rows) != len(inserts):
                raise FenceError(
                    f"{len(inserts) - len(rows)} new entities of this batch were created "
                    "concurrently by another writer"
                )
        if updates:
            params = {
                "types": [w.entity_type for w in updates],
                "ids": [w.entity_id for w in updates],
                "expected": [w.expected_version for w in updates],
                "vsns": [w.vsn for w in updates],
                "states": [t.dumps(w.state) for w in updates],
                "now": now,
            }
            update = conn.execute(_UPDATE_MANY, params)
            done = {(r.entity_type, r.entity_id) for r in update}
            stale = [w for w in updates if (w.entity_type, w.entity_id) not in done]
            if stale:
                w = stale[0]
                raise FenceError(
                    f"{w.entity_type} {w.entity_id!r}: stored version is no longer "
                    f"{w.expected_version}; a concurrent writer changed it"
                    + (f" (and {len(stale) - 1} more)" if len(stale) > 1 else "")
                )

    def _write(
        self,
        conn: Connection,
        etype: str,
        eid: str,
        expected: int,
        vsn: int,
        state: dict[str, Any] | None,
        now: dt.datetime,
    ) -> None:
        s = t.snapshots.c
        key = (s.entity_type == etype) & (s.entity_id == eid)
        if state is None:
            if expected:
                row = conn.execute(
                    sa.delete(t.snapshots).where(key & (s.version == expected)).returning(s.version)
                ).first()
                if row is None:
                    raise FenceError(f"{etype} {eid!r}: delete of version {expected} is stale")
            conn.execute(
                sa.delete(t.alarms).where(
                    (t.alarms.c.entity_type == etype) & (t.alarms.c.entity_id == eid)
                )
            )
            return
        values = {"version": expected + 1, "vsn": vsn, "state": state, "updated_at": now}
        # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT.
        if expected == 0:
            row = conn.execute(
                self._insert(t.snapshots)
                .values(entity_type=etype, entity_id=eid, **values)
                .on_conflict_do_nothing()
                .returning(s.version)
            ).first()
        else:
            row = conn.execute(
                sa.update(t.snapshots)
                .where(key & (s.version == expected))
                .values(**values)
                .returning(s.version)
            ).first()
        if row is None:
            raise FenceError(
                f"{etype} {eid!r}: stored version is no longer {expected}; a concurrent writer "
                "changed it"
            )

    def close(self) -> None:
        self.engine.dispose()
