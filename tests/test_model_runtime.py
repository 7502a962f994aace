"""A model-based test of the runtime: a hypothesis state machine against a plain model.

The machine drives the real processor and runner (one step at a time, in this
thread) on real Postgres and Redis through tests/model_runtime_adapter.py,
with random interleavings of messages to entities of every durability mode,
resends, alarm schedules, cancels and firings, deletes, entity-to-entity
sends, pause and resume, crashes at any point, lease loss and purges of
processed records. The model is the contract, applied in queue order:

- every reply equals the model's (the first application's reply, which is
  also what a resend or a redelivery gets; an error reply changes nothing);
- each message is applied at most once, and a producer's messages to one
  entity in the order it sent them (the entities log every applied tag);
- a cancelled or replaced alarm never fires; a deleted entity keeps no
  alarms and starts from defaults;
- after a flush, stored state and alarms equal the model's;
- no message stalls a partition: a drain always empties the queues;
- a processed record outlives every queued, in-flight or held copy of its
  message (a purge forgets only the records of messages acknowledged and gone).
"""

from __future__ import annotations

import collections
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from entities import clock
from entities.messages import OP_ALARM, OP_DELETE
from entities.routing import partition_for
from entities.settings import get_settings
from tests.model_runtime_adapter import CRASH_POINTS, Runtime

#: The two partitions the test uses (every entity lives in one of them).
P0, P1 = 5, 9
TYPES = ("model-strict", "model-interval", "model-on-stop")
RELAXED = {"model-interval", "model-on-stop"}
ALARM_NAMES = ("a", "b")
#: Steps a drain may take before the test says the partition is stalled.
DRAIN_STEPS = 40


def _ids(entity_type: str, partition: int, count: int, prefix: str) -> list[str]:
    n = get_settings().partitions
    found = (
        f"{prefix}{i}"
        for i in itertools.count()
        if partition_for(entity_type, f"{prefix}{i}", n) == partition
    )
    return list(itertools.islice(found, count))


#: Entities the test sends to: one of each type in P0, a strict one in P1.
MAINS = [(t, _ids(t, P0, 1, "m")[0]) for t in TYPES]
MAINS.append(("model-strict", _ids("model-strict", P1, 1, "m")[0]))
#: Entities that only receive entity-to-entity sends.
SINKS = [
    ("model-strict", _ids("model-strict", P1, 1, "sink")[0]),
    ("model-on-stop", _ids("model-on-stop", P0, 1, "sink")[0]),
]

#: What one message to a main entity does, with every argument any op needs.
OPS = ("add", "add", "withdraw", "get", "fail", "arm", "disarm", "tell", "delete")
MESSAGES = st.tuples(
    st.sampled_from(MAINS),
    st.sampled_from(OPS),
    st.integers(1, 2),
    st.sampled_from(ALARM_NAMES),
    st.booleans(),
    st.sampled_from(SINKS),
    st.booleans(),
)

Reply = tuple[str, Any]
#: The reply of a message the runtime must refuse: an error of any type, or a dead letter.
ANY_ERROR: Reply = ("err", "*")


def _matches(got: Reply | None, expected: Reply | None) -> bool:
    if expected == ANY_ERROR:
        return got is None or got[0] == "err"
    return got == expected


@dataclass
class EntityModel:
    value: int = 0
    log: list[str] = field(default_factory=list)
    alarms: dict[str, str] = field(default_factory=dict)  # name -> generation (the payload)
    exists: bool = False


class RuntimeMachine(RuleBasedStateMachine):
    """The runtime against the model of its contract."""

    def __init__(self) -> None:
        super().__init__()
        _clean()
        self.clock = clock.VirtualClock()
        self._previous_clock = clock.install(self.clock)
        self.rt = Runtime([P0, P1])
        self.entities: dict[tuple[str, str], EntityModel] = {k: EntityModel() for k in MAINS}
        self.records: dict[str, Reply] = {}  # task id -> the reply its record holds
        self.first: dict[str, Reply | None] = {}  # task id -> first reply (None: any error)
        self.sent: list[tuple[tuple[str, str], str, bytes, dict[str, Any]]] = []
        self.firings: list[tuple[tuple[str, str], str, bytes, str, str]] = []
        # sink -> sender -> tags in the order the sender sent them
        self.sink_expected: dict[tuple[str, str], dict[tuple[str, str], list[str]]] = {
            k: {} for k in SINKS
        }
        self.paused: set[tuple[str, str]] = set()
        self.paused_partitions: set[int] = set()
        self.counter = itertools.count()
        self.pushes: collections.Counter[str] = collections.Counter()  # copies of each task id

    def teardown(self) -> None:
        self.rt.close()
        clock.install(self._previous_clock)

    # -- the model ----------------------------------------------------------------------

    def _tag(self) -> str:
        return f"t{next(self.counter)}"

    def _model_apply(self, key: tuple[str, str], msg: dict[str, Any]) -> tuple[Reply | None, bool]:
        """Applies one message to the model; returns its reply and whether it changed anything."""
        e = self.entities[key]
        op, args = msg["op"], msg.get("args", [])
        if op == "add":
            e.value += args[1]
            e.log.append(args[0])
            reply: Reply | None = ("ok", e.value)
        elif op == "withdraw":
            if e.value < args[1]:
                return ("err", "Insufficient"), False
            e.value -= args[1]
            e.log.append(args[0])
            reply = ("ok", e.value)
        elif op == "get":
            return ("ok", e.value), False
        elif op == "fail":
            return ("err", "Refused"), False
        elif op == "arm":
            tag, name, _delay, gen = args
            e.alarms[name] = gen
            if tag is not None:
                e.log.append(tag)
            reply = ("ok", None)
        elif op == "disarm":
            tag, name = args
            e.alarms.pop(name, None)
            if tag is not None:
                e.log.append(tag)
            reply = ("ok", None)
        elif op == "tell":
            tag, sink_type, sink_id = args
            e.log.append(tag)
            self.sink_expected[(sink_type, sink_id)].setdefault(key, []).append(tag)
            reply = ("ok", None)
        elif op == OP_DELETE:
            self.entities[key] = EntityModel()
            return ("ok", None), True
        elif op == OP_ALARM:
            name, gen = msg["model_gen"]
            if e.alarms.get(name) != gen:
                return None, False  # cancelled, replaced or fired: the firing does nothing
            del e.alarms[name]
            e.log.append(f"alarm:{name}:{gen}")
            reply = None
        else:
            raise AssertionError(op)
        e.exists = True
        return reply, True

    def _model_deliver(self, key: tuple[str, str], task_id: str, msg: dict[str, Any]) -> None:
        if task_id in self.records:
            reply: Reply | None = self.records[task_id]
        else:
            # Every outcome counts as recorded, an error or a read-only reply too: a
            # second copy of a task id is never applied again while its first's outcome
            # is kept, and gets the first one's reply.
            reply, _changed = self._model_apply(key, msg)
            self.records[task_id] = reply  # type: ignore[assignment]
        if msg["op"] != OP_ALARM:
            self.first.setdefault(task_id, reply)

    def _send(self, key: tuple[str, str], msg: dict[str, Any], durability: str | None) -> None:
        task_id = f"m-{uuid.uuid4().hex[:12]}"
        raw = self.rt.message(key[0], key[1], msg, task_id, durability)
        self.sent.append((key, task_id, raw, msg))
        self.pushes[task_id] += 1
        self.rt.enqueue(key[0], key[1], raw)
        self._model_deliver(key, task_id, msg)

    # -- messages -------------------------------------------------------------------------

    @rule(messages=st.lists(MESSAGES, min_size=1, max_size=4))
    def send(self, messages: list[tuple[Any, ...]]) -> None:
        """A client sends a few messages, in order."""
        for message in messages:
            self._send_one(*message)

    def _send_one(
        self,
        key: tuple[str, str],
        op: str,
        amount: int,
        name: str,
        with_tag: bool,
        sink: tuple[str, str],
        escalate: bool,
    ) -> None:
        tag = self._tag()
        if op in ("add", "withdraw"):
            args: list[Any] = [tag, amount]
        elif op == "get":
            args = []
        elif op == "fail":
            args = [tag]
        elif op == "arm":
            args = [tag if with_tag else None, name, 10.0, f"g{tag}"]
        elif op == "disarm":
            args = [tag if with_tag else None, name]
        elif op == "tell":
            args = [tag, sink[0], sink[1]]
        else:
            self._send(key, {"op": OP_DELETE}, None)
            return
        durability = "strict" if escalate and key[0] in RELAXED else None
        self._send(key, {"op": op, "args": args}, durability)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """A second send with the same task id (the same bytes)."""
        key, task_id, raw, msg = data.draw(st.sampled_from(self.sent))
        self.pushes[task_id] += 1
        self.rt.enqueue(key[0], key[1], raw)
        self._model_deliver(key, task_id, msg)

    @rule(key=st.sampled_from(MAINS), name=st.sampled_from(["a\u0000b", "\ud800"]))
    def bad_internal_op(self, key: tuple[str, str], name: str) -> None:
        """An internal op whose arguments the store cannot take (a NUL, a lone surrogate)."""
        task_id = f"bad-{uuid.uuid4().hex[:12]}"
        msg = {"op": OP_ALARM, "args": [name, "s", 0]}
        self.rt.enqueue(key[0], key[1], self.rt.message(key[0], key[1], msg, task_id))
        self.first[task_id] = ANY_ERROR

    # -- owners ---------------------------------------------------------------------------

    @rule(partition=st.sampled_from([P0, P1]), times=st.integers(1, 3))
    def step(self, partition: int, times: int) -> None:
        for _ in range(times):
            self.rt.step(partition)

    @rule(partition=st.sampled_from([P0, P1]))
    def flush(self, partition: int) -> None:
        self.rt.flush(partition)

    @rule(
        partition=st.sampled_from([P0, P1]),
        point=st.sampled_from([None, *CRASH_POINTS]),
    )
    def crash(self, partition: int, point: str | None) -> None:
        self.rt.crash(partition, point)

    @rule(partition=st.sampled_from([P0, P1]))
    def lose_lease(self, partition: int) -> None:
        self.rt.steal_lease(partition)

    @rule(index=st.integers(0, 3), flush=st.booleans())
    def zombie_acts(self, index: int, flush: bool) -> None:
        if flush:
            self.rt.flush_zombie(index)
        else:
            self.rt.step_zombie(index)

    # -- alarms ----------------------------------------------------------------------------

    def _fire(self, key: tuple[str, str], task_id: str, raw: bytes, name: str, gen: str) -> None:
        self.firings.append((key, task_id, raw, name, gen))
        self.pushes[task_id] += 1
        self._model_deliver(key, task_id, {"op": OP_ALARM, "model_gen": (name, gen)})

    @rule()
    def beat(self) -> None:
        """Time passes and beat dispatches every due alarm."""
        self.clock.advance(40.0)
        for alarm, task_id in self.rt.dispatch_alarms():
            key = (alarm.entity_type, alarm.entity_id)
            _, raw = self.rt.firing(alarm)
            self._fire(key, task_id, raw, alarm.name, alarm.payload)

    @rule(key=st.sampled_from(MAINS))
    def fire_stored(self, key: tuple[str, str]) -> None:
        """A firing of each alarm the store holds now (a dispatch racing the handlers)."""
        for alarm in self.rt.stored_alarms(*key):
            if alarm.status != "scheduled":
                continue
            task_id, raw = self.rt.firing(alarm)
            self.rt.enqueue(key[0], key[1], raw)
            self._fire(key, task_id, raw, alarm.name, alarm.payload)

    @precondition(lambda self: self.firings)
    @rule(data=st.data())
    def refire(self, data: st.DataObject) -> None:
        """A firing dispatched again (a second beat, a broker redelivery)."""
        key, task_id, raw, name, gen = data.draw(st.sampled_from(self.firings))
        self.pushes[task_id] += 1
        self.rt.enqueue(key[0], key[1], raw)
        self._model_deliver(key, task_id, {"op": OP_ALARM, "model_gen": (name, gen)})

    @rule(key=st.sampled_from(MAINS), name=st.sampled_from(ALARM_NAMES), cancel=st.booleans())
    def external_alarm(self, key: tuple[str, str], name: str, cancel: bool) -> None:
        """entities.schedule_alarm / cancel_alarm from outside, once the entity is idle (its
        queued messages applied, not necessarily flushed)."""
        if key in self.paused or self.rt.partition_of(*key) in self.paused_partitions:
            return
        self._drain()
        if cancel:
            self.rt.cancel_alarm(key[0], key[1], name)
            self.entities[key].alarms.pop(name, None)
        else:
            gen = f"x{self._tag()}"
            self.rt.schedule_alarm(key[0], key[1], name, gen)
            self.entities[key].alarms[name] = gen
        self._drain()  # where the change also goes through the queue, it is applied now

    # -- records ---------------------------------------------------------------------------

    @rule()
    def purge(self) -> None:
        """Processed records purged with retention 0: the store may drop the record of a
        message acknowledged and no longer queued, in flight or held (a resend of it then
        applies anew), never the record of one that is. (Skipped while a resend is queued:
        a resend later than the retention is a new message, so the model could not say.)"""
        pending = self.rt.pending_task_ids()
        if any(self.pushes[t] > 1 for t in pending):
            return  # a queued resend may be newer than the resend window: either outcome holds
        ids = list(self.records)
        before = self.rt.recorded(ids)
        self.rt.purge_processed()
        purged = before - self.rt.recorded(ids)
        wrongly_purged = purged & pending
        assert not wrongly_purged, (
            f"purged the records of messages still queued, in flight or held: {wrongly_purged}"
        )
        for task_id in purged:
            del self.records[task_id]

    # -- pause and resume -----------------------------------------------------------------

    @rule(key=st.sampled_from(MAINS), pause=st.booleans())
    def pause_or_resume_entity(self, key: tuple[str, str], pause: bool) -> None:
        if pause:
            self.rt.pause_entity(*key)
            self.paused.add(key)
        elif key in self.paused:
            self.rt.resume_entity(*key)
            self.paused.discard(key)

    @rule(partition=st.sampled_from([P0, P1]), pause=st.booleans())
    def pause_or_resume_partition(self, partition: int, pause: bool) -> None:
        if pause:
            self.rt.pause_partition(partition)
            self.paused_partitions.add(partition)
        else:
            self.rt.resume_partition(partition)
            self.paused_partitions.discard(partition)

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    def replies_match(self) -> None:
        got = self.rt.replies_of(list(self.first))
        for task_id, expected in self.first.items():
            if got[task_id] is not None:
                assert _matches(got[task_id], expected), (
                    f"reply of {task_id}: got {got[task_id]}, model says {expected}"
                )

    @rule()
    def settle_and_check(self) -> None:
        """Drain, flush every owner, and compare what is stored with the model."""
        self._drain()
        for p in (P0, P1):
            if p not in self.paused_partitions:
                self.rt.flush(p)
        self._drain()
        self._check_stored(final=False)

    def _drain(self) -> None:
        for p in (P0, P1):
            if p in self.paused_partitions:
                continue
            for _ in range(DRAIN_STEPS):
                if self.rt.idle(p):
                    break
                self.rt.step(p)
            else:
                raise AssertionError(
                    f"partition {p} stalled: {self.rt.queued(p)} queued and "
                    f"{self.rt.inflight_unapplied(p)} unapplied after {DRAIN_STEPS} steps"
                )

    def _check_stored(self, final: bool) -> None:
        for key, model in self.entities.items():
            if key in self.paused or self.rt.partition_of(*key) in self.paused_partitions:
                continue
            snap = self.rt.load(*key)
            if not model.exists:
                assert snap is None, f"{key}: stored {snap and snap.state}, model says none"
            else:
                assert snap is not None, f"{key}: nothing stored, model says {model}"
                assert snap.state == {"value": model.value, "log": model.log}, (
                    f"{key}: stored {snap.state}, model says value={model.value} log={model.log}"
                )
            alarms = {
                a.name: a.payload for a in self.rt.stored_alarms(*key) if a.status == "scheduled"
            }
            assert alarms == model.alarms, f"{key}: stored alarms {alarms}, model {model.alarms}"
        for sink, by_sender in self.sink_expected.items():
            snap = self.rt.load(*sink)
            log = snap.state["log"] if snap is not None else []
            known = {t for tags in by_sender.values() for t in tags}
            assert all(t in known for t in log), f"sink {sink}: unexpected sends in {log}"
            for sender, tags in by_sender.items():
                got = [t for t in log if t in set(tags)]
                if final:
                    assert got == tags, f"sink {sink} from {sender}: got {got}, sent {tags}"
                else:
                    assert got == tags[: len(got)], (
                        f"sink {sink} from {sender}: got {got}, sent {tags} (a send applied "
                        "twice or out of order)"
                    )
        if final:
            got = self.rt.replies_of(list(self.first))
            for task_id, expected in self.first.items():
                assert _matches(got[task_id], expected), (
                    f"final reply of {task_id}: got {got[task_id]}, model says {expected}"
                )

    def check_final(self) -> None:
        """Resume everything, let every owner finish, and check the whole contract."""
        for key in list(self.paused):
            self.rt.resume_entity(*key)
        self.paused.clear()
        for p in list(self.paused_partitions):
            self.rt.resume_partition(p)
        self.paused_partitions.clear()
        for _ in range(4):
            self._drain()
            for p in (P0, P1):
                self.rt.flush(p)
        self._drain()
        self._check_stored(final=True)


def _clean() -> None:
    """Empties the test's Redis database and entity tables (what clean_state does per test)."""
    import os

    import sqlalchemy as sa

    from entities.client import get_store
    from entities.store import schema
    from workers.broker import redis_from_url

    client = redis_from_url(os.environ["ENTITIES_BROKER_URL"])
    client.flushdb()
    client.close()
    store = get_store()
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        for table in reversed(schema.metadata.sorted_tables):
            if table.name not in ("entity_settings", "entity_partitions"):
                conn.execute(sa.delete(table))
        conn.execute(sa.update(schema.partitions).values(owner=None))


class FinalChecked(RuntimeMachine):
    """The machine, with the whole contract checked once more at the end of each run."""

    def teardown(self) -> None:
        try:
            self.check_final()
        finally:
            super().teardown()


# The default run stays well inside CI's per-test limit even when it must shrink a
# failure; the slow-marked run below searches far longer.
QUICK = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
LONG = settings(
    max_examples=2000,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_runtime_keeps_its_contract_under_random_interleavings() -> None:
    """Given any interleaving of messages, alarms, deletes, sends, pauses, crashes, lease
    losses and purges, when the real runner and processor serve them, then every reply,
    stored state and alarm is what the model of the contract says."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(FinalChecked, settings=QUICK)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 2,000 examples of 80 steps: minutes, not seconds
def test_the_runtime_keeps_its_contract_under_many_more_interleavings() -> None:
    """The same, with many more and longer runs."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(FinalChecked, settings=LONG)
