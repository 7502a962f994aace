"""Applying a batch of messages to the entities of one partition, with one fenced commit.

For each message, in order: skip it if its id is already recorded (a
redelivery or a resend with the same task id; the recorded reply is returned
again), find the entity in memory or load it, run the handler, and stage the
new state, the processed-message record, alarms and outgoing messages. One
commit writes it all, fenced by each entity's version and the partition's
epoch. Replies are returned only for a committed batch; a handler that raises
leaves the entity exactly as committed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from typing import Any

from entities import codec, registry
from entities.errors import (
    BadMessage,
    EntityError,
    FenceError,
    StateError,
    StoreError,
    UpgradeError,
)
from entities.messages import OP_DELETE, Envelope, parse_envelope
from entities.model import Entity
from entities.routing import queue_name
from entities.settings import Settings
from entities.store import (
    AlarmChange,
    CommitBatch,
    DeadLetter,
    OutboxMessage,
    Processed,
    Snapshot,
    Store,
    Write,
)

log = logging.getLogger(__name__)

#: How many times a batch is retried after version conflicts before giving up for now.
MAX_CONFLICT_RETRIES = 5


@dataclasses.dataclass
class Outcome:
    """The reply to one message: a value, or an exception to re-raise on the caller's side."""

    task_id: str
    ok: bool
    value: Any = None
    error: BaseException | None = None


@dataclasses.dataclass
class Live:
    """An entity in memory: its live object, its committed version and its working state."""

    cls: type[Entity]
    obj: Entity
    version: int  # the committed version (0: never committed)
    vsn: int
    encoded: dict[str, Any]  # the working state, encoded; equals the committed one between batches
    deleted: bool = False


def error_reply(exc: BaseException) -> dict[str, Any]:
    """A JSON record of an exception, as Celery's failure results carry it."""
    return {
        "exc_type": type(exc).__qualname__,
        "exc_module": type(exc).__module__,
        "exc_message": [str(exc)],
    }


class Processor:
    """Applies batches for one partition; keeps that partition's entities in memory."""

    def __init__(self, partition: int, store: Store, settings: Settings) -> None:
        self.partition = partition
        self.store = store
        self.settings = settings
        self.memory: dict[tuple[str, str], Live] = {}
        self.conflicts = 0

    def reset(self) -> None:
        """Drops every entity from memory (after an error, or when the partition moves)."""
        self.memory.clear()

    def process(self, raws: list[bytes], epoch: int | None) -> list[Outcome]:
        """Applies ``raws`` (oldest first) and commits; returns one outcome per repliable message.

        Raises FenceError(stale_epoch=True) if this owner lost the partition,
        StoreError on infrastructure failure; in both cases nothing was committed
        and memory is dropped.
        """
        envelopes = [parse_envelope(r, self.settings.max_message_bytes) for r in raws]
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return self._process_once(envelopes, epoch)
            except FenceError as exc:
                self.reset()
                if exc.stale_epoch:
                    raise
                self.conflicts += 1
                log.warning("partition %s: version conflict, reloading: %s", self.partition, exc)
            except BaseException:
                self.reset()
                raise
        raise StoreError(f"partition {self.partition}: version conflicts persisted; will retry")

    def _process_once(self, envelopes: list[Envelope], epoch: int | None) -> list[Outcome]:
        batch = CommitBatch(self.partition, epoch)
        ids = [e.task_id for e in envelopes if e.task_id and e.error is None]
        done = self.store.processed(ids)
        self._prefetch(envelopes)
        outcomes: list[Outcome] = []
        first: dict[str, Outcome] = {}
        touched: dict[tuple[str, str], Live] = {}
        for env in envelopes:
            if env.error is not None:
                batch.dead_letters.append(
                    DeadLetter(queue_name(self.partition), env.error, env.raw.decode("utf-8", "replace"))
                )
                if env.task_id:
                    outcomes.append(Outcome(env.task_id, False, error=BadMessage(env.error)))
                continue
            if env.task_id in first:
                outcomes.append(first[env.task_id])
                continue
            if env.task_id in done:
                outcome = _from_record(done[env.task_id])
            elif env.bad is not None:
                outcome = Outcome(env.task_id, False, error=env.bad)
            else:
                outcome = self._apply(env, batch, touched)
            first[env.task_id] = outcome
            outcomes.append(outcome)
        for (etype, eid), live in touched.items():
            batch.writes.append(
                Write(etype, eid, live.version, live.cls.__entity_options__.vsn,
                      None if live.deleted else live.encoded)
            )
        self.store.commit(batch)
        for key, live in touched.items():
            if live.deleted:
                self.memory.pop(key, None)
            else:
                live.version += 1
                live.vsn = live.cls.__entity_options__.vsn
        return outcomes

    def _prefetch(self, envelopes: list[Envelope]) -> None:
        missing = {
            e.key for e in envelopes
            if e.error is None and e.bad is None and e.key not in self.memory
        }
        self._prefetched = missing
        self._snapshots: dict[tuple[str, str], Snapshot] = (
            self.store.load_many(missing) if missing else {}
        )

    def _snapshot(self, key: tuple[str, str]) -> Snapshot | None:
        if key in self._prefetched:
            return self._snapshots.get(key)
        return self.store.load(*key)

    def _activate(self, cls: type[Entity], key: tuple[str, str]) -> Live:
        live = self.memory.get(key)
        if live is not None and live.cls is cls:
            return live
        snapshot = self._snapshot(key)
        class_vsn = cls.__entity_options__.vsn
        if snapshot is None:
            obj = cls.from_state(key[1], None)
            live = Live(cls, obj, 0, class_vsn, obj.encode_state())
        else:
            state = _upgrade(cls, snapshot)
            obj = cls.from_state(key[1], state)
            encoded = snapshot.state if snapshot.vsn == class_vsn else obj.encode_state()
            live = Live(cls, obj, snapshot.version, snapshot.vsn, encoded)
        obj.after_load()
        self.memory[key] = live
        return live

    def _apply(self, env: Envelope, batch: CommitBatch, touched: dict[tuple[str, str], Live]) -> Outcome:
        try:
            cls = registry.lookup(env.entity_type)
            if env.op == OP_DELETE:
                return self._delete(env, cls, batch, touched)
            call = cls.bind_call(env.op, env.args, env.kwargs)
            live = self._activate(cls, env.key)
        except Exception as exc:
            self.memory.pop(env.key, None)
            return Outcome(env.task_id, False, error=exc)
        obj = live.obj
        try:
            result = call(obj)
            reply = codec.encode(result, Any, f"reply of {env.entity_type}.{env.op}")
            encoded = obj.encode_state()
            alarms, sends = obj.take_effects()
            if encoded != live.encoded and _size(encoded) > self.settings.max_state_bytes:
                raise StateError(
                    f"{env.entity_type} {env.entity_id!r}: encoded state is larger than "
                    f"{self.settings.max_state_bytes} bytes (ENTITIES_MAX_STATE_BYTES)"
                )
        except Exception as exc:  # the handler's own error: the caller gets it, state is kept
            live.obj = live.cls.from_state(env.entity_id, live.encoded)
            return Outcome(env.task_id, False, error=exc)
        if encoded == live.encoded and not alarms and not sends:
            return Outcome(env.task_id, True, result)
        live.encoded = encoded
        live.deleted = False
        touched[env.key] = live
        batch.processed.append(
            Processed(env.task_id, env.entity_type, env.entity_id, self.partition, True, reply)
        )
        for alarm in alarms:
            batch.alarms.append(
                AlarmChange(env.entity_type, env.entity_id, alarm.name, alarm.fire_at,
                            codec.encode(alarm.payload, Any, "alarm payload"))
            )
        for send in sends:
            batch.outbox.append(
                OutboxMessage(uuid.uuid4().hex, self.partition, send.entity_type,
                              send.entity_id, send.msg)
            )
        return Outcome(env.task_id, True, result)

    def _delete(self, env: Envelope, cls: type[Entity], batch: CommitBatch,
                touched: dict[tuple[str, str], Live]) -> Outcome:
        live = self.memory.get(env.key)
        if live is None or live.cls is not cls:
            snapshot = self._snapshot(env.key)
            version = snapshot.version if snapshot else 0
            vsn = snapshot.vsn if snapshot else cls.__entity_options__.vsn
            obj = cls.from_state(env.entity_id, None)
            live = Live(cls, obj, version, vsn, obj.encode_state())
            self.memory[env.key] = live
        fresh = cls.from_state(env.entity_id, None)
        live.obj, live.encoded, live.deleted = fresh, fresh.encode_state(), True
        touched[env.key] = live
        batch.processed.append(
            Processed(env.task_id, env.entity_type, env.entity_id, self.partition, True, None)
        )
        return Outcome(env.task_id, True, None)


def _size(encoded: dict[str, Any]) -> int:
    return len(json.dumps(encoded, separators=(",", ":")))


def _upgrade(cls: type[Entity], snapshot: Snapshot) -> dict[str, Any]:
    """Brings a stored state to the class's vsn, one step at a time (vsn n -> n+1)."""
    target = cls.__entity_options__.vsn
    name = f"{snapshot.entity_type} {snapshot.entity_id!r}"
    if snapshot.vsn > target:
        raise UpgradeError(
            f"{name}: stored vsn {snapshot.vsn} is newer than class vsn {target}; "
            "deploy the newer code"
        )
    state = snapshot.state
    for vsn in range(snapshot.vsn, target):
        try:
            state = cls.upgrade(vsn, state)
        except UpgradeError:
            raise
        except Exception as exc:
            raise UpgradeError(
                f"{name}: upgrade from stored vsn {vsn} (class vsn {target}) failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(state, dict):
            raise UpgradeError(f"{name}: upgrade from vsn {vsn} returned {type(state).__name__}")
    return state


def _from_record(record: Processed) -> Outcome:
    if record.ok:
        return Outcome(record.message_id, True, codec.decode(record.reply))
    reply = record.reply or {}
    return Outcome(record.message_id, False, error=EntityError(str(reply.get("exc_message"))))
