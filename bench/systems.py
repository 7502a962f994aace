"""The three systems under measurement, behind one small interface.

``Ours``: `celery -A workers worker`, strict Counter entities in bench.entities.
``HandRolled`` (baseline A) and ``Noop`` (baseline B): bench.baselines.
Each starts its worker, publishes pre-filled messages and makes one
sequential call; everything else in a measurement is shared.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.servers import Servers, redis_client
from bench.traffic import Sent, publish

#: Seconds a worker may take to boot and take its partitions.
BOOT_TIMEOUT_S = 60.0
#: Seconds one sequential call may take.
CALL_TIMEOUT_S = 10.0
#: Lease time-to-live of workers that are frozen while their queues fill: long, so a
#: frozen worker keeps its partitions. The failover measurement uses the default.
FROZEN_LEASE_TTL_S = 300.0
ENTITY_TYPE = "counter"


@dataclasses.dataclass
class Run:
    """What every measurement of one run shares: servers, a Redis client, logs, settings."""

    servers: Servers
    home: Path
    partitions: int
    redis: redis.Redis = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis_client(self.servers.redis_url)

    @property
    def log_dir(self) -> Path:
        """Where worker logs go."""
        return self.home / "logs"

    def entities_env(self, lease_ttl_s: float | None = FROZEN_LEASE_TTL_S) -> dict[str, str]:
        """The environment of our workers (and of this process, for its clients)."""
        env = {
            "ENTITIES_BROKER_URL": self.servers.redis_url,
            "ENTITIES_RESULT_BACKEND": self.servers.redis_url,
            "ENTITIES_DATABASE_URL": self.servers.database_url,
            "ENTITIES_MODULES": "bench.entities",
            "ENTITIES_PARTITIONS": str(self.partitions),
            "ENTITIES_HOME": str(self.home / "entities-home"),
        }
        if lease_ttl_s is not None:
            env["ENTITIES_LEASE_TTL"] = str(lease_ttl_s)
        return env

    def baseline_env(self) -> dict[str, str]:
        """The environment of the baseline workers and their client app."""
        return {"BENCH_BROKER_URL": self.servers.redis_url, "BENCH_PG_DSN": self.servers.libpq_dsn}

    def process_env(self, extra: dict[str, str]) -> dict[str, str]:
        """A subprocess environment: ours, with the repo on the path and ``extra`` on top."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITIES_", "BENCH_"))}
        env["PYTHONPATH"] = str(procs.source_root)
        env.update(extra)
        return env


class System:
    """One system: how to start its worker, pre-fill its queue and make a call."""

    name = ""
    label = ""
    #: True when replies are counter values (the seq-th message replies seq).
    counting = True

    def __init__(self, run: Run) -> None:
        self.run = run

    def start(self, name: str, **kwargs: Any) -> procs.WorkerProcess:
        """Starts one worker process and returns once it consumes."""
        raise NotImplementedError

    def publish(self, entity_ids: Sequence[str]) -> list[Sent]:
        """Publishes one increment per entry of ``entity_ids``, in order."""
        raise NotImplementedError

    def call(self, entity_id: str) -> Any:
        """One sequential round trip: send, wait for the reply."""
        raise NotImplementedError


class Ours(System):
    """Our worker: partition leases, batched strict commits, pipelined replies."""

    name, label = "ours", "ours (strict)"

    def start(
        self,
        name: str,
        lease_ttl_s: float | None = FROZEN_LEASE_TTL_S,
        wait: bool = True,
        **_: Any,
    ) -> procs.WorkerProcess:
        env = self.run.process_env(self.run.entities_env(lease_ttl_s))
        worker = procs.WorkerProcess(
            name, procs.celery_argv("workers", name, "info"), env, self.run.log_dir
        )
        if wait:
            procs.wait_until(
                lambda: (
                    len(procs.owned_by(self.run.redis, self.run.partitions, worker.pid))
                    == self.run.partitions
                ),
                worker,
                BOOT_TIMEOUT_S,
                f"{name} did not own every partition",
            )
        return worker

    def publish(self, entity_ids: Sequence[str]) -> list[Sent]:
        from entities.routing import partition_for, queue_name
        from workers import app, send_to_entity

        partitions = self.run.partitions

        def send(producer: Any, entity_id: str, _seq: int) -> tuple[str, str]:
            msg = {"op": "increment", "args": [1]}
            result = send_to_entity.apply_async((ENTITY_TYPE, entity_id, msg), producer=producer)
            return result.id, queue_name(partition_for(ENTITY_TYPE, entity_id, partitions))

        return publish(app, send, entity_ids)

    def call(self, entity_id: str) -> Any:
        from workers import send_to_entity

        msg = {"op": "increment", "args": [1]}
        return send_to_entity.delay(ENTITY_TYPE, entity_id, msg).get(timeout=CALL_TIMEOUT_S)


class _Baseline(System):
    task_name = ""
    prefetch_multiplier = 4

    def _task(self) -> Any:
        from bench import baselines

        return baselines.app.tasks[self.task_name]

    def start(self, name: str, **_: Any) -> procs.WorkerProcess:
        from bench.baselines import READY_KEY

        env = self.run.process_env(self.run.baseline_env())
        extra = ["-Q", self.task_name, "--prefetch-multiplier", str(self.prefetch_multiplier)]
        worker = procs.WorkerProcess(
            name,
            procs.celery_argv("bench.baselines", name, "warning", extra),
            env,
            self.run.log_dir,
        )
        procs.wait_until(
            lambda: bool(self.run.redis.exists(f"{READY_KEY}{worker.pid}")),
            worker,
            BOOT_TIMEOUT_S,
            f"{name} did not become ready",
        )
        return worker

    def publish(self, entity_ids: Sequence[str]) -> list[Sent]:
        from bench import baselines

        task = self._task()

        def send(producer: Any, entity_id: str, _seq: int) -> tuple[str, str]:
            return task.apply_async((entity_id, 1), producer=producer).id, self.task_name

        return publish(baselines.app, send, entity_ids)

    def call(self, entity_id: str) -> Any:
        return self._task().delay(entity_id, 1).get(timeout=CALL_TIMEOUT_S)


class HandRolled(_Baseline):
    """Baseline A: a Celery task per message, row lock, JSON update, commit."""

    name, label = "handrolled", "A: hand-rolled task"
    task_name = "bench.handrolled"
    prefetch_multiplier = 1


class Noop(_Baseline):
    """Baseline B: a no-op Celery task with Redis results."""

    name, label = "noop", "B: Celery no-op"
    task_name = "bench.noop"
    prefetch_multiplier = 4
    counting = False
