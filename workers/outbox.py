"""The outbox publisher of one partition owner: entity-to-entity sends, after their commit.

A handler's ``self.send`` is staged with the state change and committed with
it as an outbox row (the ``entity_outbox`` table: a message id, the sending
partition, a sequence number in commit order, the target, the message and
when it was committed). After the commit the owner publishes the batch's rows
as ``send_to_entity`` calls whose task id is the row's message id, then
deletes them (``forget_outbox``).

Invariant: every committed outbox row of a partition is published, in commit
(``seq``) order, before any row committed after it; a row is deleted only
after its publish returned. Hence:

- A new owner first publishes its predecessors' whole backlog, page by page
  (:data:`PAGE` rows each), oldest first, before anything it commits itself;
  a publish that fails leaves the backlog flag set, and every later batch's
  rows then go out through the backlog, behind the older ones, never around
  them.
- A row may be published twice (an owner killed between its publish and its
  forget; a publish that raised after reaching the broker). The copies share
  the task id, so the receiver applies the message once and recognises the
  later copy by its processed-message record, as long as that record is kept.
  Records are kept at least ``ENTITIES_DEDUP_RETENTION`` (R) after the first
  copy was applied, which is after the row was committed. A backlog row is
  therefore republished only while it is younger than R / 2: any copy
  published before was applied after the commit, so its record lasts until at
  least commit + R, and the new copy has at least R / 2 (12 hours by default)
  to be applied (times are the hosts' clocks, assumed to agree to well within
  R / 2). A row older than that is not republished blindly: it is
  dead-lettered, as the ``send_to_entity`` call it would have been (replayable
  with ``entities dead-letters replay``), with a reason that says why, and then
  deleted. (A crash between the two leaves a second dead letter of the same
  message; replaying both applies it once.)
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from entities import clock
from entities.routing import partition_for, queue_name
from entities.settings import Settings
from entities.store import CommitBatch, DeadLetter, OutboxMessage, Store
from entities.transport import celery_message

log = logging.getLogger(__name__)

#: Backlog rows read and published per round.
PAGE = 500

Publisher = Callable[[list[OutboxMessage]], None]


class OutboxPublisher:
    """Publishes one partition's committed outbox rows in commit order (see the module)."""

    def __init__(
        self,
        partition: int,
        store: Store,
        settings: Settings,
        publish: Publisher,
        stopping: threading.Event,
    ) -> None:
        self.partition = partition
        self.store = store
        self.settings = settings
        self.publish_many = publish
        self._stopping = stopping
        self.backlog = True  # a previous owner may have left rows to publish

    def publish(self, outbox: list[OutboxMessage]) -> None:
        """Publishes the rows one commit just wrote (behind the backlog, if there is one)."""
        if not outbox:
            return
        if self.backlog:
            self.publish_backlog()  # these rows are committed: they go out in their turn
            return
        if self._send(outbox):
            self.store.forget_outbox([m.message_id for m in outbox])

    def publish_backlog(self) -> None:
        """Publishes every stored row of the partition, oldest first, until none is left,
        the publisher fails, or the owner stops (the next owner goes on from there)."""
        while not self._stopping.is_set():
            page = self.store.pending_outbox(self.partition, PAGE)
            if not page:
                self.backlog = False
                return
            cutoff = clock.now() - dt.timedelta(seconds=self.settings.dedup_retention_s / 2)
            aged = [m for m in page if m.created_at is not None and m.created_at < cutoff]
            if aged:
                self._dead_letter(aged)
            fresh = [m for m in page if m.created_at is None or m.created_at >= cutoff]
            if fresh and not self._send(fresh):
                return
            self.store.forget_outbox([m.message_id for m in fresh])

    def _send(self, outbox: list[OutboxMessage]) -> bool:
        try:
            self.publish_many(outbox)
        except Exception:
            log.warning(
                "partition %s: outbox publish failed; will retry", self.partition, exc_info=True
            )
            self.backlog = True
            return False
        return True

    def _dead_letter(self, aged: list[OutboxMessage]) -> None:
        retention_s = self.settings.dedup_retention_s
        letters = []
        for m in aged:
            reason = (
                f"entity-to-entity message from partition {m.partition}, committed at "
                f"{m.created_at:%Y-%m-%d %H:%M:%S} UTC, was still unpublished after half of "
                f"ENTITIES_DEDUP_RETENTION ({retention_s:g} s): a copy may have been "
                "delivered before and its receiver may no longer recognise another; "
                "replay it if the receiver did not apply it"
            )
            log.error("partition %s: dead-lettering outbox message %s", self.partition, reason)
            raw = celery_message(m.entity_type, m.entity_id, m.msg, m.message_id, None, True)
            target = queue_name(partition_for(m.entity_type, m.entity_id, self.settings.partitions))
            letters.append(DeadLetter(target, reason, raw.decode()))
        self.store.commit(CommitBatch(partition=-1, epoch=None, dead_letters=letters))
        self.store.forget_outbox([m.message_id for m in aged])
