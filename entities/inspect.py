"""Cluster inspection: who owns which partition, at which epoch, and how deep its queues are.

Reads what the workers publish and nothing else: the partition leases and
queues in Redis, the epochs recorded in the store, and the live-worker
registry with each worker's stats. It takes no lock and changes nothing, so
operators and tests may call it at any time; the answer is a snapshot that is
already ageing when it returns (a lease can change hands a moment later).

A lease's owner and its latest epoch normally name the same worker. They differ
briefly during a claim (the lease is taken before the epoch is recorded) and
after a failover until the next claim; a partition whose lease is free has no
owner, whatever the store last recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import redis

from entities.redis_client import redis_from_url
from entities.routing import (
    KEY_PREFIX,
    inflight_key,
    lease_key,
    partition_for,
    queue_name,
)
from entities.settings import Settings, get_settings
from entities.store import Store

#: Sorted set of live workers; each member's score is when its heartbeat expires, in
#: milliseconds of the Redis server's clock (TIME).
WORKERS_KEY = f"{KEY_PREFIX}.workers"
#: Hash of worker id to the JSON stats the worker last published.
STATS_KEY = f"{KEY_PREFIX}.stats"


def lease_token(worker_id: str, partition: int, claim: int) -> str:
    """The value a worker stores in a partition's lease: unique per claim."""
    return f"{worker_id}|{partition}|{claim}"


def lease_owner(token: bytes | str | None) -> str | None:
    """The worker id inside a lease token (None for a free lease)."""
    if token is None:
        return None
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
    return text.rsplit("|", 2)[0]


@dataclasses.dataclass(frozen=True)
class PartitionStatus:
    """One partition: its lease holder, its latest epoch in the store, its queue depths."""

    partition: int
    owner: str | None  # the worker holding the lease now; None if free
    lease_ttl_ms: int | None  # milliseconds until the lease expires unless renewed
    epoch: int  # the latest claim's epoch, from the store
    epoch_owner: str | None  # the worker that made that claim
    queued: int  # messages waiting in the partition queue
    inflight: int  # messages fetched by an owner and not yet acknowledged

    @property
    def settled(self) -> bool:
        """True when a worker holds the lease and the latest epoch is its own."""
        return self.owner is not None and self.owner == self.epoch_owner


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """One worker as it last reported itself."""

    worker: str
    alive: bool  # its heartbeat has not expired
    partitions: dict[int, int]  # partition -> epoch it serves
    stats: dict[str, Any]  # everything it published (counters, memory, ...)

    @property
    def zombie_events(self) -> int:
        """Commits of this worker rejected because another worker took its partition."""
        return int(self.stats.get("zombie_events", 0))


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """The partitions (in order) and the workers seen at ``at``."""

    partitions: list[PartitionStatus]
    workers: list[WorkerStatus]
    at: dt.datetime

    def owners(self) -> dict[int, str | None]:
        """Partition -> the worker holding its lease (None if free)."""
        return {p.partition: p.owner for p in self.partitions}

    def owned_by(self, worker: str) -> list[int]:
        """The partitions whose lease ``worker`` holds."""
        return [p.partition for p in self.partitions if p.owner == worker]

    def partition_of(self, entity_type: str, entity_id: str) -> PartitionStatus:
        """The status of the partition that serves (``entity_type``, ``entity_id``)."""
        return self.partitions[partition_for(entity_type, entity_id, len(self.partitions))]

    @property
    def unowned(self) -> list[int]:
        """Partitions nobody holds a lease on."""
        return [p.partition for p in self.partitions if p.owner is None]

    @property
    def live_workers(self) -> list[str]:
        """Ids of the workers whose heartbeat is current."""
        return [w.worker for w in self.workers if w.alive]

    def render(self) -> str:
        """A plain-text table for operators."""
        lines = [f"{'part':>4}  {'owner':<40} {'epoch':>6} {'queued':>7} {'inflight':>8}"]
        for p in self.partitions:
            owner = p.owner or "-"
            flag = "" if p.settled or p.owner is None else f"  (epoch by {p.epoch_owner})"
            lines.append(
                f"{p.partition:>4}  {owner:<40} {p.epoch:>6} {p.queued:>7} {p.inflight:>8}{flag}"
            )
        for w in self.workers:
            state = "live" if w.alive else "gone"
            lines.append(
                f"worker {w.worker} ({state}): {len(w.partitions)} partitions, "
                f"zombie events {w.zombie_events}"
            )
        return "\n".join(lines)


def cluster_status(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    client: redis.Redis | None = None,
) -> ClusterStatus:
    """Reads the cluster's partitions and workers (see the module docstring)."""
    settings = settings or get_settings()
    if store is None:
        from entities.client import get_store

        store = get_store()
    own_client = client is None
    r = client if client is not None else redis_from_url(settings.broker_url)
    try:
        partitions = _partitions(r, store, settings.partitions)
        workers = _workers(r)
    finally:
        if own_client:
            r.close()
    return ClusterStatus(partitions, workers, dt.datetime.now(dt.UTC))


def _partitions(r: redis.Redis, store: Store, count: int) -> list[PartitionStatus]:
    with r.pipeline(transaction=False) as pipe:
        for p in range(count):
            pipe.get(lease_key(p))
            pipe.pttl(lease_key(p))
            pipe.llen(queue_name(p))
            pipe.llen(inflight_key(p))
        replies = pipe.execute()
    epochs = store.partition_owners()
    out = []
    for p in range(count):
        token, ttl, queued, inflight = replies[4 * p : 4 * p + 4]
        epoch, epoch_owner = epochs.get(p, (0, None))
        out.append(
            PartitionStatus(
                partition=p,
                owner=lease_owner(token),
                lease_ttl_ms=int(ttl) if token is not None and int(ttl) >= 0 else None,
                epoch=int(epoch),
                epoch_owner=epoch_owner,
                queued=int(queued),
                inflight=int(inflight),
            )
        )
    return out


def _workers(r: redis.Redis) -> list[WorkerStatus]:
    with r.pipeline(transaction=False) as pipe:
        pipe.time()  # heartbeats expire in the server's time, not this host's
        pipe.zrange(WORKERS_KEY, 0, -1, withscores=True)
        pipe.hgetall(STATS_KEY)
        (seconds, micros), beats, stats = pipe.execute()
    now_ms = seconds * 1000 + micros // 1000
    alive = {_text(m) for m, expires in beats if expires > now_ms}
    seen: dict[str, dict[str, Any]] = {}
    for key, raw in stats.items():
        try:
            seen[_text(key)] = json.loads(raw)
        except ValueError:
            seen[_text(key)] = {}
    for worker in alive:
        seen.setdefault(worker, {})
    return [
        WorkerStatus(
            worker=w,
            alive=w in alive,
            partitions={int(p): int(e) for p, e in (s.get("partitions") or {}).items()},
            stats=s,
        )
        for w, s in sorted(seen.items())
    ]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
