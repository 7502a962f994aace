"""The state-store interface: what every backend guarantees.

One interface, two implementations on SQLAlchemy 2 (Postgres through psycopg 3
for production, SQLite for the test kit), both passing one contract suite
(tests/test_store_contract.py). Every method translates driver errors into
:class:`~entities.errors.StoreError`; callers never see a driver exception.

Every JSON value a commit writes (a state, a reply, an alarm payload, an outbox
message) reads back exactly: equal, with the same types (1.0 a float, 1 an
int), the same float signs and the dict keys in the same order
(tests/test_exact_json.py holds every backend to it over the codec's values).

Processed-message records are the dedup of redeliveries and resends. Their
invariant: a record is never purged while its message is queued, in flight,
held or unacknowledged, and the resend window (``ENTITIES_DEDUP_RETENTION``)
counts from the acknowledgement. A record's commit time (``processed_at``) is the store's
clock at its commit (the database server's on Postgres); a partition's owner
notes acknowledgement watermarks on the same clock (:meth:`Store.note_acked`),
and a purge deletes only records committed before the latest watermark of
their partition that is at least the retention old. A partition with no such
watermark purges nothing.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

Key = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The last committed state of one entity."""

    entity_type: str
    entity_id: str
    version: int
    vsn: int
    state: dict[str, Any]
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Write:
    """A fenced change of one entity: applied only if its stored version is ``expected_version``.

    ``expected_version`` 0 means "absent": the row is inserted only if none exists.
    ``state`` None deletes the row (and the entity's alarms). The new version is
    ``expected_version + 1``.
    """

    entity_type: str
    entity_id: str
    expected_version: int
    vsn: int
    state: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Processed:
    """A message applied by a commit, with the reply its callers get."""

    message_id: str
    entity_type: str
    entity_id: str
    partition: int
    ok: bool
    reply: Any  # the handler's return value, or {"exc_type", "exc_module", "exc_message"}


@dataclasses.dataclass(frozen=True)
class AlarmChange:
    """Schedules (``fire_at`` set) or cancels (``fire_at`` None) one named alarm.

    ``scheduling_id`` names the scheduling a schedule makes; None: a new one at
    its commit. Writing a scheduling the row already holds changes nothing (its
    dispatch, attempts and status stay), so one scheduling written twice (the
    client's direct write and its queued copy) is one scheduling, fired once.
    """

    entity_type: str
    entity_id: str
    name: str
    fire_at: dt.datetime | None
    payload: Any = None
    scheduling_id: str | None = None


@dataclasses.dataclass(frozen=True)
class OutboxMessage:
    """A message to an entity, written by a commit and published after it."""

    message_id: str
    partition: int  # the sending partition, whose owner publishes it
    entity_type: str
    entity_id: str
    msg: dict[str, Any]
    created_at: dt.datetime | None = None  # when its commit happened (set when read back)
    sender: Key | None = None  # the entity that sent it (None: written before 0005)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A message that could not be understood, kept with the reason.

    ``raw`` is the message as text (undecodable bytes and NUL characters become
    U+FFFD, since Postgres text cannot hold NUL).
    """

    queue: str
    reason: str
    raw: str
    id: int = 0
    created_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Alarm:
    """A scheduled alarm as stored.

    ``scheduling_id`` changes with every (re)scheduling; ``attempts`` counts
    failed firings of this scheduling; ``status`` is ``scheduled``, ``failed``
    (attempts exhausted; ``last_error`` says why) or ``skipped`` (not fired under
    the ``skip`` misfire policy; ``last_error`` says why).
    """

    entity_type: str
    entity_id: str
    name: str
    fire_at: dt.datetime
    payload: Any
    scheduling_id: str
    attempts: int = 0
    status: str = "scheduled"
    last_error: str | None = None


@dataclasses.dataclass(frozen=True)
class AlarmOutcome:
    """The end of one firing of an alarm scheduling, applied only if it is still current.

    ``retry_at`` None and ``error`` None: the alarm fired; its row is removed.
    ``error`` set: the firing failed; the row records the attempt and either
    fires again at ``retry_at`` or, with ``retry_at`` None, is kept as failed.
    """

    entity_type: str
    entity_id: str
    name: str
    scheduling_id: str
    attempts: int = 0
    error: str | None = None
    retry_at: dt.datetime | None = None


@dataclasses.dataclass
class CommitBatch:
    """Everything one commit writes, atomically, fenced by the partition's epoch."""

    partition: int
    epoch: int | None  # None: no owner fence (client-side writes, tests)
    writes: list[Write] = dataclasses.field(default_factory=list)
    processed: list[Processed] = dataclasses.field(default_factory=list)
    alarm_outcomes: list[AlarmOutcome] = dataclasses.field(default_factory=list)
    alarm_clears: list[Key] = dataclasses.field(default_factory=list)  # entities losing every alarm
    alarms: list[AlarmChange] = dataclasses.field(default_factory=list)
    outbox: list[OutboxMessage] = dataclasses.field(default_factory=list)
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    #: Message ids whose records the commit looks up and returns (it writes nothing
    #: for them): messages of the batch that recorded nothing, any of which may be a
    #: redelivery of a message committed before.
    lookups: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.writes
            or self.processed
            or self.alarm_outcomes
            or self.alarm_clears
            or self.alarms
            or self.outbox
            or self.dead_letters
        )


class Store(abc.ABC):
    """A transactional store of snapshots, processed messages, alarms and partition epochs."""

    @abc.abstractmethod
    def check_schema(self) -> None:
        """Raises SchemaError unless the schema is at the revision this code expects."""

    @abc.abstractmethod
    def ensure_partitions(self, partitions: int) -> None:
        """Records the deployment's partition count on first use.

        Raises ConfigurationError if another count was recorded: the count is
        fixed for a deployment, since it decides where every entity lives.
        """

    @abc.abstractmethod
    def claim_partition(self, partition: int, owner: str) -> int:
        """Increments and returns the partition's epoch, recording ``owner``.

        After this commits, no commit fenced with an older epoch succeeds.
        """

    def claim_partitions(self, partitions: Sequence[int], owner: str) -> dict[int, int]:
        """:meth:`claim_partition` for several partitions (one transaction where the store
        can); returns each one's new epoch."""
        return {p: self.claim_partition(p, owner) for p in partitions}

    @abc.abstractmethod
    def partition_owners(self) -> dict[int, tuple[int, str | None]]:
        """The recorded (epoch, owner) of every partition."""

    @abc.abstractmethod
    def load(self, entity_type: str, entity_id: str) -> Snapshot | None:
        """The last committed snapshot, or None if the entity has none."""

    @abc.abstractmethod
    def load_many(self, keys: Iterable[Key]) -> dict[Key, Snapshot]:
        """The committed snapshots of ``keys`` that exist, in one round trip."""

    @abc.abstractmethod
    def processed(self, message_ids: Sequence[str]) -> dict[str, Processed]:
        """The records of those ``message_ids`` already applied (within the retention)."""

    @abc.abstractmethod
    def commit(self, batch: CommitBatch) -> dict[str, Processed]:
        """Applies ``batch`` atomically, or nothing of it; returns the records of
        ``batch.lookups`` that were committed before it (in the same round trip where
        the store can). A batch that writes nothing still looks them up.

        Alarm outcomes apply first, then ``alarm_clears`` (every alarm of each
        entity named is removed), then alarm changes: a handler that reschedules
        the alarm it is firing keeps the new scheduling, and alarms scheduled
        after a delete in the same batch survive it.

        Raises FenceError (and writes nothing) if any write's expected version
        is stale, a message id was already recorded, or ``batch.epoch`` is not
        the partition's current epoch (``stale_epoch=True``).
        """

    @abc.abstractmethod
    def rewrite_snapshot(self, snapshot: Snapshot, vsn: int, state: dict[str, Any]) -> bool:
        """Replaces ``snapshot`` by ``state`` at ``vsn`` (and the next version) only if the
        stored row is still exactly ``snapshot``; True if it was replaced.

        Compared whole (version, vsn, state, updated_at), so a delete and a re-create
        between the read and this write, which may bring the same version back, is
        never overwritten. No epoch: a partition owner holding the entity in memory
        is fenced by the version, so its next commit fails and reloads.
        """

    @abc.abstractmethod
    def list_ids(self, entity_type: str, limit: int = 100, after: str | None = None) -> list[str]:
        """Stored ids of ``entity_type`` in ascending order, after ``after``."""

    @abc.abstractmethod
    def note_acked(self, partition: int, epoch: int | None) -> None:
        """Notes an acknowledgement watermark of ``partition`` at the store's clock now.

        The caller (the partition's owner at ``epoch``) guarantees that every
        message whose record it or an earlier owner committed is acknowledged at
        this moment and none is held. Fenced like a commit: raises
        FenceError(stale_epoch=True) and notes nothing unless the partition is
        still at ``epoch``. One statement; the owner calls it at most every few
        seconds (a late watermark only keeps records longer).
        """

    @abc.abstractmethod
    def purge_processed(self, retention_s: float) -> int:
        """Deletes the records whose message was acknowledged at least ``retention_s`` ago.

        For each partition: the records committed before its latest watermark
        noted at least ``retention_s`` ago (on the store's clock), and the
        watermarks older than that one. Returns how many records it deleted.
        """

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    @abc.abstractmethod
    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        """The dead letter with ``dead_letter_id``, or None if there is none (or it was dropped)."""

    @abc.abstractmethod
    def delete_dead_letter(self, dead_letter_id: int) -> bool:
        """Removes one dead letter; True if it existed (so two droppers never both succeed)."""

    @abc.abstractmethod
    def set_alarm(self, change: AlarmChange) -> None:
        """Schedules, replaces or cancels one alarm outside any handler."""

    @abc.abstractmethod
    def get_alarm(self, entity_type: str, entity_id: str, name: str) -> Alarm | None:
        """The stored alarm ``name`` of an entity, or None."""

    @abc.abstractmethod
    def cancel_all_alarms(self, entity_type: str, entity_id: str) -> int:
        """Cancels every alarm of one entity; returns how many there were."""

    @abc.abstractmethod
    def list_alarms(self, entity_type: str, entity_id: str) -> list[Alarm]:
        """The entity's alarms, ordered by fire time."""

    @abc.abstractmethod
    def claim_due_alarms(
        self,
        now: dt.datetime,
        limit: int,
        redispatch_after_s: float,
        skip_before: dt.datetime | None = None,
    ) -> list[Alarm]:
        """Claims up to ``limit`` due alarms for one dispatch, earliest first.

        Due: status ``scheduled``, ``fire_at <= now``, and not dispatched after
        ``now - redispatch_after_s``. Claiming marks them dispatched at ``now`` in
        one transaction, so concurrent claimers never get the same alarm within
        that window (on Postgres they skip each other's locked rows rather than
        wait). An alarm due before ``skip_before`` is set to status ``skipped``
        with the reason instead. Returns the claimed alarms (status
        ``scheduled``) and the skipped ones (status ``skipped``).
        """

    @abc.abstractmethod
    def failed_alarms(self, entity_type: str | None = None, limit: int = 100) -> list[Alarm]:
        """Alarms that will not fire by themselves (``failed`` or ``skipped``), oldest first."""

    @abc.abstractmethod
    def retry_alarm(
        self,
        entity_type: str,
        entity_id: str,
        name: str,
        fire_at: dt.datetime,
        scheduling_id: str | None = None,
    ) -> Alarm | None:
        """Schedules a failed or skipped alarm again, at ``fire_at``; returns it, or None.

        The alarm keeps its payload and becomes a new scheduling (``scheduling_id``,
        or a new one if None; attempts 0); None if the entity has no failed or
        skipped alarm of that name.
        """

    @abc.abstractmethod
    def pending_outbox(self, partition: int, limit: int = 500) -> list[OutboxMessage]:
        """Outbox messages of ``partition`` not yet published, the ``limit`` oldest, in commit
        order (not clock order), each with the time of its commit."""

    @abc.abstractmethod
    def forget_outbox(self, message_ids: Sequence[str]) -> None:
        """Removes published outbox messages."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases connections."""
