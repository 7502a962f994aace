"""The partition service of one worker process: leases, fair sharing and runners.

Every worker heartbeats into a registry of live workers and takes a fair share
(ceil(partitions / live workers)) of the partitions: it acquires free leases up
to its share and hands back any above it, finishing and acknowledging the batch
in hand first, so the next owner reads in order. Each acquired lease is
recorded as a new epoch in the store; every commit is fenced by that epoch.
A lease that could not be renewed is abandoned at once: whatever the runner
still tries to commit is rejected by the epoch fence.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import zlib
from typing import Any

from entities import registry
from entities.routing import KEY_PREFIX, TASK_NAME
from entities.settings import Settings
from entities.store import OutboxMessage, SQLStore, Store
from workers.broker import PartitionQueues, redis_from_url
from workers.processor import Processor
from workers.replies import ReplyWriter
from workers.runner import PartitionRunner

log = logging.getLogger(__name__)

WORKERS_KEY = f"{KEY_PREFIX}.workers"
STATS_KEY = f"{KEY_PREFIX}.stats"
#: Seconds between purges of expired processed-message records.
PURGE_EVERY_S = 600.0


class PartitionService:
    """Owns partitions for one worker process and runs a PartitionRunner for each."""

    def __init__(
        self, settings: Settings, app: Any, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.app = app
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = store or SQLStore(settings.database_url, pool_size=settings.partitions + 4)
        self.redis = redis_from_url(settings.broker_url, health_check_interval=30)
        self.queues = PartitionQueues(self.redis)
        self.replies = ReplyWriter(app.backend)
        self.runners: dict[int, PartitionRunner] = {}
        self.processors: dict[int, Processor] = {}
        self.zombie_events = 0
        self._claims = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="entities-leases", daemon=True)
        self._last_purge = 0.0

    @property
    def ttl_ms(self) -> int:
        """The lease time-to-live in milliseconds."""
        return int(self.settings.lease_ttl_s * 1000)

    def start(self) -> None:
        """Checks the schema and settings, then starts taking partitions."""
        registry.import_modules(self.settings.modules)
        self.store.check_schema()
        self.store.ensure_partitions(self.settings.partitions)
        log.info("entities worker %s serving types: %s", self.worker_id,
                 ", ".join(registry.names()) or "none")
        self._heartbeat()
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finishes every batch in hand, releases every lease and leaves the registry."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop()
        for runner in runners:
            runner.join(timeout_s)
        try:
            self.redis.zrem(WORKERS_KEY, self.worker_id)
            self.redis.hdel(STATS_KEY, self.worker_id)
        except Exception:
            log.warning("could not leave the worker registry", exc_info=True)

    def owned(self) -> dict[int, int]:
        """The partitions this worker serves now, with their epochs."""
        with self._lock:
            return {p: r.epoch for p, r in self.runners.items() if not r.stopping}

    # -- the lease loop ---------------------------------------------------------

    def _loop(self) -> None:
        interval = self.settings.lease_ttl_s / 4
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._heartbeat()
                self._renew()
                self._rebalance()
                self._publish_stats()
                self._purge()
            except Exception:
                log.warning("lease loop error; retrying", exc_info=True)
            self._stopping.wait(max(0.0, interval - (time.monotonic() - started)))

    def _heartbeat(self) -> int:
        now_ms = int(time.time() * 1000)
        with self.redis.pipeline() as pipe:
            pipe.zadd(WORKERS_KEY, {self.worker_id: now_ms + self.ttl_ms})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_ms)
            pipe.zcard(WORKERS_KEY)
            *_, live = pipe.execute()
        return max(1, int(live))

    def _renew(self) -> None:
        with self._lock:
            tokens = {p: r.token for p, r in self.runners.items()}
        for partition, held in self.queues.renew(tokens, self.ttl_ms).items():
            if not held:
                log.error("partition %s: lease lost; abandoning it", partition)
                with self._lock:
                    runner = self.runners.get(partition)
                if runner is not None:
                    runner.stop()

    def _rebalance(self) -> None:
        live = self._heartbeat()
        share = math.ceil(self.settings.partitions / live)
        with self._lock:
            active = [p for p, r in self.runners.items() if not r.stopping]
        if len(active) > share:
            for partition in sorted(active)[share:]:
                log.info("partition %s: handing over (share is %s)", partition, share)
                self.runners[partition].stop()
            return
        if len(active) >= share:
            return
        holders = self.queues.holders(range(self.settings.partitions))
        free = [p for p, h in holders.items() if h is None and p not in self.runners]
        # Start at a worker-specific offset so simultaneous starters spread out.
        offset = zlib.crc32(self.worker_id.encode()) % max(1, len(free))
        for partition in free[offset:] + free[:offset]:
            if len(active) >= share or self._stopping.is_set():
                break
            if self._claim(partition):
                active.append(partition)

    def _claim(self, partition: int) -> bool:
        token = f"{self.worker_id}:{partition}:{next(self._claims)}"
        if not self.queues.acquire(partition, token, self.ttl_ms):
            return False
        try:
            epoch = self.store.claim_partition(partition, self.worker_id)
        except Exception:
            self.queues.release(partition, token)
            raise
        processor = self.processors.setdefault(
            partition, Processor(partition, self.store, self.settings, self._resident_share)
        )
        processor.reset()
        runner = PartitionRunner(
            partition, token, epoch, self.queues, processor, self.replies, self._publish,
            self.settings.batch_size, self._on_runner_exit,
        )
        with self._lock:
            self.runners[partition] = runner
        runner.start()
        log.info("partition %s: owned at epoch %s", partition, epoch)
        return True

    def _resident_share(self) -> int:
        """Each owned partition's share of the worker's resident-entity bound."""
        return max(1, self.settings.max_resident // max(1, len(self.runners)))

    def _publish(self, outbox: list[OutboxMessage]) -> None:
        """Publishes committed outbox messages, keeping their ids as task ids."""
        for m in outbox:
            self.app.send_task(
                TASK_NAME, args=[m.entity_type, m.entity_id, m.msg], task_id=m.message_id,
                ignore_result=True,
            )

    def stats(self) -> dict[str, Any]:
        """What this worker holds now: partitions, entities in memory, counters."""
        with self._lock:
            runners = dict(self.runners)
        resident = hibernated = pending = applied = conflicts = 0
        for partition, runner in runners.items():
            r, h = self.processors[partition].memory.counts()
            resident, hibernated = resident + r, hibernated + h
            pending += runner.pending
            applied += runner.applied
            conflicts += self.processors[partition].conflicts
        return {
            "worker": self.worker_id,
            "partitions": {str(p): r.epoch for p, r in sorted(runners.items())},
            "resident": resident,
            "hibernated": hibernated,
            "unacked": pending,
            "applied": applied,
            "conflicts": conflicts,
            "zombie_events": self.zombie_events,
            "at": time.time(),
        }

    def _publish_stats(self) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(STATS_KEY, self.worker_id, json.dumps(self.stats()))
            pipe.execute()

    def _on_runner_exit(self, runner: PartitionRunner, reason: str) -> None:
        if reason == "zombie":
            self.zombie_events += 1
        runner.processor.reset()
        if reason == "stopped":
            try:
                self.queues.release(runner.partition, runner.token)
            except Exception:
                log.warning("partition %s: could not release the lease", runner.partition)
        with self._lock:
            if self.runners.get(runner.partition) is runner:
                del self.runners[runner.partition]
        log.info("partition %s: released (%s)", runner.partition, reason)

    def _purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.settings.dedup_retention_s)
        removed = self.store.purge_processed(cutoff)
        if removed:
            log.info("purged %s processed-message records older than %s", removed, cutoff)
