"""Processed-message records and acknowledgement watermarks of the SQL store.

A record is the dedup of one applied message: its id and the reply recorded
with its commit. Records are stamped with the store's clock (the server's
``now()`` on Postgres, the runtime's clock on SQLite), and so are the
watermarks a partition's owner notes when everything it committed is
acknowledged. The invariant (see :mod:`entities.store.base`): a record is
never purged while its message is queued, in flight, held or unacknowledged;
a purge deletes only records committed before their partition's latest
watermark that is at least the retention old, so the resend window counts
from the acknowledgement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from entities.errors import FenceError, StoreError
from entities.store import schema as t
from entities.store import sql_commit
from entities.store.base import Processed
from entities.store.sql_support import (
    DRIVER_DATA_ERRORS,
    SQLTables,
    _aware,
    _utc,
    translate,
    utcnow,
)

# The acknowledgement watermark (Postgres): fenced like a commit, at the server's clock.
_NOTE_ACKED = sa.text(
    """
    WITH fence AS MATERIALIZED (SELECT entities_fence_epoch(:p, :e))
    INSERT INTO entity_acks (partition, acked_before)
    SELECT :p, now() FROM fence
    ON CONFLICT DO NOTHING
    """
).bindparams(sa.bindparam("p", type_=sa.Integer), sa.bindparam("e", type_=sa.BigInteger))


class RecordTables(SQLTables):
    """The Store's processed-record and watermark methods on SQL."""

    def processed(self, message_ids: Sequence[str]) -> dict[str, Processed]:
        if not message_ids:
            return {}
        return self._read(lambda c: self._records(c, message_ids))

    def _records(self, conn: Connection, message_ids: Sequence[str]) -> dict[str, Processed]:
        ids = list(message_ids)
        if self.dialect == "postgresql":  # one array parameter: compiled once, whatever the count
            match = t.processed.c.message_id == sa.any_(
                sa.bindparam("ids", ids, type_=postgresql.ARRAY(sa.String))
            )
        else:
            match = t.processed.c.message_id.in_(ids)
        rows = conn.execute(sa.select(t.processed).where(match)).all()
        return {
            r.message_id: Processed(
                r.message_id, r.entity_type, r.entity_id, r.partition, r.ok, r.reply
            )
            for r in rows
        }

    def note_acked(self, partition: int, epoch: int | None) -> None:
        if self.dialect == "postgresql":
            self._note_acked_pg(partition, epoch)
            return
        with self._tx() as conn:
            if epoch is not None:
                self._check_epoch(conn, partition, epoch)
            conn.execute(
                self._insert(t.acks)
                .values(partition=partition, acked_before=_utc(utcnow()))
                .on_conflict_do_nothing()
            )

    def _note_acked_pg(self, partition: int, epoch: int | None) -> None:
        # One statement: the epoch fence (FOR SHARE, as a commit takes it) and the
        # watermark at the server's clock, the clock the records are stamped with.
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(_NOTE_ACKED, {"p": partition, "e": epoch})
        except sa.exc.DBAPIError as exc:
            raise sql_commit.translate_fenced(exc.orig) from exc  # type: ignore[arg-type]
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"state store error: {exc}") from exc

    def purge_processed(self, retention_s: float) -> int:
        a, p = t.acks.c, t.processed.c
        if self.dialect == "postgresql":
            threshold: Any = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, retention_s)
        else:
            threshold = _utc(utcnow() - dt.timedelta(seconds=retention_s))
        removed = 0
        with self._tx() as conn:
            cuts = conn.execute(
                sa.select(a.partition, sa.func.max(a.acked_before))
                .where(a.acked_before <= threshold)
                .group_by(a.partition)
            ).all()
            for partition, before in cuts:
                before = _utc(_aware(before))
                result = conn.execute(
                    sa.delete(t.processed).where(
                        (p.partition == partition) & (p.processed_at < before)
                    )
                )
                removed += int(result.rowcount or 0)
                conn.execute(
                    sa.delete(t.acks).where((a.partition == partition) & (a.acked_before < before))
                )
        return removed

    def _record_processed(
        self, conn: Connection, processed: list[Processed], now: dt.datetime
    ) -> None:
        """Inserts processed-message records; a message id already recorded fails the commit.

        Postgres gets COPY, about three times faster than multi-row INSERTs for
        the hundreds of rows of a batch; its driver errors are translated here.
        """
        if self.dialect != "postgresql":
            try:
                conn.execute(
                    sa.insert(t.processed),
                    [
                        {
                            "message_id": p.message_id,
                            "entity_type": p.entity_type,
                            "entity_id": p.entity_id,
                            "partition": p.partition,
                            "ok": p.ok,
                            "reply": p.reply,
                            "processed_at": now,
                        }
                        for p in processed
                    ],
                )
            except IntegrityError as exc:
                raise FenceError(
                    f"a message of this batch was already recorded: {exc.orig}", duplicate=True
                ) from exc
            return
        import psycopg

        raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
        try:
            with (
                raw.cursor() as cur,
                cur.copy(
                    "COPY entity_processed (message_id, entity_type, entity_id, partition, ok, "
                    "reply, processed_at) FROM STDIN"
                ) as copy,
            ):
                for p in processed:
                    copy.write_row(
                        (
                            p.message_id,
                            p.entity_type,
                            p.entity_id,
                            p.partition,
                            p.ok,
                            t.dumps(p.reply),
                            now,
                        )
                    )
        except psycopg.errors.UniqueViolation as exc:
            raise FenceError(
                f"a message of this batch was already recorded: {exc}", duplicate=True
            ) from exc
        except (psycopg.Error, *DRIVER_DATA_ERRORS) as exc:
            raise translate(exc) from exc
