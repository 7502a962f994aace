"""The alarms table of the SQL store: schedule, replace, cancel, list, claim, retry.

Every scheduling gets a new ``scheduling_id`` (the change's own, if it names
one); firing or failing applies only to the scheduling it names, so a replaced
or cancelled alarm never fires. Writing the scheduling a row already holds is a
no-op: its dispatch state, attempts and status stay.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from entities.store import schema as t
from entities.store.base import Alarm, AlarmChange, AlarmOutcome
from entities.store.sql_support import SQLTables, _aware, _text, _utc


def _alarm(row: Any) -> Alarm:
    return Alarm(
        row.entity_type,
        row.entity_id,
        row.name,
        _aware(row.fire_at),
        row.payload,
        row.scheduling_id,
        row.attempts,
        row.status,
        row.last_error,
    )


class AlarmTables(SQLTables):
    """The Store's alarm methods on SQL."""

    def _set_alarm(self, conn: Connection, change: AlarmChange) -> None:
        a = t.alarms.c
        key = (
            (a.entity_type == change.entity_type)
            & (a.entity_id == change.entity_id)
            & (a.name == change.name)
        )
        if change.fire_at is None:
            conn.execute(sa.delete(t.alarms).where(key))
            return
        values = {
            "fire_at": _utc(change.fire_at),
            "payload": change.payload,
            "scheduling_id": change.scheduling_id or uuid.uuid4().hex,
            "status": "scheduled",
            "attempts": 0,
            "last_error": None,
            "dispatched_at": None,
        }
        conn.execute(
            self._insert(t.alarms)
            .values(
                entity_type=change.entity_type,
                entity_id=change.entity_id,
                name=change.name,
                **values,
            )
            .on_conflict_do_update(
                index_elements=["entity_type", "entity_id", "name"],
                set_=values,
                where=a.scheduling_id != values["scheduling_id"],
            )
        )

    def _alarm_outcome(self, conn: Connection, outcome: AlarmOutcome, now: dt.datetime) -> None:
        a = t.alarms.c
        current = (
            (a.entity_type == outcome.entity_type)
            & (a.entity_id == outcome.entity_id)
            & (a.name == outcome.name)
            & (a.scheduling_id == outcome.scheduling_id)
        )
        if outcome.error is None:
            conn.execute(sa.delete(t.alarms).where(current))
            return
        conn.execute(
            sa.update(t.alarms)
            .where(current)
            .values(
                attempts=outcome.attempts,
                last_error=_text(outcome.error[:4000]),
                status="scheduled" if outcome.retry_at is not None else "failed",
                fire_at=_utc(outcome.retry_at) if outcome.retry_at is not None else now,
                dispatched_at=None,
            )
        )

    def get_alarm(self, entity_type: str, entity_id: str, name: str) -> Alarm | None:
        a = t.alarms.c
        query = sa.select(t.alarms).where(
            (a.entity_type == entity_type) & (a.entity_id == entity_id) & (a.name == name)
        )
        row = self._read(lambda c: c.execute(query).first())
        return None if row is None else _alarm(row)

    def set_alarm(self, change: AlarmChange) -> None:
        with self._tx() as conn:
            self._set_alarm(conn, change)

    @staticmethod
    def _clear_alarms(conn: Connection, entity_type: str, entity_id: str) -> int:
        result = conn.execute(
            sa.delete(t.alarms).where(
                (t.alarms.c.entity_type == entity_type) & (t.alarms.c.entity_id == entity_id)
            )
        )
        return int(result.rowcount or 0)

    def cancel_all_alarms(self, entity_type: str, entity_id: str) -> int:
        with self._tx() as conn:
            return self._clear_alarms(conn, entity_type, entity_id)

    def list_alarms(self, entity_type: str, entity_id: str) -> list[Alarm]:
        a = t.alarms.c
        query = (
            sa.select(t.alarms)
            .where((a.entity_type == entity_type) & (a.entity_id == entity_id))
            .order_by(a.fire_at, a.name)
        )
        rows = self._read(lambda c: c.execute(query).all())
        return [_alarm(r) for r in rows]

    def claim_due_alarms(
        self,
        now: dt.datetime,
        limit: int,
        redispatch_after_s: float,
        skip_before: dt.datetime | None = None,
    ) -> list[Alarm]:
        a = t.alarms.c
        now = _utc(now)
        stale = now - dt.timedelta(seconds=redispatch_after_s)
        due = (a.status == "scheduled") & (a.fire_at <= now)
        due &= a.dispatched_at.is_(None) | (a.dispatched_at < stale)
        with self._tx() as conn:
            skipped: list[Alarm] = []
            if skip_before is not None:
                late = due & (a.fire_at < _utc(skip_before))
                reason = (
                    f"skipped: more than {(now - _utc(skip_before)).total_seconds():g} s late "
                    f"when dispatched at {now.isoformat()} (misfire policy skip)"
                )
                skipped = self._claim(
                    conn, late, limit, dispatched_at=now, status="skipped", last_error=reason
                )
            claimed = []
            if len(skipped) < limit:
                claimed = self._claim(conn, due, limit - len(skipped), dispatched_at=now)
        return sorted(skipped + claimed, key=lambda x: x.fire_at)

    @staticmethod
    def _claim(conn: Connection, where: Any, limit: int, **values: Any) -> list[Alarm]:
        """Updates the ``limit`` earliest alarms matching ``where`` that no one else locked."""
        a = t.alarms.c
        earliest = (
            sa.select(a.entity_type, a.entity_id, a.name)
            .where(where)
            .order_by(a.fire_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # no-op on SQLite, where writers queue
        )
        key = sa.tuple_(a.entity_type, a.entity_id, a.name)
        update = sa.update(t.alarms).where(key.in_(earliest)).values(**values)
        return [_alarm(r) for r in conn.execute(update.returning(*t.alarms.c)).all()]

    def failed_alarms(self, entity_type: str | None = None, limit: int = 100) -> list[Alarm]:
        a = t.alarms.c
        query = sa.select(t.alarms).where(a.status.in_(("failed", "skipped")))
        if entity_type is not None:
            query = query.where(a.entity_type == entity_type)
        query = query.order_by(a.fire_at, a.entity_type, a.entity_id, a.name).limit(limit)
        rows = self._read(lambda c: c.execute(query).all())
        return [_alarm(r) for r in rows]

    def retry_alarm(
        self,
        entity_type: str,
        entity_id: str,
        name: str,
        fire_at: dt.datetime,
        scheduling_id: str | None = None,
    ) -> Alarm | None:
        a = t.alarms.c
        with self._tx() as conn:
            row = conn.execute(
                sa.update(t.alarms)
                .where(
                    (a.entity_type == entity_type)
                    & (a.entity_id == entity_id)
                    & (a.name == name)
                    & a.status.in_(("failed", "skipped"))
                )
                .values(
                    fire_at=_utc(fire_at),
                    scheduling_id=scheduling_id or uuid.uuid4().hex,
                    status="scheduled",
                    attempts=0,
                    last_error=None,
                    dispatched_at=None,
                )
                .returning(*t.alarms.c)
            ).first()
        return None if row is None else _alarm(row)
