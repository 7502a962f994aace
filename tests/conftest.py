"""Shared fixtures: real servers, a clean store and broker per test, worker processes.

Servers are found or started once, in pytest_configure, before any test module
imports the Celery app, so clients and workers agree on the same settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import servers

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_services: a unit test that needs no clean Redis or Postgres state"
    )
    os.environ["ENTITIES_BROKER_URL"] = servers.redis_url()
    os.environ["ENTITIES_RESULT_BACKEND"] = os.environ["ENTITIES_BROKER_URL"]
    os.environ["ENTITIES_DATABASE_URL"] = servers.postgres_url()
    modules = sorted(f"tests.{p.stem}" for p in Path(__file__).parent.glob("*_entities.py"))
    os.environ["ENTITIES_MODULES"] = ",".join(modules)
    os.environ.setdefault("ENTITIES_PARTITIONS", "16")
    os.environ.setdefault("ENTITIES_LEASE_TTL", "2")
    from entities.migrate import upgrade

    upgrade(os.environ["ENTITIES_DATABASE_URL"])
    from entities.registry import import_modules

    import_modules(modules)  # registers the test entity classes in this process too


@pytest.fixture
def redis_client():  # type: ignore[no-untyped-def]
    from workers.broker import redis_from_url

    client = redis_from_url(os.environ["ENTITIES_BROKER_URL"])
    yield client
    client.close()


@pytest.fixture
def store():  # type: ignore[no-untyped-def]
    from entities.client import get_store

    return get_store()


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empties the entity tables and the test Redis database before a test that uses them."""
    if "no_services" in request.keywords:
        yield
        return
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
    yield


class WorkerProcess:
    """A real `celery -A workers worker` process."""

    def __init__(
        self, env: dict[str, str], name: str, pool: str = "solo", concurrency: int = 1
    ) -> None:
        self.log_path = Path(os.environ.get("PYTEST_WORKER_LOGS", "/tmp")) / f"{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-l",
                "info",
                "-n",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(30)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Workers:
    """Starts worker processes for one test and stops them all at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.procs: list[WorkerProcess] = []
        self.tmp_path = tmp_path

    def start(
        self,
        n: int = 1,
        wait: bool = True,
        pool: str = "solo",
        concurrency: int = 1,
        **env_overrides: str,
    ) -> list[WorkerProcess]:
        env = {**os.environ, **env_overrides}
        started = []
        for _ in range(n):
            name = f"w{len(self.procs) + 1}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
            proc = WorkerProcess(env, name, pool, concurrency)
            self.procs.append(proc)
            started.append(proc)
        if wait:
            self.wait_owned()
        return started

    def wait_owned(self, timeout_s: float = 30.0) -> None:
        """Waits until every partition has a live owner."""
        from workers.broker import PartitionQueues, redis_from_url

        partitions = int(os.environ["ENTITIES_PARTITIONS"])
        client = redis_from_url(os.environ["ENTITIES_BROKER_URL"])
        queues = PartitionQueues(client)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for proc in self.procs:
                    if not proc.alive() and proc.proc.returncode not in (None, -9, -15, 0):
                        raise RuntimeError(f"worker died:\n{proc.output()[-3000:]}")
                holders = queues.holders(range(partitions))
                if all(h is not None for h in holders.values()):
                    return
                time.sleep(0.1)
        finally:
            client.close()
        logs = "\n".join(p.output()[-2000:] for p in self.procs)
        raise TimeoutError(f"partitions not all owned within {timeout_s}s\n{logs}")

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()
