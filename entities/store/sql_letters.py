"""The outbox and the dead letters of the SQL store."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from entities.store import schema as t
from entities.store.base import DeadLetter, OutboxMessage
from entities.store.sql_support import SQLTables, _aware


class LetterTables(SQLTables):
    """The Store's outbox and dead-letter methods on SQL."""

    def pending_outbox(self, partition: int, limit: int = 500) -> list[OutboxMessage]:
        query = (
            sa.select(t.outbox)
            .where(t.outbox.c.partition == partition)
            .order_by(t.outbox.c.seq)
            .limit(limit)
        )
        rows = self._read(lambda c: c.execute(query).all())
        return [
            OutboxMessage(
                r.message_id,
                r.partition,
                r.entity_type,
                r.entity_id,
                r.msg,
                created_at=_aware(r.created_at),
                sender=None if r.sender_type is None else (r.sender_type, r.sender_id),
            )
            for r in rows
        ]

    def forget_outbox(self, message_ids: Sequence[str]) -> None:
        if message_ids:
            with self._tx() as conn:
                conn.execute(
                    sa.delete(t.outbox).where(t.outbox.c.message_id.in_(list(message_ids)))
                )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        query = sa.select(t.dead_letters).order_by(t.dead_letters.c.id.desc()).limit(limit)
        rows = self._read(lambda c: c.execute(query).all())
        return [DeadLetter(r.queue, r.reason, r.raw, r.id, _aware(r.created_at)) for r in rows]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        query = sa.select(t.dead_letters).where(t.dead_letters.c.id == dead_letter_id)
        r = self._read(lambda c: c.execute(query).first())
        if r is None:
            return None
        return DeadLetter(r.queue, r.reason, r.raw, r.id, _aware(r.created_at))

    def delete_dead_letter(self, dead_letter_id: int) -> bool:
        with self._tx() as conn:
            done = conn.execute(
                sa.delete(t.dead_letters).where(t.dead_letters.c.id == dead_letter_id)
            )
        return bool(done.rowcount)
