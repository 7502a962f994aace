"""Applying a batch of messages to the entities of one partition, with one fenced commit.

For each message, in order: skip it if its id is already recorded (a
redelivery or a resend with the same task id; the recorded reply is returned
again), find the entity in memory or load it, run the handler, and stage the
new state, the processed-message record, alarm changes and outgoing messages.

Replies: a redelivered message (or a resend with the same task id) whose
effect was committed gets the reply recorded with that commit, never a
recomputed one. A strict batch does not read the records first; it learns
that a message is recorded in one of two ways. A message that stages a record
makes the commit fail on the record's unique key, and the batch is applied
again reading the records. A message that stages none (its handler raised or
changed nothing) is looked up: its id goes with the batch's one commit
statement, which returns the records already committed for such ids (or, when
the batch commits nothing, one query reads them), and a record found replaces
the recomputed reply. Replacing is sound because such a message changed
nothing in memory or in the batch: what the other messages saw and commit is
what they would have seen had it been skipped. Replies of relaxed messages go
out before their commit and may repeat as documented; every reply carries
whether it is a committed one (:attr:`Outcome.committed`), since only those
may be stored by an owner that may have lost its partition.

Replies that stage no change are kept too (:mod:`workers.kept`), so a
redelivery after a later commit gets the reply it was first given.

Strict entities (and relaxed ones escalated by a strict call or an alarm) are
committed by the batch itself, fenced by each entity's version and the
partition's epoch, before any reply. Changes of ``interval`` and ``on_stop``
entities stay in memory, marked dirty, until :meth:`Processor.flush`; the
runner holds the broker acknowledgement until then, so a crash loses no
message, only replies that were sent early (the messages are applied again on
the last committed state). A handler that raises leaves the entity exactly as
it was before the message.

What a batch stages is what later messages see (see :mod:`workers.apply`);
so is what relaxed entities hold unflushed: the applier consults the deferred
alarm changes before the store. A commit that takes deferred effects puts them
before the batch's own, merged per entity, so an entity's alarm changes and
sends keep the order it made them in and a delete clears every alarm made
before it.

A message fetched before its ``eta`` is not applied: it goes back to the
partition's delayed set (see :mod:`entities.delayed`). A message found past
its ``expires`` time when it is to be applied gets a MessageExpired reply and
has no effect, unless it was applied already (a redelivery gets its recorded
reply). Every outcome of a message with callbacks carries them, for the
runner to fire once its reply is stored (:mod:`workers.links`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import cast

from entities import clock, registry, telemetry
from entities.delayed import due_ms
from entities.errors import BadMessage, FenceError, MessageExpired, StoreError
from entities.messages import Envelope, parse_envelope
from entities.routing import partition_for, queue_name
from entities.settings import Settings
from entities.store import (
    CommitBatch,
    DeadLetter,
    OutboxMessage,
    Processed,
    Store,
    Write,
)
from workers.apply import Applier, Outcome, Staged
from workers.kept import KeptReplies
from workers.memory import EntityMemory, Key, Live
from workers.pending import PendingAlarms
from workers.refusals import Refusal, refuse

log = logging.getLogger(__name__)

#: How many times a batch is retried after version conflicts before giving up for now.
MAX_CONFLICT_RETRIES = 5

__all__ = ["BatchResult", "Outcome", "Processor"]


@dataclasses.dataclass
class BatchResult:
    """What a processed batch produced: replies to send and committed messages to publish."""

    outcomes: list[Outcome]
    outbox: list[OutboxMessage]
    held: dict[Key, list[bytes]] = dataclasses.field(default_factory=dict)
    misrouted: dict[int, list[bytes]] = dataclasses.field(default_factory=dict)
    delayed: list[tuple[bytes, int]] = dataclasses.field(default_factory=list)  # (raw, due ms)


@dataclasses.dataclass
class Deferred:
    """Effects of relaxed entities, applied in memory, waiting for the next flush."""

    processed: list[Processed] = dataclasses.field(default_factory=list)
    alarms: dict[Key, PendingAlarms] = dataclasses.field(default_factory=dict)
    outbox: list[OutboxMessage] = dataclasses.field(default_factory=list)
    replies: dict[str, Outcome] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.processed or self.alarms or self.outbox)

    def add(self, key: Key, staged: Staged) -> None:
        """Appends one entity's staged effects (made after those already here)."""
        self.processed.extend(staged.processed)
        if staged.alarms:
            self.alarms.setdefault(key, PendingAlarms()).then(staged.alarms)
        self.outbox.extend(staged.outbox)
        self.replies.update(staged.replies)

    def into(self, batch: CommitBatch) -> None:
        """Adds every effect to ``batch``."""
        batch.processed.extend(self.processed)
        for key, alarms in self.alarms.items():
            alarms.into(key, batch)
        batch.outbox.extend(self.outbox)


class Processor:
    """Applies batches for one partition; keeps that partition's entities in memory."""

    def __init__(
        self,
        partition: int,
        store: Store,
        settings: Settings,
        max_resident: Callable[[], int] | None = None,
    ) -> None:
        self.partition = partition
        self.store = store
        self.settings = settings
        self.memory = EntityMemory(max_resident or (lambda: settings.max_resident))
        self.deferred = Deferred()
        self.applier = Applier(
            partition, store, settings, self.memory, deferred=lambda: self.deferred.alarms
        )
        self.conflicts = 0
        self.sends_refused = 0  # entity-to-entity messages refused here (workers.refusals)
        self.kept = KeptReplies(partition)  # replies recorded by the next commit

    # -- state of the partition ---------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True while some applied change is not committed yet."""
        return bool(self.deferred) or self.memory.has_dirty

    def flush_in(self, now: float | None = None) -> float | None:
        """Seconds until an ``interval`` entity's changes must be flushed; None if none must."""
        now = time.monotonic() if now is None else now
        due: float | None = None
        for _key, live in self.memory.dirty():
            opts = live.cls.__entity_options__
            if opts.durability != "interval" or live.dirty_since is None:
                continue
            left = live.dirty_since + opts.flush_interval_s - now
            due = left if due is None else min(due, left)
        return due

    def reset(self) -> None:
        """Drops every entity and every unflushed change (after an error or a handoff)."""
        self.memory.clear()
        self.deferred = Deferred()
        self.kept.clear()

    def kept_replies(self) -> frozenset[str]:
        """The ids of the messages whose replies wait for the next commit."""
        return self.kept.ids()

    def acknowledged(self, ids: frozenset[str] | None = None) -> None:
        """Tells that the messages ``ids`` (None: every message applied so far) are
        acknowledged: no redelivery of them can follow (see :mod:`workers.kept`)."""
        self.kept.acknowledged(ids)

    # -- batches --------------------------------------------------------------

    def process(
        self, raws: list[bytes], epoch: int | None, held: frozenset[Key] = frozenset()
    ) -> BatchResult:
        """Applies ``raws`` (oldest first); commits what must be committed before replying.

        Raises FenceError(stale_epoch=True) if this owner lost the partition,
        StoreError on infrastructure failure; in both cases nothing was
        committed and memory is dropped, so the caller must re-fetch from the
        oldest unacknowledged message. So it does for a FenceError while
        changes of earlier batches were waiting for a flush: they are dropped too.
        """
        envelopes = [parse_envelope(r, self.settings.max_message_bytes) for r in raws]
        had_deferred = self.dirty
        # A strict batch skips the read of processed-message records: a message
        # already recorded fails its commit (nothing of the batch is committed),
        # and the batch is applied again, reading the records first.
        read_records = self._reads_records(envelopes)
        for _ in range(MAX_CONFLICT_RETRIES):
            kept = self.kept.snapshot()  # earlier batches', still unacknowledged
            try:
                return self._process_once(envelopes, epoch, held, read_records)
            except FenceError as exc:
                self.reset()
                if exc.stale_epoch or had_deferred:
                    raise
                self.kept.restore(kept)
                if exc.duplicate and not read_records:
                    read_records = True
                    log.info("partition %s: %s; applying the batch again", self.partition, exc)
                    continue
                read_records = True
                self.conflicts += 1
                telemetry.emit("entity.conflict", partition=self.partition, error=str(exc))
                log.warning("partition %s: version conflict, reloading: %s", self.partition, exc)
            except BaseException:
                self.reset()
                raise
        raise StoreError(f"partition {self.partition}: version conflicts persisted; will retry")

    @staticmethod
    def _reads_records(envelopes: list[Envelope]) -> bool:
        """True if a message of the batch may be deferred (its entity's durability is not
        strict): a deferred message must be known as a duplicate before it is applied."""
        for env in envelopes:
            if env.error is not None or env.bad is not None or env.durability == "strict":
                continue
            cls = registry.find(env.entity_type)
            if cls is not None and cls.__entity_options__.durability != "strict":
                return True
        return False

    def flush(self, epoch: int | None) -> list[OutboxMessage]:
        """Commits every dirty entity and deferred effect; returns the outbox to publish.

        On any error memory is dropped (see :meth:`process`).
        """
        if not self.dirty:
            return []
        batch = CommitBatch(self.partition, epoch)
        try:
            touched = self._take_all_dirty(batch)
            self.kept.take_into(batch, force=True)
            self._commit(batch)
        except BaseException:
            self.reset()
            raise
        self.kept.clear()
        self._committed(touched)
        telemetry.emit("entity.flush", {"entities": len(touched)}, partition=self.partition)
        return batch.outbox

    def sweep(self) -> bool:
        """Hibernates and evicts idle entities; True if a flush is needed to evict more."""
        evicted, blocked = self.memory.sweep()
        if telemetry.enabled():
            for entity_type, entity_id in evicted:
                telemetry.emit(
                    "entity.passivate",
                    entity_type=entity_type,
                    entity_id=entity_id,
                    reason="idle or over the resident bound",
                )
        return blocked

    def _commit(self, batch: CommitBatch) -> dict[str, Processed]:
        """Commits ``batch``; returns the records found for its lookups."""
        if not batch:
            return self.store.processed(batch.lookups) if batch.lookups else {}
        with telemetry.span(
            "storage.save",
            partition=self.partition,
            entities=len(batch.writes),
            messages=len(batch.processed),
        ):
            found = self.store.commit(batch)
        if telemetry.enabled():
            for w in batch.writes:
                if w.state is None:
                    telemetry.emit(
                        "storage.delete",
                        entity_type=w.entity_type,
                        entity_id=w.entity_id,
                        version=w.expected_version,
                    )
        return found

    def _process_once(
        self, envelopes: list[Envelope], epoch: int | None, held: frozenset[Key], read_records: bool
    ) -> BatchResult:
        holding: dict[Key, list[bytes]] = {}
        misrouted: dict[int, list[bytes]] = {}
        delayed: list[tuple[bytes, int]] = []
        now = clock.now().timestamp()
        kept = []
        for env in envelopes:
            if env.error is not None or env.bad is not None:
                kept.append(env)
                continue
            home = partition_for(env.entity_type, env.entity_id, self.settings.partitions)
            if home != self.partition:  # a router with another count: forward, never apply
                misrouted.setdefault(home, []).append(env.raw)
            elif env.eta is not None and env.eta > now and not _expired(env, now):
                delayed.append((env.raw, due_ms(env.eta)))  # early: to the delayed set
            elif env.key in held:  # a paused entity: set aside, in order, unapplied
                holding.setdefault(env.key, []).append(env.raw)
            else:
                kept.append(env)
        envelopes = kept
        ids = [e.task_id for e in envelopes if e.task_id and e.error is None]
        done = self.store.processed(ids) if read_records else {}
        unrecorded: list[Outcome] = []  # applied outcomes that staged no record
        self.applier.prefetch(envelopes)
        outcomes: list[Outcome] = []
        first: dict[str, Outcome] = dict(self.deferred.replies)
        staged: dict[Key, Staged] = {}
        dead: list[DeadLetter] = []
        refused: list[Refusal] = []
        applied: list[tuple[Envelope, Outcome]] = []  # applied now (not found recorded)
        for env in envelopes:
            if env.error is not None:
                dead.append(
                    DeadLetter(
                        queue_name(self.partition), env.error, env.raw.decode("utf-8", "replace")
                    )
                )
                log.warning("partition %s: dead-lettered a message: %s", self.partition, env.error)
                telemetry.emit(
                    "message.dead_lettered", queue=queue_name(self.partition), reason=env.error
                )
                if env.task_id:
                    outcomes.append(Outcome.failure(env.task_id, BadMessage(env.error), env.silent))
                continue
            if env.task_id in first:
                outcomes.append(first[env.task_id])
                continue
            if env.task_id in done:
                outcome = Outcome.from_record(done[env.task_id], env.silent)
            else:
                if _expired(env, now):
                    outcome = Outcome.failure(env.task_id, expiry_error(env), env.silent)
                else:
                    outcome = self.applier.apply(env, staged)
                    if not outcome.ok and env.sender is not None and outcome.error is not None:
                        refused.append(refuse(env, outcome.error, self.partition))
                if not read_records and env.bad is None and env.task_id and not env.silent:
                    unrecorded.append(outcome)
                if env.bad is None and env.task_id:
                    applied.append((env, outcome))
            if env.links is not None:
                outcome = dataclasses.replace(outcome, links=env.links)
            first[env.task_id] = outcome
            outcomes.append(outcome)
        batch = CommitBatch(self.partition, epoch, dead_letters=dead)
        touched = self._stage(staged, batch)
        for r in refused:  # committed with the batch, whatever the receiver's durability
            batch.processed.append(r.processed)
            batch.dead_letters.append(r.dead_letter)
            if r.notice is not None:
                batch.outbox.append(r.notice)
        staged_ids = {p.message_id for s in staged.values() for p in s.processed}
        staged_ids.update(p.message_id for p in batch.processed)
        for env, outcome in applied:  # what staged no record: kept (module docstring)
            if outcome.task_id not in staged_ids:
                self.kept.keep(env, outcome, batch)
        took_kept = self.kept.take_into(batch)
        staged_ids.update(p.message_id for p in batch.processed)
        batch.lookups = [o.task_id for o in unrecorded if o.task_id not in staged_ids]
        found = self._commit(batch)
        if took_kept:
            self.kept.clear()
        self._committed(touched)
        for r in refused:
            self.sends_refused += 1
            r.report()
        recorded = {p.message_id for p in batch.processed}
        for i, outcome in enumerate(outcomes):
            record = found.get(outcome.task_id)
            if record is not None:  # a redelivery that changed nothing this time
                outcomes[i] = Outcome.from_record(record, outcome.silent)
                outcomes[i].links = outcome.links
            elif outcome.task_id in recorded:
                outcome.committed = True
        return BatchResult(outcomes, batch.outbox, holding, misrouted, delayed)

    def _stage(self, staged: dict[Key, Staged], batch: CommitBatch) -> list[tuple[Key, Live]]:
        """Splits this batch's changes into the commit and the deferred set.

        A strict change commits everything deferred before its reply; the
        deferred effects (older) go into the commit before this batch's, so an
        entity's alarm changes and outgoing messages keep the order it made them.
        """
        now = time.monotonic()
        escalate = any(s.strict for s in staged.values())
        now_strict: dict[Key, Staged] = {}
        for key, s in staged.items():
            batch.alarm_outcomes.extend(s.alarm_outcomes)
            if not s.changed:
                if s.processed:  # effects without a state (an external alarm change)
                    now_strict[key] = s
                continue
            live = cast(Live, s.live)  # a changed entity is loaded
            if s.strict or live.cls.__entity_options__.durability == "strict":
                now_strict[key] = s
            else:
                self.deferred.add(key, s)
                self.memory.mark_dirty(key, live, now)
        touched: list[tuple[Key, Live]] = []
        if escalate:  # after the deferred effects, merged per entity (a delete clears them)
            for key, s in now_strict.items():
                self.deferred.add(key, s)
            touched = self._take_all_dirty(
                batch, skip={k for k, s in now_strict.items() if s.changed}
            )
        else:  # only strict entities, which never have deferred effects
            for key, s in now_strict.items():
                batch.processed.extend(s.processed)
                s.alarms.into(key, batch)
                batch.outbox.extend(s.outbox)
        for key, s in now_strict.items():
            if s.changed:
                live = cast(Live, s.live)
                batch.writes.append(_write(key, live))
                touched.append((key, live))
        return touched

    def _take_all_dirty(
        self, batch: CommitBatch, skip: set[Key] | None = None
    ) -> list[tuple[Key, Live]]:
        skip = skip or set()
        touched = [(k, v) for k, v in self.memory.dirty() if k not in skip]
        batch.writes.extend(_write(k, v) for k, v in touched)
        self.deferred.into(batch)
        self.deferred = Deferred()
        return touched

    def _committed(self, touched: list[tuple[Key, Live]]) -> None:
        for key, live in touched:
            self.memory.mark_clean(key, live)
            if live.deleted:
                self.memory.pop(key)
            else:
                live.version += 1
                live.vsn = live.cls.__entity_options__.vsn


def _expired(env: Envelope, now: float) -> bool:
    """True if the message's ``expires`` time has passed."""
    return env.expires is not None and env.expires <= now


def expiry_error(env: Envelope) -> MessageExpired:
    """The error reply of a message found past its expiry time."""
    when = dt.datetime.fromtimestamp(cast(float, env.expires), dt.UTC).isoformat()
    return MessageExpired(
        f"message {env.task_id} to {env.entity_type} {env.entity_id!r} expired at {when} "
        "before it could be applied; nothing of it was applied"
    )


def _write(key: Key, live: Live) -> Write:
    state = None if live.deleted else live.encoded
    return Write(key[0], key[1], live.version, live.cls.__entity_options__.vsn, state)
