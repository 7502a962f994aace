"""Broker and database faults: Redis and Postgres restart mid-run; nothing is lost.

These tests restart servers, so they never touch the shared ones: each module
run starts its own redis-server (AOF, fsync on every write) on a free port and
its own embedded Postgres, points the workers at them through ENTITIES_*, and
drives the load from a separate client process (``tests.test_cluster_kit
drive``), since this process's Celery app is bound to the shared servers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from entities.embedded import ensure_postgres, redis_server_binary, stop_postgres
from entities.inspect import ClusterStatus, cluster_status
from entities.migrate import upgrade
from entities.settings import from_env
from entities.store import SQLStore
from tests.lifecycle import eventually
from tests.test_cluster_kit import check_exact, pid_of

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 16
#: Seconds a crashed server stays down: longer than the lease TTL (2 s), so every lease
#: lapses during a Redis outage and the partitions are claimed again afterwards.
OUTAGE_S = 2.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on a free port, with every write in its AOF before the reply."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = open(self.home / "redis.log", "ab")  # noqa: SIM115 (the server holds it)
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.home),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port)
        eventually(lambda: _pings(client), timeout_s=20, interval_s=0.05)
        client.close()

    def crash(self) -> None:
        """Kills the server with SIGKILL (what the AOF has is what survives)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class PrivatePostgres:
    """An embedded Postgres of our own, reached on a unix socket in its data directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.admin_url = ensure_postgres(home)
        self.url = ""

    def fresh_database(self, name: str) -> str:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.url = (
            sa.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        )
        upgrade(self.url)
        return self.url

    def crash(self) -> None:
        """Stops the server the way a crash does (immediate shutdown: no checkpoint)."""
        pid = int((self.home / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, "Postgres did not stop"
            time.sleep(0.05)

    def start(self) -> None:
        ensure_postgres(self.home)

    def stop(self) -> None:
        stop_postgres(self.home)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Servers:
    """Our own Redis and Postgres, and the ENTITIES_* settings that point at them."""

    def __init__(self, home: Path) -> None:
        (home / "redis").mkdir()
        self.redis = PrivateRedis(home / "redis")
        self.postgres = PrivatePostgres(home / "pg")
        self.env: dict[str, str] = {}

    def reset(self, name: str) -> dict[str, str]:
        """A fresh database and an empty Redis; returns the environment for processes."""
        redis.Redis(port=self.redis.port).flushall()
        url = self.postgres.fresh_database(name)
        self.env = {
            "ENTITIES_BROKER_URL": self.redis.url,
            "ENTITIES_RESULT_BACKEND": self.redis.url,
            "ENTITIES_DATABASE_URL": url,
            "ENTITIES_PARTITIONS": str(PARTITIONS),
            "ENTITIES_LEASE_TTL": "2",
        }
        return self.env

    def status(self, store: SQLStore) -> ClusterStatus:
        return cluster_status(from_env({**os.environ, **self.env}), store=store)

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()


class Relay:
    """A TCP front for Postgres's unix socket that can be cut (connections refused and
    dropped) and restored, to cut one worker off the database while others still reach it."""

    def __init__(self, database_url: str) -> None:
        url = sa.make_url(database_url)
        self.socket_path = f"{url.query['host']}/.s.PGSQL.{url.port or 5432}"
        self.url = url.set(host="127.0.0.1", port=_free_port(), query={}).render_as_string(
            hide_password=False
        )
        self.port = int(sa.make_url(self.url).port or 0)
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if listener is not self.listener:  # accepted while being cut
                client.close()
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.socket_path)
            self.pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            listener.close()
        for pair in self.pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.pairs.clear()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    own = Servers(tmp_path_factory.mktemp("faults"))
    yield own
    own.stop()


class Driver:
    """The client process: sends a Load and collects every reply (see tests.test_cluster_kit)."""

    def __init__(
        self, env: dict[str, str], tmp: Path, entities: int, messages: int, duration_s: float
    ) -> None:
        self.progress = tmp / "progress"
        self.out = tmp / "replies.json"
        self.log = open(tmp / "driver.log", "w")  # noqa: SIM115 (closed in result)
        self.messages = messages
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.test_cluster_kit",
                "drive",
                "--entities",
                str(entities),
                "--messages",
                str(messages),
                "--duration",
                str(duration_s),
                "--timeout",
                "180",
                "--progress",
                str(self.progress),
                "--out",
                str(self.out),
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def sent(self) -> int:
        try:
            return int(self.progress.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def wait_sent(self, fraction: float) -> None:
        eventually(
            lambda: self.sent() >= self.messages * fraction or self.proc.poll() is not None,
            timeout_s=120,
            interval_s=0.05,
        )

    def result(self) -> dict[str, Any]:
        self.proc.wait(300)
        self.log.close()
        log = Path(self.log.name).read_text()
        assert self.proc.returncode == 0, log[-3000:]
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data


def start_cluster(workers: Any, servers: Servers, store: SQLStore, n: int) -> list[Any]:
    procs = workers.start(n, wait=False, **servers.env)
    eventually(
        lambda: (s := servers.status(store)) and not s.unowned and len(s.live_workers) == n,
        timeout_s=60,
    )
    return list(procs)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long a faulty run is and how often the server goes down."""

    restarts: int
    entities: int
    messages: int
    duration_s: float


PLANS = [
    pytest.param(Plan(1, 16, 160, 4.0), id="short"),
    pytest.param(Plan(3, 50, 2000, 24.0), id="long", marks=pytest.mark.slow),
]


def run_with_faults(
    workers: Any, servers: Servers, tmp_path: Path, fault: str, plan: Plan
) -> ClusterStatus:
    """Streams a load through two workers while ``fault`` ("redis" or "postgres") crashes
    and restarts; then checks every reply and count and that the workers carried on."""
    servers.reset(f"faults_{fault}")
    store = SQLStore(servers.env["ENTITIES_DATABASE_URL"])
    try:
        procs = start_cluster(workers, servers, store, 2)
        driver = Driver(servers.env, tmp_path, plan.entities, plan.messages, plan.duration_s)
        server = servers.redis if fault == "redis" else servers.postgres
        for i in range(plan.restarts):
            driver.wait_sent((i + 1) / (plan.restarts + 1))
            server.crash()
            time.sleep(OUTAGE_S)
            server.start()
        data = driver.result()
        check_exact(data["replies"], "tally", store.load)
        assert sum(len(r) for r in data["replies"].values()) == plan.messages
        for proc in procs:
            assert proc.alive(), proc.output()[-3000:]
            assert "Unrecoverable error" not in proc.output()
        status = eventually(
            lambda: (
                (s := servers.status(store)) and not s.unowned and len(s.live_workers) == 2 and s
            ),
            timeout_s=60,
        )
        assert sum(p.queued + p.inflight for p in status.partitions) == 0
        return status
    finally:
        store.close()


@pytest.mark.parametrize("plan", PLANS)
def test_redis_crash_and_restart_mid_run_loses_nothing(
    workers,
    servers,
    tmp_path,
    plan: Plan,  # type: ignore[no-untyped-def]
) -> None:
    """Given two workers on a Redis with AOF, when Redis is killed with SIGKILL mid-run and
    restarted after every lease has lapsed, then the workers reconnect, claim the partitions
    again and carry on; every accepted message is answered, and each entity replied 1..n
    with a committed count of n."""
    status = run_with_faults(workers, servers, tmp_path, "redis", plan)
    claims = sum(int(w.stats.get("claims", 0)) for w in status.workers if w.alive)
    assert claims >= PARTITIONS * (plan.restarts + 1)


@pytest.mark.parametrize("plan", PLANS)
def test_postgres_crash_and_restart_mid_run_loses_nothing(
    workers,
    servers,
    tmp_path,
    plan: Plan,  # type: ignore[no-untyped-def]
) -> None:
    """Given two workers, when Postgres crashes (immediate shutdown) and restarts mid-run,
    then the workers reconnect and carry on, every caller gets its reply, and nothing
    committed is lost: each entity replied 1..n with a committed count of n."""
    run_with_faults(workers, servers, tmp_path, "postgres", plan)


def test_a_worker_cut_off_from_postgres_hands_its_partitions_to_one_that_is_not(
    workers,
    servers,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Given two workers sharing the partitions, when one loses Postgres (but not Redis),
    then after three lease TTLs it hands its partitions back and leaves the registry, the
    other serves every partition and every caller gets an exact reply; once Postgres is
    back the cut-off worker rejoins and the partitions are shared again."""
    servers.reset("faults_cutoff")
    relay = Relay(servers.env["ENTITIES_DATABASE_URL"])
    store = SQLStore(servers.env["ENTITIES_DATABASE_URL"])
    try:
        (cut_off,) = workers.start(
            1, wait=False, **{**servers.env, "ENTITIES_DATABASE_URL": relay.url}
        )
        eventually(lambda: not servers.status(store).unowned, timeout_s=60)
        (healthy,) = workers.start(1, wait=False, **servers.env)
        eventually(
            lambda: len({p.owner for p in servers.status(store).partitions}) == 2, timeout_s=60
        )
        relay.cut()
        driver = Driver(servers.env, tmp_path, 32, 160, 2.0)
        data = driver.result()
        check_exact(data["replies"], "tally", store.load)
        # The cut-off worker hands back within three lease TTLs of losing Postgres, which
        # may end after the load does on a busy machine: wait for it.
        eventually(
            lambda: {pid_of(p.owner) for p in servers.status(store).partitions} == {healthy.pid},
            timeout_s=30,
        )
        assert "handing back" in cut_off.output()

        relay.restore()
        eventually(
            lambda: (
                {pid_of(p.owner) for p in servers.status(store).partitions}
                == {healthy.pid, cut_off.pid}
            ),
            timeout_s=60,
        )
        assert cut_off.alive() and healthy.alive()
    finally:
        relay.cut()
        store.close()
