"""Applying one message to one entity: activation, the handler, and what it stages.

The Applier runs handlers on the live object and records what the partition
must commit: the new encoded state, the processed-message record with its
reply, alarm changes and outgoing messages. A handler that raises is undone by
rebuilding the object from its last encoded state, so nothing it did survives.

Invariant: what a batch stages is what later messages in that batch see, and
so are a relaxed entity's unflushed changes. State: the live object carries
them. Deletes: a deleted entity starts again from its defaults, and its delete
clears every alarm of the entity, staged, deferred or stored. Alarms: a firing
fires only if its scheduling is still current once every pending change is
counted (this batch's, then the deferred ones, see :mod:`workers.pending`),
not merely if the stored row still names it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from entities import clock, codec, registry, telemetry
from entities.alarm_ops import parse_set_alarm
from entities.errors import BadMessage, StateError
from entities.messages import (
    OP_ALARM,
    OP_CLEAR_ALARMS,
    OP_DELETE,
    OP_SEND_FAILED,
    OP_SET_ALARM,
    Envelope,
)
from entities.model import Entity
from entities.sends import SendFailure
from entities.settings import Settings
from entities.store import (
    Alarm,
    AlarmChange,
    AlarmOutcome,
    OutboxMessage,
    Processed,
    Snapshot,
    Store,
)
from entities.upgrades import upgrade_state
from workers.memory import EntityMemory, Key, Live
from workers.pending import PendingAlarms
from workers.refusals import recorded_error

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
    """The reply to one message: a value, or an exception to re-raise on the caller's side."""

    task_id: str
    ok: bool
    value: Any = None
    error: BaseException | None = None
    silent: bool = False  # the sender wants no reply stored
    #: The reply is the one recorded with a commit (stored whoever stores it); False for
    #: a reply computed on memory nothing committed (an error, a read, a relaxed change).
    committed: bool = False
    links: dict[str, Any] | None = None  # callbacks, errbacks, chain to fire after the reply

    @classmethod
    def failure(cls, task_id: str, error: BaseException, silent: bool = False) -> Outcome:
        """An error reply."""
        return cls(task_id, False, error=error, silent=silent)

    @classmethod
    def from_record(cls, record: Processed, silent: bool = False) -> Outcome:
        """The reply recorded when the message was first applied (or refused)."""
        if not record.ok:
            error = recorded_error(record.reply)
            return cls(record.message_id, False, error=error, silent=silent, committed=True)
        return cls(
            record.message_id, True, codec.decode(record.reply), silent=silent, committed=True
        )


@dataclasses.dataclass
class Staged:
    """What one batch changed for one entity."""

    live: Live | None
    changed: bool = False
    strict: bool = False  # commit with this batch, whatever the class's durability
    processed: list[Processed] = dataclasses.field(default_factory=list)
    alarms: PendingAlarms = dataclasses.field(default_factory=PendingAlarms)
    outbox: list[OutboxMessage] = dataclasses.field(default_factory=list)
    alarm_outcomes: list[AlarmOutcome] = dataclasses.field(default_factory=list)
    replies: dict[str, Outcome] = dataclasses.field(default_factory=dict)


#: The alarm changes of earlier batches still waiting for their flush, by entity.
Deferred = Callable[[], Mapping[Key, PendingAlarms]]


class Applier:
    """Applies messages to the entities of one partition's memory."""

    def __init__(
        self,
        partition: int,
        store: Store,
        settings: Settings,
        memory: EntityMemory,
        deferred: Deferred = dict,
    ) -> None:
        self.partition = partition
        self.store = store
        self.settings = settings
        self.memory = memory
        self.deferred = deferred
        self._prefetched: set[Key] = set()
        self._snapshots: dict[Key, Snapshot] = {}

    def prefetch(self, envelopes: list[Envelope]) -> None:
        """Loads, in one round trip, the snapshots of the batch's entities not in memory."""
        missing = {
            e.key
            for e in envelopes
            if e.error is None and e.bad is None and e.key not in self.memory
        }
        self._prefetched = missing
        if not missing:
            self._snapshots = {}
            return
        with telemetry.span("storage.load", partition=self.partition, count=len(missing)):
            self._snapshots = self.store.load_many(missing)

    def apply(self, env: Envelope, staged: dict[Key, Staged]) -> Outcome:
        """Applies one well-formed message; never raises for the message's own faults."""
        if env.bad is not None:
            return Outcome.failure(env.task_id, env.bad, env.silent)
        if env.op == OP_ALARM:
            return self._alarm(env, staged)
        if env.op in (OP_SET_ALARM, OP_CLEAR_ALARMS):
            return self._external_alarm(env, staged)
        if env.op == OP_SEND_FAILED:
            return self._send_failed(env, staged)
        try:
            cls = registry.lookup(env.entity_type)
            if env.op == OP_DELETE:
                return self._delete(env, cls, staged)
            call = cls.bind_call(env.op, env.args, env.kwargs)
            live = self.activate(cls, env.key)
        except Exception as exc:
            return Outcome.failure(env.task_id, exc, env.silent)
        if env.durability == "strict" or env.links is not None:
            # A message with callbacks commits before its reply, so a callback never
            # sees an effect a crash could still undo.
            _stage(staged, env.key, live).strict = True
        return self._run(env, live, lambda obj: call(obj), staged)

    # -- activation -------------------------------------------------------------

    def _snapshot(self, key: Key) -> Snapshot | None:
        if key in self._prefetched:
            return self._snapshots.get(key)
        with telemetry.span("storage.load", partition=self.partition, count=1):
            return self.store.load(*key)

    def activate(self, cls: type[Entity], key: Key) -> Live:
        """The entity in memory, loading (and upgrading) it and running after_load if needed."""
        live = self.memory.get(key)
        if live is not None and live.cls is cls:
            live.wake(key[1])
            return live
        snapshot = self._snapshot(key)
        class_vsn = cls.__entity_options__.vsn
        if snapshot is None:
            obj = cls.from_state(key[1], None)
            live = Live(cls, obj, 0, class_vsn, obj.encode_state())
        else:
            state = upgrade_state(cls, snapshot)
            obj = cls.from_state(key[1], state)
            encoded = snapshot.state if snapshot.vsn == class_vsn else obj.encode_state()
            live = Live(cls, obj, snapshot.version, snapshot.vsn, encoded)
        obj.after_load()
        telemetry.emit(
            "entity.activate",
            entity_type=key[0],
            entity_id=key[1],
            version=live.version,
            vsn=live.vsn,
        )
        self.memory.put(key, live)
        return live

    # -- running code of the entity -------------------------------------------------

    def _run(
        self,
        env: Envelope,
        live: Live,
        call: Any,
        staged: dict[Key, Staged],
        on_error: Any = None,
    ) -> Outcome:
        obj = live.wake(env.entity_id)
        try:
            result = call(obj)
            reply = codec.encode(result, Any, f"reply of {env.entity_type}.{env.op}")
            encoded = obj.encode_state()
            alarms, sends = obj.take_effects()
            if encoded != live.encoded:
                _check_size(env, encoded, self.settings.max_state_bytes)
        except Exception as exc:  # the entity's own error: undo everything it did
            live.obj = live.cls.from_state(env.entity_id, live.encoded)
            if on_error is not None:
                on_error(exc)
            return Outcome.failure(env.task_id, exc, env.silent)
        outcome = Outcome(env.task_id, True, result, silent=env.silent)
        if encoded == live.encoded and not alarms and not sends:
            return outcome
        live.encoded = encoded
        live.deleted = False
        st = _stage(staged, env.key, live)
        st.changed = True
        st.processed.append(
            Processed(env.task_id, env.entity_type, env.entity_id, self.partition, True, reply)
        )
        st.replies[env.task_id] = outcome
        for alarm in alarms:
            payload = codec.encode(alarm.payload, Any, f"alarm {alarm.name!r} payload")
            st.alarms.set(
                AlarmChange(env.entity_type, env.entity_id, alarm.name, alarm.fire_at, payload)
            )
        for send in sends:
            st.outbox.append(
                OutboxMessage(
                    uuid.uuid4().hex,
                    self.partition,
                    send.entity_type,
                    send.entity_id,
                    send.msg,
                    sender=env.key,
                )
            )
        return outcome

    def _delete(self, env: Envelope, cls: type[Entity], staged: dict[Key, Staged]) -> Outcome:
        live = self.memory.get(env.key)
        if live is None or live.cls is not cls:
            snapshot = self._snapshot(env.key)
            version = snapshot.version if snapshot else 0
            vsn = snapshot.vsn if snapshot else cls.__entity_options__.vsn
            live = Live(cls, None, version, vsn, None)
            self.memory.put(env.key, live)
        fresh = cls.from_state(env.entity_id, None)
        live.obj, live.encoded, live.frozen, live.deleted = fresh, fresh.encode_state(), None, True
        st = _stage(staged, env.key, live)
        st.changed = st.strict = True
        st.alarms.clear()
        st.processed.append(
            Processed(env.task_id, env.entity_type, env.entity_id, self.partition, True, None)
        )
        return Outcome(env.task_id, True, None, silent=env.silent)

    # -- alarms -----------------------------------------------------------------

    def _external_alarm(self, env: Envelope, staged: dict[Key, Staged]) -> Outcome:
        """Stages an alarm change made outside the entity, after every change it made before
        (see :mod:`entities.alarm_ops`); commits with this batch, writing no state."""
        try:
            if env.op == OP_CLEAR_ALARMS:
                if env.args or env.kwargs:
                    raise BadMessage(f"{OP_CLEAR_ALARMS} takes no arguments")
                change = None
            else:
                if env.kwargs:
                    raise BadMessage(f"{OP_SET_ALARM} takes no keyword arguments")
                change = parse_set_alarm(env.entity_type, env.entity_id, env.args)
        except BadMessage as exc:
            return Outcome.failure(env.task_id, exc, env.silent)
        st = _stage(staged, env.key, None)
        if change is None:
            st.alarms.clear()
        else:
            st.alarms.set(change)
        st.strict = True
        st.processed.append(
            Processed(env.task_id, env.entity_type, env.entity_id, self.partition, True, None)
        )
        return Outcome(env.task_id, True, None, silent=env.silent)

    def _alarm(self, env: Envelope, staged: dict[Key, Staged]) -> Outcome:
        """Fires one alarm scheduling, once: only if it is still the current scheduling."""
        # The parser checked the arguments (entities.messages.validate_runtime_args).
        name, scheduling_id, attempt = env.args
        key = env.key
        done = AlarmOutcome(env.entity_type, env.entity_id, name, scheduling_id)
        alarm = self._current_alarm(key, name, staged)
        if (
            alarm is None
            or alarm.scheduling_id != scheduling_id
            or alarm.attempts != attempt
            or alarm.status != "scheduled"
        ):
            return Outcome(env.task_id, True, None, silent=True)  # cancelled, replaced or done
        try:
            cls = registry.lookup(env.entity_type)
        except Exception as exc:
            log.error("alarm %r of %s %r removed: %s", name, *key, exc)
            _stage(staged, key, None).alarm_outcomes.append(done)
            return Outcome.failure(env.task_id, exc, True)
        if cls.handle_alarm is Entity.handle_alarm:
            log.error(
                "alarm %r of %s %r removed: %s defines no handle_alarm",
                name,
                *key,
                cls.__qualname__,
            )
            _stage(staged, key, None).alarm_outcomes.append(done)
            return Outcome(env.task_id, True, None, silent=True)

        def failed(exc: BaseException) -> None:
            attempts = attempt + 1
            retry_at = None
            if attempts < self.settings.alarm_max_attempts:
                delay = self.settings.alarm_retry_s * 2 ** (attempts - 1)
                retry_at = clock.now() + dt.timedelta(seconds=delay)
            _stage(staged, key, None).alarm_outcomes.append(
                dataclasses.replace(
                    done, attempts=attempts, error=f"{type(exc).__name__}: {exc}", retry_at=retry_at
                )
            )
            telemetry.emit(
                "alarm.failed",
                entity_type=key[0],
                entity_id=key[1],
                name=name,
                attempts=attempts,
                error=repr(exc),
            )

        try:
            live = self.activate(cls, key)
        except Exception as exc:
            failed(exc)
            return Outcome.failure(env.task_id, exc, True)
        payload = codec.decode(alarm.payload)
        outcome = self._run(
            env, live, lambda obj: obj.handle_alarm(name, payload), staged, on_error=failed
        )
        if outcome.ok:
            st = _stage(staged, key, live)
            st.alarm_outcomes.append(done)
            st.strict = True
            telemetry.emit("alarm.fired", entity_type=key[0], entity_id=key[1], name=name)
            if not st.changed:
                st.changed = True
                st.processed.append(
                    Processed(
                        env.task_id, env.entity_type, env.entity_id, self.partition, True, None
                    )
                )
        return outcome

    def _current_alarm(self, key: Key, name: str, staged: dict[Key, Staged]) -> Alarm | None:
        """The current scheduling of alarm ``name``: the one the newest uncommitted change
        leaves, if one changed it (see workers.pending), else the stored row."""
        st = staged.get(key)
        if st is not None and st.alarms.supersedes(name):
            return st.alarms.current(name)
        pending = self.deferred().get(key)
        if pending is not None and pending.supersedes(name):
            return pending.current(name)
        return self.store.get_alarm(*key, name)

    # -- refusals of this entity's sends ---------------------------------------------

    def _send_failed(self, env: Envelope, staged: dict[Key, Staged]) -> Outcome:
        """Runs the sender's handle_send_failed with the refusal (see entities.sends)."""
        try:
            (data,) = env.args
            failure = SendFailure.from_json(data)
            cls = registry.lookup(env.entity_type)
        except Exception as exc:
            log.error("%s %r: a send failure could not be delivered: %s", *env.key, exc)
            return Outcome.failure(env.task_id, exc, env.silent)
        if cls.handle_send_failed is Entity.handle_send_failed:
            return Outcome(env.task_id, True, None, silent=env.silent)  # no hook (any more)
        try:
            live = self.activate(cls, env.key)
        except Exception as exc:
            log.error("%s %r: handle_send_failed could not run: %s", *env.key, exc)
            return Outcome.failure(env.task_id, exc, env.silent)

        def failed(exc: BaseException) -> None:
            log.error(
                "%s %r: handle_send_failed raised %r on the refusal of its message to %s %r",
                *env.key,
                exc,
                failure.entity_type,
                failure.entity_id,
            )

        return self._run(
            env, live, lambda obj: obj.handle_send_failed(failure), staged, on_error=failed
        )


def _stage(staged: dict[Key, Staged], key: Key, live: Live | None) -> Staged:
    st = staged.get(key)
    if st is None:
        st = staged[key] = Staged(live)
    elif st.live is None and live is not None:
        st.live = live
    return st


def _check_size(env: Envelope, encoded: dict[str, Any], limit: int) -> None:
    try:
        size = len(orjson.dumps(encoded))
    except TypeError:  # what orjson refuses (integers beyond 64 bits) the stdlib sizes
        size = len(json.dumps(encoded, separators=(",", ":")).encode())
    if size > limit:
        raise StateError(
            f"{env.entity_type} {env.entity_id!r}: encoded state is {size} bytes, more than "
            f"{limit} (ENTITIES_MAX_STATE_BYTES)"
        )
