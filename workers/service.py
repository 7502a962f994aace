"""The partition service of one worker process: leases, fair sharing and runners.

Every worker heartbeats into a registry of live workers and takes a fair share
(ceil(partitions / live workers)) of the partitions: it acquires free leases up
to its share and hands back any above it, finishing and acknowledging the batch
in hand first, so the next owner reads in order. Each acquired lease is
recorded as a new epoch in the store; every commit is fenced by that epoch.

Two threads keep this going. The heartbeat thread only talks to Redis: it
renews the registry entry and every lease held (or being claimed) each
``lease_ttl_s / 4``, so a slow database or a long claim never lets a lease
lapse. The balance thread does everything that may block: claims (a row lock
in the store), hand-backs, stats and purges.

A lease that could not be renewed is abandoned at once: whatever the runner
still tries to commit is rejected by the epoch fence, logged as a zombie-writer
event and counted in the stats. A worker paused inside a database transaction
(SIGSTOP, a long GC) holds the epoch row's share lock; its Postgres session is
ended after ``lease_ttl_s`` idle in that transaction, so the next claim waits
at most that long.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import socket
import threading
import time
import zlib
from typing import Any

import sqlalchemy as sa

from entities import registry
from entities.inspect import STATS_KEY, WORKERS_KEY, lease_token
from entities.messages import SENDER_HEADER
from entities.routing import TASK_NAME
from entities.settings import Settings
from entities.store import OutboxMessage, SQLStore, Store
from entities.store.sql import make_engine
from workers.broker import PartitionQueues, redis_from_url
from workers.forwarder import DefaultQueueForwarder
from workers.links import LinkFirer
from workers.processor import Processor
from workers.replies import ReplyWriter
from workers.runner import PartitionRunner

log = logging.getLogger(__name__)

__all__ = ["STATS_KEY", "WORKERS_KEY", "PartitionService"]

#: Seconds between purges of expired processed-message records.
PURGE_EVERY_S = 600.0
#: Longest pause of the balance thread between looks for free partitions.
BALANCE_EVERY_MAX_S = 0.25
#: Seconds between probes of the state store by the balance thread.
STORE_PROBE_EVERY_S = 1.0
#: Lease TTLs the store may stay unreachable before this worker hands its partitions back.
STORE_GRACE_TTLS = 3.0


@dataclasses.dataclass
class Counters:
    """What happened to this worker's partitions since it started (published in stats)."""

    claims: int = 0  # partitions taken (each a new epoch)
    handoffs: int = 0  # partitions handed back above the fair share
    leases_lost: int = 0  # leases found taken or expired at renewal
    zombie_events: int = 0  # commits rejected by the epoch fence: another owner took over


def worker_database_url(url: str, lease_ttl_s: float) -> str:
    """The store URL for a worker: Postgres sessions end when idle in a transaction too long.

    A paused worker's open transaction would otherwise hold the partition's
    epoch row and stall the next owner's claim for as long as the pause lasts.
    Connecting also times out (after the lease TTL, at least 2 s), so a worker
    cut off from Postgres notices it instead of waiting on the OS.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    if "connect_timeout" not in parsed.query:  # libpq's default waits on the OS (minutes)
        parsed = parsed.update_query_dict({"connect_timeout": str(max(2, int(lease_ttl_s)))})
    timeout_ms = max(1000, int(lease_ttl_s * 1000))
    option = f"-c idle_in_transaction_session_timeout={timeout_ms}"
    existing = parsed.query.get("options")
    if isinstance(existing, tuple):
        existing = " ".join(existing)
    if existing and "idle_in_transaction_session_timeout" in existing:
        return parsed.render_as_string(hide_password=False)
    options = f"{existing} {option}" if existing else option
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


class PartitionService:
    """Owns partitions for one worker process and runs a PartitionRunner for each."""

    def __init__(self, settings: Settings, app: Any, store: Store | None = None) -> None:
        self.settings = settings
        self.app = app
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.store = store or SQLStore(
            make_engine(
                worker_database_url(settings.database_url, settings.lease_ttl_s),
                pool_size=settings.partitions + 4,
                pre_ping=False,  # a failed batch is retried on a fresh connection anyway
            )
        )
        # A hung socket must not outlive a lease; blocking waits last WAIT_S (< 1 s).
        timeout_s = max(2.0, settings.lease_ttl_s)
        self.redis = redis_from_url(
            settings.broker_url,
            health_check_interval=30,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.queues = PartitionQueues(self.redis)
        self.replies = ReplyWriter(app.backend)
        self.links = LinkFirer(app, self.redis)
        self.runners: dict[int, PartitionRunner] = {}
        self.processors: dict[int, Processor] = {}
        self.counters = Counters()
        self.live = 1  # live workers seen at the last heartbeat
        self._claiming: dict[int, str] = {}  # lease taken, epoch not yet recorded
        self._lost: set[str] = set()  # tokens of runners told their lease is gone
        self._claims = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # no new claims; runners finishing
        self._stopped = threading.Event()  # runners done; heartbeats end
        self._beat = threading.Thread(target=self._beat_loop, name="entities-beat", daemon=True)
        self._balance = threading.Thread(
            target=self._balance_loop, name="entities-balance", daemon=True
        )
        self._last_purge = 0.0  # purge once soon after start
        self.store_ok = True
        self.withdrawn = False  # out of the registry while the store is unreachable
        self._store_ok_at = self._store_probed_at = time.monotonic()
        # Every worker runs one; the one holding the default queue's lease forwards it.
        self.forwarder = DefaultQueueForwarder(
            self.redis, f"{self.worker_id}|default", settings, app, self.store, self.replies
        )

    @property
    def ttl_ms(self) -> int:
        """The lease time-to-live in milliseconds."""
        return int(self.settings.lease_ttl_s * 1000)

    @property
    def zombie_events(self) -> int:
        """Commits rejected because another worker had taken the partition."""
        return self.counters.zombie_events

    def start(self) -> None:
        """Checks the schema and settings, then starts taking partitions."""
        registry.import_modules(self.settings.modules)
        self.store.check_schema()
        self.store.ensure_partitions(self.settings.partitions)
        log.info(
            "entities worker %s serving types: %s",
            self.worker_id,
            ", ".join(registry.names()) or "none",
        )
        self.live = self._heartbeat()
        self._beat.start()
        self._balance.start()
        self.forwarder.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finishes every batch in hand, releases every lease and leaves the registry.

        Leaves the registry first so the others take the released partitions at
        once; keeps renewing the leases until each runner has acknowledged its
        last batch and released its lease.
        """
        self._stopping.set()
        self.forwarder.stop()
        try:
            self.redis.zrem(WORKERS_KEY, self.worker_id)
        except Exception:
            log.warning("could not leave the worker registry", exc_info=True)
        if self.forwarder.is_alive():
            self.forwarder.join(timeout_s)
        if self._balance.is_alive():
            self._balance.join(timeout_s)
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop()
        for runner in runners:
            runner.join(timeout_s)
        self._stopped.set()
        if self._beat.is_alive():
            self._beat.join(timeout_s)
        try:
            self.redis.zrem(WORKERS_KEY, self.worker_id)
            self.redis.hdel(STATS_KEY, self.worker_id)
        except Exception:
            log.warning("could not leave the worker registry", exc_info=True)

    def owned(self) -> dict[int, int]:
        """The partitions this worker serves now, with their epochs."""
        with self._lock:
            return {p: r.epoch for p, r in self.runners.items() if not r.stopping}

    # -- the heartbeat thread: registry entry and lease renewal ------------------

    def _beat_loop(self) -> None:
        interval = self.settings.lease_ttl_s / 4
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                if not self._stopping.is_set() and not self.withdrawn:
                    self.live = self._heartbeat()
                self._renew()
            except Exception:
                log.warning("heartbeat failed; retrying", exc_info=True)
            self._stopped.wait(max(0.0, interval - (time.monotonic() - started)))

    def _heartbeat(self) -> int:
        """Marks this worker live for one TTL and drops expired entries; returns the live count."""
        return max(1, self.queues.heartbeat(self.worker_id, self.ttl_ms))

    def _renew(self) -> None:
        with self._lock:
            tokens = {p: r.token for p, r in self.runners.items()}
            tokens.update(self._claiming)
        for partition, held in self.queues.renew(tokens, self.ttl_ms).items():
            if held:
                continue
            with self._lock:
                runner = self.runners.get(partition)
            if runner is None or runner.token != tokens[partition]:
                continue  # a claim in progress: _claim sees the lease gone at its first fetch
            with self._lock:
                if runner.token in self._lost:
                    continue
                self._lost.add(runner.token)
            self.counters.leases_lost += 1
            log.error("partition %s: lease lost (epoch %s); abandoning it", partition, runner.epoch)
            runner.stop()

    # -- the balance thread: claims, hand-backs, stats, purges ---------------------

    def _balance_loop(self) -> None:
        interval = min(self.settings.lease_ttl_s / 4, BALANCE_EVERY_MAX_S)
        backoff = interval
        # One beat first, so workers started together see each other before claiming.
        self._stopping.wait(self.settings.lease_ttl_s / 4)
        while not self._stopping.is_set():
            try:
                if self._store_reachable():
                    self._rebalance()
                    self._purge()
                backoff = interval
            except Exception:
                log.warning("rebalance failed; retrying in %.2fs", backoff, exc_info=True)
                backoff = min(backoff * 2, self.settings.lease_ttl_s)
            try:
                self._publish_stats()
            except Exception:
                log.warning("could not publish stats", exc_info=True)
            self._stopping.wait(backoff)

    def _store_reachable(self) -> bool:
        """Probes the store now and then; hands every partition back once it has been
        unreachable for STORE_GRACE_TTLS lease TTLs, so workers that can reach it serve them
        (a worker cut off from Postgres alone would otherwise hold its leases and stall)."""
        now = time.monotonic()
        if now - self._store_probed_at < STORE_PROBE_EVERY_S:
            return self.store_ok
        self._store_probed_at = now
        try:
            self.store.partition_owners()
        except Exception as exc:
            self.store_ok = False
            down_s = now - self._store_ok_at
            if down_s > STORE_GRACE_TTLS * self.settings.lease_ttl_s:
                self._withdraw(down_s, exc)
            return False
        if self.withdrawn:
            log.warning("state store reachable again; rejoining the workers")
            self.withdrawn = False
        self.store_ok = True
        self._store_ok_at = now
        return True

    def _withdraw(self, down_s: float, exc: BaseException) -> None:
        """Hands every partition back and leaves the registry, so the fair share of the
        workers that can reach the store grows to cover them; heartbeats resume once the
        store answers again."""
        with self._lock:
            runners = [r for r in self.runners.values() if not r.stopping]
        if runners or not self.withdrawn:
            log.error(
                "state store unreachable for %.1fs (%s); handing back %s partitions",
                down_s,
                exc,
                len(runners),
            )
        self.withdrawn = True
        self.redis.zrem(WORKERS_KEY, self.worker_id)
        for runner in runners:
            runner.stop()

    def share(self) -> int:
        """This worker's fair share of the partitions: ceil(partitions / live workers)."""
        return math.ceil(self.settings.partitions / max(1, self.live))

    def _count_live(self) -> int:
        """Workers whose heartbeat has not expired, counted now (a dead one drops out as
        soon as its entry expires, which is when its leases expire too)."""
        return max(1, self.queues.live_workers())

    def _rebalance(self) -> None:
        self.live = self._count_live()
        share = self.share()
        with self._lock:
            active = sorted(p for p, r in self.runners.items() if not r.stopping)
            busy = set(self.runners)
        if len(active) > share:
            for partition in active[share:]:
                with self._lock:
                    runner = self.runners.get(partition)
                if runner is not None and not runner.stopping:
                    log.info("partition %s: handing over (share is %s)", partition, share)
                    self.counters.handoffs += 1
                    runner.stop()
            return
        if len(active) >= share:
            return
        holders = self.queues.holders(range(self.settings.partitions))
        free = [p for p, h in holders.items() if h is None and p not in busy]
        # Start at a worker-specific offset so simultaneous starters spread out.
        offset = zlib.crc32(self.worker_id.encode()) % max(1, len(free))
        wanted = (free[offset:] + free[:offset])[: share - len(active)]
        if wanted and not self._stopping.is_set():
            self._claim(wanted)

    def _claim(self, partitions: list[int]) -> list[int]:
        """Takes the leases it can of ``partitions``, records them as new epochs in one
        transaction, and starts a runner for each; returns the partitions taken."""
        tokens = {p: lease_token(self.worker_id, p, next(self._claims)) for p in partitions}
        taken = self.queues.acquire_many(tokens, self.ttl_ms)
        if not taken:
            return []
        with self._lock:
            for p in taken:
                self._claiming[p] = tokens[p]  # renewed by the heartbeat from now on
        try:
            # Waits for (and then fences) every commit of the previous owners.
            epochs = self.store.claim_partitions(taken, self.worker_id)
        except Exception:
            with self._lock:
                for p in taken:
                    self._claiming.pop(p, None)
            for p in taken:
                self.queues.release(p, tokens[p])
            raise
        # Every runner's thread starts before any of them works: a thread's start waits
        # for it to run, which takes long once earlier runners keep the GIL busy.
        gate = threading.Event()
        try:
            for partition in taken:
                self._start_runner(partition, tokens[partition], epochs[partition], gate)
        finally:
            gate.set()
        return taken

    def _start_runner(self, partition: int, token: str, epoch: int, gate: threading.Event) -> None:
        processor = self.processors.get(partition)
        if processor is None:
            processor = Processor(partition, self.store, self.settings, self._resident_share)
            self.processors[partition] = processor
        processor.reset()
        runner = PartitionRunner(
            partition,
            token,
            epoch,
            self.queues,
            processor,
            self.replies,
            self._publish,
            self.settings.batch_size,
            self._on_runner_exit,
            gate,
            self.links,
        )
        with self._lock:
            self._claiming.pop(partition, None)
            self.runners[partition] = runner
        self.counters.claims += 1
        runner.start()
        log.info("partition %s: owned at epoch %s", partition, epoch)

    def _resident_share(self) -> int:
        """Each owned partition's share of the worker's resident-entity bound."""
        return max(1, self.settings.max_resident // max(1, len(self.runners)))

    def _publish(self, outbox: list[OutboxMessage]) -> None:
        """Publishes committed outbox messages, keeping their ids as task ids."""
        for m in outbox:
            self.app.send_task(
                TASK_NAME,
                args=[m.entity_type, m.entity_id, m.msg],
                task_id=m.message_id,
                ignore_result=True,
                headers={SENDER_HEADER: list(m.sender)} if m.sender else None,
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
        # Counted by every processor this worker ran, owned now or not: a counter only grows.
        refused = sum(p.sends_refused for p in list(self.processors.values()))
        return {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "partitions": {str(p): r.epoch for p, r in sorted(runners.items())},
            "live_workers": self.live,
            "store_ok": self.store_ok,
            "withdrawn": self.withdrawn,
            "share": self.share(),
            "resident": resident,
            "hibernated": hibernated,
            "unacked": pending,
            "applied": applied,
            "conflicts": conflicts,
            "forwarding": self.forwarder.holding,
            "forwarded": self.forwarder.forwarded,
            "sends_refused": refused,
            **dataclasses.asdict(self.counters),
            "at": time.time(),
        }

    def _publish_stats(self) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(STATS_KEY, self.worker_id, json.dumps(self.stats()))
            pipe.zrange(WORKERS_KEY, 0, -1)
            pipe.hkeys(STATS_KEY)
            _, live, published = pipe.execute()
        gone = set(published) - set(live) - {self.worker_id.encode()}
        if gone:  # stats of workers killed without a goodbye
            self.redis.hdel(STATS_KEY, *gone)

    def _on_runner_exit(self, runner: PartitionRunner, reason: str) -> None:
        if reason == "zombie":
            self.counters.zombie_events += 1
        runner.processor.reset()
        try:
            self.queues.release(runner.partition, runner.token)  # only if still ours
        except Exception:
            log.warning("partition %s: could not release the lease", runner.partition)
        with self._lock:
            self._lost.discard(runner.token)
            if self.runners.get(runner.partition) is runner:
                del self.runners[runner.partition]
        log.info("partition %s: released (%s)", runner.partition, reason)

    def _purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        # Only records whose message was acknowledged at least the retention ago (the
        # partitions' watermarks say when): never one whose message may come again.
        retention_s = self.settings.dedup_retention_s
        removed = self.store.purge_processed(retention_s)
        if removed:
            log.info(
                "purged %s processed-message records acknowledged over %ss ago",
                removed,
                retention_s,
            )
