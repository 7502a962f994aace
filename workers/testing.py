"""The in-process harness of the test kit: entities on SQLite, a virtual clock, no servers.

Messages are turned into the exact bytes a partition queue holds
(:func:`entities.testing.celery_message`) and applied by the worker's own
:class:`~workers.processor.Processor`, so handlers, activation, dedup, alarm
firing and the fenced commit all run the production code. Alarms are claimed
with the dispatcher's own query and misfire policy (:func:`workers.alarms.claim`)
and fire only when the test says so. Messages an entity sends are delivered
after its commit, as the outbox publisher does.

While a harness is open it is the process's store, clock and transport
(:mod:`workers.inprocess`), so every client helper works on it, in this process,
and sees its virtual time: ``Counter.ref(id).op()`` and ``.op.delay()``,
``send_to_entity.delay``, ``entities.delete``, ``entities.read``,
``entities.list_entities``, the alarm helpers; none touches a broker. One harness
at a time; it is not thread-safe. It lives in ``workers`` because it runs
worker code (see :mod:`entities.testing`).
"""

from __future__ import annotations

import collections
import datetime as dt
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from entities import clock, registry
from entities.client import set_store
from entities.migrate import upgrade
from entities.model import Entity
from entities.routing import partition_for
from entities.settings import Settings
from entities.store import Alarm, OutboxMessage, Snapshot, SQLStore
from entities.store import schema as t
from entities.testing import VirtualClock, celery_message
from entities.transports import use_transport
from workers.alarms import alarm_call, claim
from workers.apply import Outcome
from workers.inprocess import InProcessTransport
from workers.processor import Processor

__all__ = ["AlarmChainTooLong", "Harness"]

#: Most messages one call may set off through entity-to-entity sends.
MAX_CASCADE = 10_000


class AlarmChainTooLong(AssertionError):
    """drain_alarms met an alarm scheduled by a chain of more than ``max_chain`` firings."""


class Harness:
    """Runs entities in this process on a fresh SQLite store with a virtual clock.

    ``start`` is the virtual clock's first time (default: now); ``settings``
    keyword overrides (``alarm_misfire="skip"``, ``partitions=4`` ...) apply
    to the runtime as they would to a worker. Use it as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, start: dt.datetime | None = None, **settings: Any) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="entities-harness-"))
        url = f"sqlite:///{self._dir / 'entities.db'}"
        upgrade(url)
        self.store = SQLStore(url)
        self.settings = Settings(
            database_url=url, broker_url="memory://", result_backend="memory://"
        ).replace(**settings)
        self.clock = VirtualClock(start)
        self._processors: dict[int, Processor] = {}
        self._unacked: dict[int, list[tuple[str, str, bytes]]] = collections.defaultdict(list)
        self._old_clock = clock.install(self.clock)
        self._old_store = set_store(self.store)
        self._old_transport = use_transport(InProcessTransport(self))

    def close(self) -> None:
        """Restores the process's clock, store and transport and deletes the harness's database."""
        clock.install(self._old_clock)
        set_store(self._old_store)
        use_transport(self._old_transport)
        self.store.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- messages -----------------------------------------------------------------

    def call(
        self,
        entity_type: str | type[Entity],
        entity_id: str,
        op: str,
        *args: Any,
        task_id: str | None = None,
        durability: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Applies one message and returns its reply, or raises the handler's error.

        Like ``AsyncResult.get()``: errors are re-raised with their type. A
        second call with the same ``task_id`` is a redelivery: it is applied
        at most once and returns the first reply.
        """
        name = registry.type_name(entity_type)
        msg = {"op": op, "args": list(args), "kwargs": kwargs}
        raw = celery_message(name, entity_id, msg, task_id, durability)
        return _reply(self.deliver(name, entity_id, raw))

    def read(self, entity_type: str | type[Entity], entity_id: str) -> Snapshot | None:
        """The entity's last committed snapshot, as ``entities.read`` gives it."""
        return self.store.load(registry.type_name(entity_type), entity_id)

    def flush(self) -> None:
        """Commits what relaxed (``interval``, ``on_stop``) entities hold, as a graceful stop."""
        for partition, processor in list(self._processors.items()):
            self._publish(processor.flush(None))
            self._unacked[partition].clear()

    def crash(self) -> None:
        """Kills the runtime: memory is lost and unacknowledged messages are delivered again.

        What relaxed entities held unflushed is re-applied from the last
        commit, as after a ``kill -9`` of the worker; committed effects stay.
        """
        for processor in list(self._processors.values()):
            processor.reset()
        for partition in list(self._unacked):
            again, self._unacked[partition] = self._unacked[partition], []
            for entity_type, entity_id, raw in again:
                self.deliver(entity_type, entity_id, raw)

    # -- time and alarms ------------------------------------------------------------------

    @property
    def now(self) -> dt.datetime:
        """The virtual time."""
        return self.clock()

    def advance(self, delta: float | dt.timedelta) -> dt.datetime:
        """Moves the virtual clock forward; fires nothing (see :meth:`drain_alarms`)."""
        return self.clock.advance(delta)

    def alarms(self, entity_type: str | type[Entity], entity_id: str) -> list[Alarm]:
        """Every stored alarm of the entity (scheduled, failed or skipped), by fire time."""
        return self.store.list_alarms(registry.type_name(entity_type), entity_id)

    def fire_alarm(self, entity_type: str | type[Entity], entity_id: str, name: str) -> None:
        """Fires one scheduled alarm now, whatever its time; raises its handler's error.

        A failing handler is recorded as in production (an attempt, a retry
        time, or ``failed`` after the last attempt) before the error is raised.
        Raises LookupError if the entity has no scheduled alarm ``name``.
        """
        alarm = self.store.get_alarm(registry.type_name(entity_type), entity_id, name)
        if alarm is None or alarm.status != "scheduled":
            state = "none" if alarm is None else alarm.status
            raise LookupError(
                f"{entity_type} {entity_id!r} has no scheduled alarm {name!r} (found: {state})"
            )
        _reply(self._fire(alarm))

    def drain_alarms(
        self,
        max_chain: int = 100,
        within: float | dt.timedelta | None = None,
        raise_errors: bool = True,
    ) -> int:
        """Fires due alarms one by one, earliest first, moving the clock to each; returns
        how many firings ran (a retry counts again).

        Alarms scheduled while draining are drained too, so this runs until no
        alarm is left, or, with ``within``, none is due before now + within
        (the clock then ends there). An alarm more than ``max_chain`` firings
        down a chain of alarms that schedule alarms raises AlarmChainTooLong.
        Late alarms follow the misfire policy. A handler's error is raised
        after it is recorded, unless ``raise_errors`` is False (then failing
        alarms are retried with backoff until they are kept as failed).
        """
        until = None if within is None else self.now + _timedelta(within)
        depth: dict[str, int] = {}
        fired = 0
        while (due := self._next_due()) is not None and (until is None or due <= until):
            self.clock.move_to(due)
            batch = claim(self.store, self.settings, limit=1)
            if not batch:
                break
            alarm = batch[0]
            if alarm.status != "scheduled":
                continue  # skipped by the misfire policy
            level = depth.get(alarm.scheduling_id, 1)
            if level > max_chain:
                raise AlarmChainTooLong(
                    f"alarm {alarm.name!r} of {alarm.entity_type} {alarm.entity_id!r} is the "
                    f"{level}th of a chain of alarms scheduling alarms (max_chain={max_chain})"
                )
            before = self._scheduled()
            outcome = self._fire(alarm)
            fired += 1
            for scheduling in self._scheduled() - before:
                depth[scheduling] = level + 1
            if not outcome.ok and raise_errors:
                _reply(outcome)
        if until is not None:
            self.clock.move_to(until)
        return fired

    # -- inside ----------------------------------------------------------------------

    def _fire(self, alarm: Alarm) -> Outcome:
        task_id, (etype, eid, msg) = alarm_call(alarm)
        raw = celery_message(etype, eid, msg, task_id, ignore_result=True)
        return self.deliver(etype, eid, raw)

    def deliver(self, entity_type: str, entity_id: str, raw: bytes) -> Outcome:
        """Applies one message (its bytes as a partition queue holds them), then delivers
        the sends it committed; returns its outcome. The client helpers come here."""
        outcome, outbox = self._process(entity_type, entity_id, raw)
        self._publish(outbox)
        return outcome

    def _process(
        self, entity_type: str, entity_id: str, raw: bytes
    ) -> tuple[Outcome, list[OutboxMessage]]:
        partition = partition_for(entity_type, entity_id, self.settings.partitions)
        processor = self._processors.get(partition)
        if processor is None:
            processor = Processor(partition, self.store, self.settings)
            self._processors[partition] = processor
        result = processor.process([raw], None)
        self._unacked[partition].append((entity_type, entity_id, raw))
        if not processor.dirty:  # acknowledged once nothing applied is left uncommitted
            self._unacked[partition].clear()
        return result.outcomes[0], result.outbox

    def _publish(self, outbox: list[OutboxMessage]) -> None:
        """Delivers committed sends, and the sends they cause, as the outbox publisher does."""
        queue = collections.deque(outbox)
        for _ in range(MAX_CASCADE):
            if not queue:
                return
            m = queue.popleft()
            raw = celery_message(
                m.entity_type, m.entity_id, m.msg, m.message_id, ignore_result=True, sender=m.sender
            )
            queue.extend(self._process(m.entity_type, m.entity_id, raw)[1])
            self.store.forget_outbox([m.message_id])
        raise AssertionError(
            f"one call set off more than {MAX_CASCADE} messages; do entities send to each "
            "other forever?"
        )

    def _next_due(self) -> dt.datetime | None:
        a = t.alarms.c
        query = sa.select(sa.func.min(a.fire_at)).where(a.status == "scheduled")
        with self.store.engine.connect() as conn:
            value: dt.datetime | None = conn.execute(query).scalar()
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=dt.UTC)  # SQLite keeps UTC wall times

    def _scheduled(self) -> set[str]:
        a = t.alarms.c
        query = sa.select(a.scheduling_id).where(a.status == "scheduled")
        with self.store.engine.connect() as conn:
            return set(conn.execute(query).scalars())


def _reply(outcome: Outcome) -> Any:
    if not outcome.ok:
        assert outcome.error is not None
        raise outcome.error
    return outcome.value


def _timedelta(value: float | dt.timedelta) -> dt.timedelta:
    return value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)
