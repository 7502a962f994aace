"""A worker's fenced commit as one Postgres statement: one round trip, one transaction.

The usual batch (the epoch fence, new and updated snapshots, the
processed-message records) is one statement of data-modifying CTEs fed by
three ``json`` parameters (never cast through ``jsonb``, so every state and
reply is stored as the exact text sent: see :mod:`entities.store.schema`), run
in autocommit so it is its own transaction: no BEGIN, no COMMIT, no check
between statements. The checks run in the server and abort the statement, so
nothing of the batch is committed when one fails; the caller learns which from
the error:

- ``entities_fence_epoch`` (migration 0003) takes the partition row FOR SHARE,
  so a claim by another worker waits for this commit and this commit waits for
  a claim in progress, and raises SQLSTATE EN001 unless the partition is still
  at the batch's epoch;
- ``entities_fence_rows`` raises EN002 unless every update found the version it
  was written against;
- a new entity that exists already violates the snapshots' primary key, and a
  message id already recorded violates the processed records' one (a duplicate).

The records take the server's clock (``now()``), the clock the acknowledgement
watermarks and the purge use. The statement also returns the records already
committed for the batch's ``lookups`` (messages that recorded nothing), so a
redelivered message is recognised in the same round trip.

Batches with deletions, alarms, outbox messages or dead letters take the
general path in :mod:`entities.store.sql`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from entities.errors import FenceError, StoreError
from entities.store.base import CommitBatch, Processed
from entities.store.schema import dumps
from entities.store.sql_support import DRIVER_DATA_ERRORS, translate

if TYPE_CHECKING:
    import psycopg

#: SQLSTATEs raised by the fence functions of migration 0003.
STALE_EPOCH, STALE_VERSION = "EN001", "EN002"

#: One fixed statement for every batch (prepared once per connection by psycopg).
#: The batch travels as three JSON documents (new snapshots, updates, processed
#: records), each parsed once by json_to_recordset. They stay ``json``, never
#: ``jsonb``: a cast through jsonb would reorder the keys of every state and reply
#: and renumber their floats, and json hands each state's and reply's text to its
#: ``json`` column exactly as it was sent.
_COMMIT = """
WITH created AS (
    INSERT INTO entity_snapshots (entity_type, entity_id, version, vsn, state, updated_at)
    SELECT n.t, n.i, 1, n.v, n.s, %(now)s::timestamptz
    FROM json_to_recordset(%(new)s::json) AS n(t text, i text, v int, s json)
    RETURNING 1
), updated AS (
    UPDATE entity_snapshots AS s
    SET version = u.e + 1, vsn = u.v, state = u.s, updated_at = %(now)s::timestamptz
    FROM json_to_recordset(%(old)s::json) AS u(t text, i text, e bigint, v int, s json)
    WHERE s.entity_type = u.t AND s.entity_id = u.i AND s.version = u.e
    RETURNING 1
), recorded AS (
    INSERT INTO entity_processed
        (message_id, entity_type, entity_id, partition, ok, reply, processed_at)
    SELECT p.m, p.t, p.i, p.p, p.ok, p.r, now()
    FROM json_to_recordset(%(processed)s::json)
        AS p(m text, t text, i text, p int, ok bool, r json)
    RETURNING 1
)
SELECT
    entities_fence_epoch(%(partition)s::int, %(epoch)s::bigint),
    entities_fence_rows((SELECT count(*) FROM updated), %(updates)s::bigint),
    (SELECT count(*) FROM created),
    (SELECT count(*) FROM recorded),
    (SELECT json_agg(json_build_array(r.message_id, r.entity_type, r.entity_id,
                                      r.partition, r.ok, r.reply))
     FROM entity_processed AS r
     WHERE r.message_id IN (SELECT json_array_elements_text(%(lookups)s::json)))
"""


def takes(batch: CommitBatch) -> bool:
    """True if ``batch`` is one this commit takes (see the module's docstring)."""
    return not (
        batch.alarms
        or batch.alarm_outcomes
        or batch.alarm_clears
        or batch.outbox
        or batch.dead_letters
        or any(w.state is None for w in batch.writes)
    )


def commit(engine: Engine, batch: CommitBatch, now: dt.datetime) -> dict[str, Processed]:
    """Commits ``batch`` (one :func:`takes`) in one statement; returns the records of
    ``batch.lookups`` committed before it.

    Raises FenceError (stale epoch, stale version, or ``duplicate``) or
    StoreError; in both cases nothing of the batch was committed.
    """
    import psycopg

    params = _params(batch, now)
    try:
        proxy = engine.raw_connection()
    except (SQLAlchemyError, psycopg.Error) as exc:  # no connection to be had
        raise StoreError(f"state store error: {exc}") from exc
    pg: psycopg.Connection[Any] = proxy.driver_connection  # type: ignore[assignment]
    try:
        pg.autocommit = True  # the statement is its own transaction
        row = pg.execute(_COMMIT, params).fetchone()
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) or pg.closed:
            proxy.invalidate(exc)  # the connection may be broken: the pool drops it
        raise translate_fenced(exc) from exc
    except DRIVER_DATA_ERRORS as exc:
        raise translate(exc) from exc
    finally:
        try:
            if not pg.closed:
                pg.autocommit = False  # as the pool's other users expect it
        except psycopg.Error as exc:
            proxy.invalidate(exc)
        proxy.close()
    found = (row[4] if row is not None else None) or []
    return {r[0]: Processed(r[0], r[1], r[2], int(r[3]), bool(r[4]), r[5]) for r in found}


def _params(batch: CommitBatch, now: dt.datetime) -> dict[str, Any]:
    new = [w for w in batch.writes if w.expected_version == 0]
    old = [w for w in batch.writes if w.expected_version > 0]
    parts = {
        "new": [{"t": w.entity_type, "i": w.entity_id, "v": w.vsn, "s": w.state} for w in new],
        "old": [
            {
                "t": w.entity_type,
                "i": w.entity_id,
                "e": w.expected_version,
                "v": w.vsn,
                "s": w.state,
            }
            for w in old
        ],
        "processed": [
            {
                "m": p.message_id,
                "t": p.entity_type,
                "i": p.entity_id,
                "p": p.partition,
                "ok": p.ok,
                "r": p.reply,
            }
            for p in batch.processed
        ],
    }
    try:
        texts = {name: dumps(rows) for name, rows in parts.items()}
    except DRIVER_DATA_ERRORS as exc:
        raise translate(exc) from exc
    return {
        **texts,
        "now": now,
        "partition": batch.partition,
        "epoch": batch.epoch,
        "updates": len(old),
        "lookups": dumps(batch.lookups),
    }


def translate_fenced(exc: psycopg.Error) -> StoreError:
    """The project's error for a psycopg error of a fenced statement."""
    import psycopg

    state = exc.sqlstate
    detail = exc.diag.message_primary or str(exc)
    if state == STALE_EPOCH:
        return FenceError(detail, stale_epoch=True)
    if state == STALE_VERSION:
        return FenceError(detail)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        if exc.diag.table_name == "entity_processed":
            return FenceError(
                f"a message of this batch was already recorded: {detail}", duplicate=True
            )
        return FenceError(f"new entities of this batch were created concurrently: {detail}")
    if isinstance(exc, psycopg.errors.UndefinedFunction):
        return StoreError(
            f"state store error: {detail}; run `entities migrate` to bring the database up to date"
        )
    return translate(exc)
