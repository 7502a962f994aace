"""The servers a run uses: Redis DB 7 and Postgres database ``entities_bench``, or embedded ones.

A run owns its Redis database and its Postgres database outright: the Redis
database is flushed before every measurement and the Postgres database is
dropped, re-created and migrated at the start of every run. When nothing
answers on the usual local ports, the embedded servers of the ``embedded``
extra are started under the run's home directory.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import redis
import sqlalchemy as sa

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE_NAME = "entities_bench"
#: The table of baseline A, the hand-rolled entity task (not part of our schema).
HANDROLLED_TABLE = "bench_handrolled"


@dataclasses.dataclass(frozen=True)
class Servers:
    """Where a run's broker, result backend and state store live."""

    redis_url: str
    database_url: str
    embedded: tuple[str, ...] = ()

    @property
    def libpq_dsn(self) -> str:
        """The database URL in the form psycopg (libpq) accepts."""
        url = sa.engine.make_url(self.database_url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_client(url: str) -> redis.Redis:
    """A redis-py client for a kombu Redis URL (redis:// or redis+socket://).

    Not workers.broker.redis_from_url: importing ``workers`` reads the settings,
    which must wait until the run has put its URLs in the environment.
    """
    if url.startswith("redis+socket://"):
        parsed = urlparse(url)
        return redis.Redis(unix_socket_path=unquote(parsed.path))
    return redis.Redis.from_url(url)


def resolve(redis_url: str | None, database_url: str | None, home: Path) -> Servers:
    """Finds or starts the servers and prepares a fresh, migrated bench database."""
    embedded: list[str] = []
    if redis_url is None:
        if _port_open("127.0.0.1", 6379):
            redis_url = DEFAULT_REDIS_URL
        else:
            from entities.embedded import ensure_redis

            redis_url = f"redis+socket://{ensure_redis(home / 'redis')}"
            embedded.append("redis")
    if database_url is None:
        if _port_open("127.0.0.1", 5432):
            admin = DEFAULT_ADMIN_URL
        else:
            from entities.embedded import ensure_postgres

            admin = ensure_postgres(home / "postgres")
            embedded.append("postgres")
        database_url = _recreate(admin, DATABASE_NAME)
    else:
        _drop_tables(database_url)
    from entities.migrate import upgrade

    upgrade(database_url)
    _create_handrolled_table(database_url)
    return Servers(redis_url, database_url, tuple(embedded))


def stop_embedded(servers: Servers, home: Path) -> None:
    """Stops the embedded servers this run started (they hold nothing but the bench's data)."""
    from entities import embedded

    for name in servers.embedded:
        stop = getattr(embedded, f"stop_{name}", None)
        if stop is not None:
            stop(home / name)


def _recreate(admin_url: str, name: str) -> str:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    url = sa.engine.make_url(admin_url).set(database=name)
    return url.render_as_string(hide_password=False)


def _drop_tables(database_url: str) -> None:
    """Empties a database given with --database-url: the run migrates it from scratch."""
    engine = sa.create_engine(database_url)
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


def _create_handrolled_table(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE IF NOT EXISTS {HANDROLLED_TABLE} "
                "(id text PRIMARY KEY, state jsonb NOT NULL)"
            )
        )
    engine.dispose()


def reset(servers: Servers, partitions: bool = False) -> None:
    """Empties the bench's Redis database and every table that grows with traffic.

    ``partitions``: also forget the recorded partition count and epochs, so the
    next worker may run with another ENTITIES_PARTITIONS (the scaling sweep).
    """
    client = redis_client(servers.redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    engine = sa.create_engine(servers.database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "TRUNCATE entity_snapshots, entity_processed, entity_alarms, entity_outbox, "
                f"entity_dead_letters, {HANDROLLED_TABLE}"
            )
        )
        conn.execute(sa.text("UPDATE entity_partitions SET owner = NULL"))
        if partitions:
            conn.execute(sa.text("DELETE FROM entity_settings WHERE key = 'partitions'"))
            conn.execute(sa.text("DELETE FROM entity_partitions"))
    engine.dispose()


def machine_info(servers: Servers) -> dict[str, Any]:
    """The machine and server versions a figure was measured on."""
    import celery
    import kombu
    import psycopg

    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    client = redis_client(servers.redis_url)
    try:
        redis_version = client.info("server").get("redis_version")
    finally:
        client.close()
    engine = sa.create_engine(servers.database_url)
    with engine.connect() as conn:
        pg = {
            name: conn.execute(sa.text(f"SHOW {name}")).scalar()
            for name in ("server_version", "synchronous_commit", "shared_buffers", "fsync")
        }
    engine.dispose()
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "psycopg": psycopg.__version__,
        "sqlalchemy": sa.__version__,
        "redis_server": redis_version,
        "postgres": pg,
        "embedded_servers": list(servers.embedded),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine shows here)."""
    return [round(x, 2) for x in os.getloadavg()]


def git_commit(path: Path, revision: str | None = None) -> str | None:
    """The short commit id of ``revision`` (default: what is checked out) in the repo at ``path``.

    Without a revision, "+dirty" is appended if tracked files outside bench/
    differ from the commit. None when ``path`` is not a git checkout.
    """
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        if revision is not None:
            return git("rev-parse", "--short=12", "--verify", f"{revision}^{{commit}}")
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")
