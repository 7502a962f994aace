"""The model-based test's one seam to the runtime's internals (tests/test_model_runtime.py).

The state machine speaks only to :class:`Runtime`: put a message on a
partition queue, step a partition's owner once, flush it, crash it at a
chosen point, let another owner take its lease, dispatch alarms as beat does,
purge processed records, pause and resume, read replies, stored state and
alarms. Everything that knows how the processor, the runner, the lane and the
holds are built and driven lives here, so pointing the test at another
version of the runtime means changing this module only.

A crash is a ``kill -9`` in-process: the owner's objects are dropped without
flushing, acknowledging or storing replies; what it already sent to Redis or
committed to Postgres stays. The next owner takes the partition as a new
worker would: the dead owner's lease expires, a new token, a new epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import redis

from entities import clock
from entities.client import get_store
from entities.control import pause_entity, pause_partition, resume_entity, resume_partition
from entities.errors import DataRefused, FenceError, StoreError
from entities.routing import (
    held_list_key,
    held_set_key,
    inflight_key,
    lease_key,
    partition_for,
    paused_key,
    queue_name,
    resume_set_key,
)
from entities.settings import get_settings
from entities.store import Alarm, OutboxMessage, Snapshot, Store
from entities.transport import celery_message
from workers import holds as holds_module
from workers import runner as runner_module
from workers.alarms import alarm_call, claim, publisher
from workers.broker import PartitionQueues, redis_from_url
from workers.processor import Processor
from workers.replies import ReplyWriter
from workers.runner import LeaseLost, PartitionRunner

Key = tuple[str, str]

#: Crash points inside a step: just before a commit, just after it, just before the
#: published outbox is forgotten (after its publish).
CRASH_POINTS = ("before_commit", "after_commit", "before_forget")


class Crash(BaseException):
    """The simulated kill -9 (a BaseException, so no runtime handler catches it)."""


class CrashingStore:
    """The real store, which raises Crash at an armed point (and then stays dead)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.armed: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit(self, batch: Any) -> Any:
        if self.armed == "before_commit":
            raise Crash("before commit")
        found = self._store.commit(batch)
        if self.armed == "after_commit" and batch:
            raise Crash("after commit")
        return found

    def forget_outbox(self, message_ids: Any) -> None:
        if self.armed == "before_forget":
            raise Crash("before forgetting the outbox")
        self._store.forget_outbox(message_ids)


@dataclasses.dataclass
class Owner:
    """One live owner of one partition: its runner, processor and store proxy."""

    runner: PartitionRunner
    store: CrashingStore
    token: str
    epoch: int


class Runtime:
    """The runtime as the model test drives it: real Redis, real Postgres, no threads."""

    def __init__(self, partitions: list[int]) -> None:
        self.partitions = partitions
        self.settings = get_settings().replace(lease_ttl_s=3600.0)  # the test decides expiry
        self.client: redis.Redis = redis_from_url(os.environ["ENTITIES_BROKER_URL"])
        self.queues = PartitionQueues(self.client)
        self.store = get_store()
        from workers import app

        self.backend = app.backend
        self.replies = ReplyWriter(app.backend)
        self.owners: dict[int, Owner] = {}
        self.zombies: list[Owner] = []
        # Steps never block: a wait for messages is a no-op, and pause state is re-read
        # at every batch, so interleavings are decided by the test alone.
        self._saved = (runner_module.WAIT_S, holds_module.REFRESH_S)
        runner_module.WAIT_S = 0.0005
        holds_module.REFRESH_S = 0.0

    def close(self) -> None:
        for owner in [*self.owners.values(), *self.zombies]:
            self._drop(owner)
        self.owners.clear()
        self.zombies.clear()
        runner_module.WAIT_S, holds_module.REFRESH_S = self._saved
        self.client.close()

    # -- messages ---------------------------------------------------------------

    @staticmethod
    def message(
        entity_type: str,
        entity_id: str,
        msg: dict[str, Any],
        task_id: str,
        durability: str | None = None,
        silent: bool = False,
    ) -> bytes:
        """The bytes a client's send leaves on a partition queue."""
        return celery_message(entity_type, entity_id, msg, task_id, durability, silent)

    def enqueue(self, entity_type: str, entity_id: str, raw: bytes) -> None:
        """Puts ``raw`` at the tail of its entity's partition queue (as the router does)."""
        self.client.lpush(queue_name(self.partition_of(entity_type, entity_id)), raw)

    def partition_of(self, entity_type: str, entity_id: str) -> int:
        return partition_for(entity_type, entity_id, self.settings.partitions)

    def _publish_outbox(self, outbox: list[OutboxMessage]) -> None:
        for m in outbox:
            raw = celery_message(m.entity_type, m.entity_id, m.msg, m.message_id, None, True)
            self.enqueue(m.entity_type, m.entity_id, raw)

    # -- owners -------------------------------------------------------------------

    def owner(self, partition: int) -> Owner:
        """The partition's live owner, starting one (after the last one's lease expired)."""
        found = self.owners.get(partition)
        if found is None:
            self.client.delete(lease_key(partition))  # a dead owner's lease has expired
            found = self._start(partition)
        return found

    def _start(self, partition: int) -> Owner:
        token = f"model-{uuid.uuid4().hex[:8]}"
        assert self.queues.acquire(partition, token, int(self.settings.lease_ttl_s * 1000))
        epoch = self.store.claim_partition(partition, token)
        proxy = CrashingStore(self.store)
        processor = Processor(partition, proxy, self.settings)  # type: ignore[arg-type]
        runner = PartitionRunner(
            partition,
            token,
            epoch,
            self.queues,
            processor,
            self.replies,
            self._publish_outbox,
            self.settings.batch_size,
            lambda runner, reason: None,
        )
        owner = self.owners[partition] = Owner(runner, proxy, token, epoch)
        return owner

    def step(self, partition: int) -> str:
        """One iteration of the owner's loop, as its thread would run it."""
        owner = self.owner(partition)
        return self._iterate(owner, owner.runner._step)

    def flush(self, partition: int) -> str:
        """The owner flushes (its interval timer, a stop, the unacked bound)."""
        owner = self.owner(partition)
        return self._iterate(owner, lambda: owner.runner._flush() or True)

    def _iterate(self, owner: Owner, body: Callable[[], bool]) -> str:
        """``body`` with the error handling of PartitionRunner.run, without its sleeps.

        Returns "ok", "retry" (an error the loop retries), "lost" (the owner is gone:
        lease lost or a zombie fenced out), or "crash" (the simulated kill -9).
        """
        runner = owner.runner
        runner._drained = False
        try:
            if not body():
                return self._gone(owner)
            return "ok"
        except Crash:
            self._drop(owner)
            return "crash"
        except LeaseLost:
            return self._gone(owner)
        except FenceError as exc:
            if exc.stale_epoch:
                return self._gone(owner)
            runner._recover(0.0, exc)
            return "retry"
        except DataRefused as exc:  # a message's content: blamed on the messages it touched
            return self._blame(owner, exc)
        except (StoreError, redis.RedisError, OSError) as exc:
            runner._recover(0.0, exc)
            return "retry"
        except Exception as exc:  # a bug: the runner strikes the messages it touched
            return self._blame(owner, exc)

    def _blame(self, owner: Owner, exc: BaseException) -> str:
        if owner.runner._blame(0.0, exc) is None:
            return self._gone(owner)
        return "retry"

    def _gone(self, owner: Owner) -> str:
        owner.runner.lane.close()
        self._forget(owner)
        return "lost"

    def _forget(self, owner: Owner) -> None:
        if self.owners.get(owner.runner.partition) is owner:
            del self.owners[owner.runner.partition]
        if owner in self.zombies:
            self.zombies.remove(owner)

    def _drop(self, owner: Owner) -> None:
        """kill -9: drop the owner's objects and its connection; flush, ack, reply nothing."""
        owner.store.armed = None
        owner.runner.lane._drop()
        self._forget(owner)

    def crash(self, partition: int, point: str | None) -> str:
        """Kills the owner at ``point`` of its next step (None: between steps)."""
        if point is None:
            if partition in self.owners:
                self._drop(self.owners[partition])
            return "crash"
        owner = self.owner(partition)
        owner.store.armed = point
        outcome = self.step(partition)
        if outcome != "crash" and partition in self.owners:
            self._drop(owner)  # the point was not met in that step: die after it
        return "crash"

    def steal_lease(self, partition: int) -> None:
        """Another owner takes the lease (the old one keeps running as a zombie)."""
        old = self.owners.pop(partition, None)
        if old is not None:
            self.zombies.append(old)
        self.client.delete(lease_key(partition))
        self._start(partition)

    def step_zombie(self, index: int) -> str:
        """One iteration of a zombie (an owner whose lease was taken)."""
        if not self.zombies:
            return "none"
        zombie = self.zombies[index % len(self.zombies)]
        return self._iterate(zombie, zombie.runner._step)

    def flush_zombie(self, index: int) -> str:
        if not self.zombies:
            return "none"
        zombie = self.zombies[index % len(self.zombies)]
        return self._iterate(zombie, lambda: zombie.runner._flush() or True)

    # -- what is queued -------------------------------------------------------------

    def queued(self, partition: int) -> int:
        return int(self.client.llen(queue_name(partition)))

    def inflight_unapplied(self, partition: int) -> int:
        """In-flight messages the owner has not applied yet (all of them if no owner)."""
        owner = self.owners.get(partition)
        pending = owner.runner.pending if owner is not None else 0
        return int(self.client.llen(inflight_key(partition))) - pending

    def idle(self, partition: int) -> bool:
        """True if the owner has nothing left to do: nothing queued or unapplied in flight,
        no entity waiting to be resumed."""
        return (
            self.queued(partition) == 0
            and self.inflight_unapplied(partition) <= 0
            and not self.client.scard(resume_set_key(partition))
        )

    def partition_paused(self, partition: int) -> bool:
        return bool(self.client.exists(paused_key(partition)))

    def pending_task_ids(self) -> set[str]:
        """Task ids of every message queued, in flight or held, in any partition."""
        ids: set[str] = set()
        for p in range(self.settings.partitions):
            lists = [queue_name(p), inflight_key(p)]
            lists += [
                held_list_key(p, m.decode() if isinstance(m, bytes) else m)
                for m in self.client.smembers(held_set_key(p))
            ]
            lists += [k.decode() for k in self.client.keys(f"{held_set_key(p)}:*")]
            for key in lists:
                for raw in self.client.lrange(key, 0, -1):
                    ids.add(_task_id(raw))
        return ids

    # -- alarms ---------------------------------------------------------------------

    def advance_clock(self, seconds: float) -> None:
        source = clock._source
        assert isinstance(source, clock.VirtualClock)
        source.advance(seconds)

    def dispatch_alarms(self) -> list[tuple[Alarm, str]]:
        """What one beat dispatch does: claims due alarms and queues one message for each.

        Returns each claimed alarm with its firing's task id.
        """
        due = [a for a in claim(self.store, self.settings) if a.status == "scheduled"]
        if due:
            publisher(self.client, self.settings.partitions)(due)
        return [(a, alarm_call(a)[0]) for a in due]

    def firing(self, alarm: Alarm) -> tuple[str, bytes]:
        """The task id and bytes of the message that fires one stored alarm scheduling."""
        task_id, (entity_type, entity_id, msg) = alarm_call(alarm)
        return task_id, celery_message(entity_type, entity_id, msg, task_id, None, True)

    def stored_alarms(self, entity_type: str, entity_id: str) -> list[Alarm]:
        return self.store.list_alarms(entity_type, entity_id)

    def schedule_alarm(self, entity_type: str, entity_id: str, name: str, payload: str) -> None:
        from entities import schedule_alarm

        schedule_alarm(entity_type, entity_id, name, 10.0, payload)

    def cancel_alarm(self, entity_type: str, entity_id: str, name: str) -> None:
        from entities import cancel_alarm

        cancel_alarm(entity_type, entity_id, name)

    # -- records, state, replies ------------------------------------------------------

    def purge_processed(self) -> int:
        """Purges processed records with a retention of 0 (everything the store may drop)."""
        return self.store.purge_processed(0.0)

    def recorded(self, task_ids: list[str]) -> set[str]:
        """Which of ``task_ids`` have a processed record in the store."""
        return set(self.store.processed(task_ids)) if task_ids else set()

    def load(self, entity_type: str, entity_id: str) -> Snapshot | None:
        return self.store.load(entity_type, entity_id)

    def reply(self, task_id: str) -> tuple[str, Any] | None:
        """("ok", value) or ("err", exception type name) from the result backend, or None."""
        return self.replies_of([task_id])[task_id]

    def replies_of(self, task_ids: list[str]) -> dict[str, tuple[str, Any] | None]:
        """:meth:`reply` of each task id, in one round trip."""
        if not task_ids:
            return {}
        prefix = _text(self.backend.task_keyprefix)
        raws = self.client.mget([prefix + t for t in task_ids])
        return {t: _reply(raw) for t, raw in zip(task_ids, raws, strict=True)}

    # -- pause and resume ---------------------------------------------------------------

    def pause_entity(self, entity_type: str, entity_id: str) -> None:
        pause_entity(entity_type, entity_id)

    def resume_entity(self, entity_type: str, entity_id: str) -> None:
        resume_entity(entity_type, entity_id, wait_s=None)

    def pause_partition(self, partition: int) -> None:
        pause_partition(partition)

    def resume_partition(self, partition: int) -> None:
        resume_partition(partition)

    def entity_resumed(self, entity_type: str, entity_id: str) -> bool:
        """True once no message of the entity is held any more."""
        p = self.partition_of(entity_type, entity_id)
        member = f"{entity_type}\x00{entity_id}"
        return not self.client.sismember(held_set_key(p), member) and not self.client.exists(
            held_list_key(p, member)
        )


def _task_id(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reply(raw: bytes | None) -> tuple[str, Any] | None:
    if raw is None:
        return None
    meta = json.loads(raw)
    if meta["status"] == "SUCCESS":
        return ("ok", meta["result"])
    result = meta["result"]
    return ("err", result.get("exc_type") if isinstance(result, dict) else repr(result))
