"""The Celery side of the client: configuration, the partition router, the client app.

``entities`` never imports ``workers``: a process that only sends messages
(``Counter.ref(id).increment()``, ``entities.delete``) uses the Celery app that
is current (``workers.app`` once imported) or builds a client-only app from
the same configuration. Client helpers reach it through the one injection point,
:mod:`entities.transports` (whose default transport publishes with this module).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import threading
import uuid
from typing import Any

from kombu import Exchange, Queue

from entities.broker_errors import publish_retrying, reaching
from entities.delayed import add as add_delayed
from entities.delayed import due_ms
from entities.errors import ConfigurationError
from entities.messages import SENDER_HEADER, validate_id
from entities.options import due_at, expires_at
from entities.routing import TASK_NAME, TASKS_QUEUE, partition_for, queue_name
from entities.settings import Settings, get_settings

#: The Celery task that claims due alarms and sends them to their entities.
DISPATCH_ALARMS_TASK = "entities.dispatch_alarms"

_lock = threading.Lock()
_client_app: Any = None


def partition_queue(partition: int) -> Queue:
    """The kombu Queue of ``partition``; publishing to it declares it, so nothing is dropped."""
    name = queue_name(partition)
    return Queue(name, Exchange(name, type="direct"), routing_key=name, no_declare=False)


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, Any] | None:
    """The Celery router: sends send_to_entity calls to their entity's partition queue."""
    if name != TASK_NAME:
        return None
    call = list(args or ())
    entity_type = call[0] if call else (kwargs or {}).get("entity_type")
    entity_id = call[1] if len(call) > 1 else (kwargs or {}).get("entity_id")
    return {"queue": partition_queue(_partition_of(entity_type, entity_id))}


def routing_checked() -> bool:
    """True once this process checked the deployment it routes for (no I/O left to send)."""
    settings = get_settings()
    return _checked_partitions == settings.partitions and _broker_checked == settings.broker_url


def check_routing() -> None:
    """Checks the store's partition count and starts an embedded broker, once (blocking)."""
    settings = get_settings()
    _check_partitions(settings.partitions)
    _ensure_broker_once(settings)


def _partition_of(entity_type: Any, entity_id: Any) -> int:
    """The partition of a call's entity, once the ids and the deployment are checked."""
    entity_type = validate_id("entity type", entity_type)
    entity_id = validate_id("entity id", entity_id)
    from entities.registry import ensure_modules

    ensure_modules()  # so the reply's exception is rebuilt as the entity module's own class
    settings = get_settings()
    _check_partitions(settings.partitions)
    _ensure_broker_once(settings)
    return partition_for(entity_type, entity_id, settings.partitions)


#: apply_async/send_task options the direct send takes; any other goes through Celery.
_DIRECT_OPTIONS = frozenset({"ignore_result", "countdown", "eta", "expires"})
_publishers: dict[str, Any] = {}


def send_direct(
    app: Any,
    args: Any,
    task_id: str | None = None,
    options: dict[str, Any] | None = None,
    result_cls: Any = None,
) -> Any:
    """Publishes a plain send_to_entity call straight to its partition queue.

    The message is the one Celery's ``send_task`` would publish (protocol 2,
    JSON; see :func:`celery_message`), pushed with one LPUSH on a client kept
    for the process, after subscribing to its reply on this thread's kept
    subscription (:mod:`entities.replies`). That skips kombu's per-publish
    machinery and Celery's per-call subscribe round trips. A call with a
    ``countdown`` or an ``eta`` in the future goes to the partition's delayed
    set instead (:mod:`entities.delayed`), never to the queue; ``expires``
    travels in the headers as Celery puts it. Returns an
    :class:`~entities.results.EntityResult`, or None when the call needs
    something only Celery's path does (options such as link or headers,
    publish signals or sent events, eager mode, a call made inside a running
    task, a non-Redis result backend), so the caller sends it the usual way.
    Both publishes retry under the app's publish retry policy, as Celery's
    publish does, then raise BrokerError (:mod:`entities.broker_errors`).
    """
    direct = direct_message(app, args, task_id, options)
    if direct is None:
        return None
    from entities.replies import waiter_for
    from entities.results import EntityResult

    waiter = None
    try:
        with reaching(app):  # retried as Celery's publish is, then BrokerError
            if not direct.ignore_result:
                waiter = waiter_for(app.backend)
                waiter.watch(direct.task_id)  # subscribes before the reply can exist
            push(app, direct)
    except Exception:
        if waiter is not None:
            waiter.forget(direct.task_id)
        raise
    result: EntityResult[Any] = EntityResult(direct.task_id, app=app, backend=app.backend)
    result._waiter = waiter
    return describe(result, args)


def describe(result: Any, args: Any) -> Any:
    """Tells an EntityResult which entity and op it waits for (its errors name them)."""
    from entities.results import EntityResult

    call = list(args or ())
    if isinstance(result, EntityResult) and len(call) >= 3:
        msg = call[2]
        op = msg.get("op") if isinstance(msg, dict) else None
        result.describe(str(call[0]), str(call[1]), str(op))
    return result


@dataclasses.dataclass(frozen=True)
class Direct:
    """One call the direct path sends: its partition, its message bytes, task id, whether
    a reply is wanted, and when it is due (None: at once)."""

    partition: int
    raw: bytes
    task_id: str
    ignore_result: bool
    eta: dt.datetime | None

    @property
    def queue(self) -> str:
        """The partition queue's name."""
        return queue_name(self.partition)

    @property
    def delayed(self) -> bool:
        """True if the call is due later (it goes to the partition's delayed set)."""
        return self.eta is not None and self.eta > dt.datetime.now(dt.UTC)


def push(app: Any, direct: Direct) -> None:
    """Publishes a direct call: one LPUSH, or an add to the delayed set if it is due later,
    retried under the app's publish retry policy (:mod:`entities.broker_errors`)."""
    publisher = _publisher(app.conf.broker_url)
    if direct.delayed:
        assert direct.eta is not None
        due = due_ms(direct.eta)
        publish_retrying(app, lambda: add_delayed(publisher, direct.partition, [(direct.raw, due)]))
    else:
        publish_retrying(app, lambda: publisher.lpush(direct.queue, direct.raw))


def direct_message(
    app: Any, args: Any, task_id: str | None = None, options: dict[str, Any] | None = None
) -> Direct | None:
    """The call as the direct path sends it, or None when it needs Celery's path (see
    :func:`send_direct`)."""
    from celery import signals
    from celery._state import get_current_worker_task
    from celery.backends.redis import RedisBackend

    options = options or {}
    call = list(args or ())
    if (
        set(options) - _DIRECT_OPTIONS
        or not 3 <= len(call) <= 4
        or app.conf.task_always_eager
        or app.conf.task_send_sent_event
        or signals.before_task_publish.receivers
        or signals.after_task_publish.receivers
        or get_current_worker_task() is not None
        or not isinstance(app.backend, RedisBackend)
    ):
        return None
    entity_type, entity_id, msg = call[:3]
    partition = _partition_of(entity_type, entity_id)
    task_id = task_id or str(uuid.uuid4())
    ignore_result = bool(options.get("ignore_result", False))
    eta = due_at(options.get("countdown"), options.get("eta"))
    raw = celery_message(
        entity_type,
        entity_id,
        msg,
        task_id,
        call[3] if len(call) > 3 else None,
        ignore_result,
        eta=eta,
        expires=expires_at(options.get("expires")),
    )
    return Direct(partition, raw, task_id, ignore_result, eta)


def publish_error(exc: Exception) -> Exception:
    """What a failed LPUSH raises: what Celery's own publish raises for a Redis error."""
    import redis
    from kombu.exceptions import OperationalError

    if isinstance(exc, redis.RedisError):
        error: Exception = OperationalError(f"could not publish to the broker: {exc}")
        return error
    return exc


def broker_client(url: str) -> Any:
    """The process's Redis client of the broker at ``url`` (the direct send's)."""
    return _publisher(url)


def _publisher(url: str) -> Any:
    client = _publishers.get(url)
    if client is None:
        from entities.redis_client import redis_from_url

        with _lock:
            client = _publishers.setdefault(url, redis_from_url(url))
    return client


_checked_partitions: int | None = None


def _check_partitions(partitions: int) -> None:
    """Refuses, once per process, to route with a partition count the store did not record.

    A client with another count would send an entity's messages to a partition
    that does not own it. Raises ConfigurationError (or SchemaError).
    """
    global _checked_partitions
    if _checked_partitions == partitions:
        return
    from entities.client import get_store  # entities.client imports this module

    get_store()  # checks the schema and the recorded partition count
    _checked_partitions = partitions


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of clients and workers, derived from ``settings``."""
    if not settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        raise ConfigurationError(
            f"ENTITIES_BROKER_URL must be a Redis URL (redis://, rediss:// or redis+socket://); "
            f"got {settings.broker_url!r}"
        )
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": (route_task,),
        # Celery's default queue ("celery") is forwarded by one worker at a time, in
        # order (workers.forwarder); this app's other tasks have a queue of their own.
        "task_default_queue": TASKS_QUEUE,
        "result_expires": int(settings.result_expires_s),
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 4,
        "task_acks_late": True,
        "worker_hijack_root_logger": False,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        # Alarm dispatch: `celery -A workers beat` sends the task every alarm_poll_s;
        # an unconsumed one expires soon, so a beat running while the workers are down
        # leaves no backlog of dispatches to run. Workers import the task's module.
        "imports": ("workers.alarms",),
        "beat_schedule": {
            "entities-dispatch-alarms": {
                "task": DISPATCH_ALARMS_TASK,
                "schedule": settings.alarm_poll_s,
                "options": {"expires": max(1.0, 4 * settings.alarm_poll_s)},
            }
        },
    }


def celery_message(
    entity_type: str,
    entity_id: str,
    msg: dict[str, Any],
    task_id: str | None = None,
    durability: str | None = None,
    ignore_result: bool = False,
    sender: tuple[str, str] | None = None,
    *,
    eta: dt.datetime | None = None,
    expires: dt.datetime | None = None,
) -> bytes:
    """The bytes of one ``send_to_entity`` call as it lies in a Redis queue.

    This is the kombu Redis envelope of a Celery protocol 2 message (JSON
    headers and properties, a base64 JSON body), the shape ``send_task``
    leaves in a partition queue; it lets a publisher push many calls in one
    round trip. ``task_id`` defaults to a fresh one. ``sender`` (type, id)
    names the entity that sent it, in the ``entities_sender`` header; ``eta``
    and ``expires`` go in the headers as Celery writes them (ISO 8601).
    """
    task_id = task_id or str(uuid.uuid4())
    args: list[Any] = [entity_type, entity_id, msg]
    if durability is not None:
        args.append(durability)
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([args, {}, embed])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": task_id,
            "shadow": None,
            "eta": None if eta is None else eta.isoformat(),
            "expires": None if expires is None else expires.isoformat(),
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args)[:1024],
            "kwargsrepr": "{}",
            "origin": _origin(),
            "ignore_result": ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **({SENDER_HEADER: list(sender)} if sender else {}),
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


_origins: dict[int, str] = {}


def _origin() -> str:
    """Celery's ``origin`` header for this process (its anonymous node name)."""
    pid = os.getpid()
    origin = _origins.get(pid)
    if origin is None:
        from celery.utils.nodenames import anon_nodename

        origin = _origins[pid] = anon_nodename()
    return origin


def ensure_broker(settings: Settings) -> None:
    """Starts the embedded redis-server if the broker is the embedded default."""
    if settings.embedded_broker:
        from entities.embedded import ensure_redis

        ensure_redis(settings.home)


_broker_checked: str | None = None


def _ensure_broker_once(settings: Settings) -> None:
    """ensure_broker, once per process and broker URL (a client's first send)."""
    global _broker_checked
    if _broker_checked != settings.broker_url:
        ensure_broker(settings)
        _broker_checked = settings.broker_url


def client_app() -> Any:
    """The Celery app to send with: the current one if it is ours, else a client-only app."""
    global _client_app
    from celery import current_app

    app = current_app._get_current_object()
    if TASK_NAME in app.tasks or getattr(app, "main", None) == "entities":
        return app
    with _lock:
        if _client_app is None:
            from celery import Celery

            settings = get_settings()
            ensure_broker(settings)
            _client_app = Celery("entities-client", set_as_current=False)
            from entities.celeryconf import app_config  # it builds on celery_config

            _client_app.conf.update(app_config(settings))
        return _client_app
