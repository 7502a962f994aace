"""Client helpers: reading state outside the queue, alarms, delete and send.

References (``Counter.ref(id)``) live in :mod:`entities.refs`; the async twins
in :mod:`entities.aio`.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from entities import clock, registry
from entities.alarm_ops import clear_alarms_msg, set_alarm_msg
from entities.messages import OP_DELETE, validate_id
from entities.model import Delay, _check_alarm_name, fire_time
from entities.options import check_options
from entities.results import EntityResult
from entities.settings import get_settings
from entities.store import Alarm, AlarmChange, Snapshot, SQLStore, Store
from entities.transports import Call, current_transport

if TYPE_CHECKING:
    from entities.model import Entity


_lock = threading.Lock()
_store: Store | None = None

#: Seconds a reference's call waits for its reply unless told otherwise.
DEFAULT_TIMEOUT_S = 10.0


def get_store() -> Store:
    """The process-wide store, opened on first use from the settings (schema checked)."""
    global _store
    registry.ensure_modules()  # every client helper comes here first
    with _lock:
        if _store is None:
            settings = get_settings()
            store = SQLStore(settings.database_url)
            store.check_schema()
            store.ensure_partitions(settings.partitions)
            _store = store
        return _store


def set_store(store: Store | None) -> Store | None:
    """Installs ``store`` as the process-wide store (tests and embedding apps); returns the old."""
    global _store
    with _lock:
        previous, _store = _store, store
    return previous


def read(entity_type: str | type[Entity], entity_id: str) -> Snapshot | None:
    """The last committed state, read from the store without waiting behind queued messages."""
    name = registry.type_name(entity_type)
    validate_id("entity id", entity_id)
    return get_store().load(name, entity_id)


def list_entities(
    entity_type: str | type[Entity], limit: int = 100, after: str | None = None
) -> list[str]:
    """Stored ids of ``entity_type``, ascending, at most ``limit``, after ``after``."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return get_store().list_ids(registry.type_name(entity_type), limit, after)


def send(
    entity_type: str | type[Entity],
    entity_id: str,
    msg: dict[str, Any],
    durability: str | None = None,
    **options: Any,
) -> EntityResult[Any]:
    """Sends ``msg`` to an entity through its partition queue; returns its EntityResult
    (an AsyncResult whose ``.get()`` gives the reply's JSON form).

    It goes through the process's transport (:mod:`entities.transports`): the
    broker, or the test kit's harness in this process. Raises BrokerError if the
    broker cannot be reached once the publish retries are spent.
    """
    name = registry.type_name(entity_type)
    registry.ensure_modules()
    check_options(options)
    task_id = options.pop("task_id", None)
    call = Call(name, entity_id, msg, durability, task_id, options)
    return current_transport().send(call)


def delete(entity_type: str | type[Entity], entity_id: str, timeout: float = 10) -> None:
    """Deletes an entity's state and alarms, in order with its queued messages.

    Waits up to ``timeout`` seconds for the deletion to commit; the next
    message to the entity starts from the defaults.
    """
    send(entity_type, entity_id, {"op": OP_DELETE}).get(timeout=timeout)


def _change_alarms(
    entity_type: str, entity_id: str, msg: dict[str, Any], write: Callable[[Store], Any]
) -> None:
    """Applies an external alarm change in order with the entity's messages and at once.

    The queued copy is sent first, then the store is written (see
    :mod:`entities.alarm_ops` for why that order).
    """
    send(entity_type, entity_id, msg, ignore_result=True)
    write(get_store())


def schedule_alarm(
    entity_type: str | type[Entity],
    entity_id: str,
    name: str,
    delay: Delay,
    payload: Any = None,
) -> dt.datetime:
    """Schedules (or replaces) alarm ``name`` of an entity; returns when it fires.

    The change is stored at once and also applied in order with the entity's
    messages, so no change the entity made before this call undoes it.
    """
    from entities.codec import encode

    _check_alarm_name(name)
    validate_id("entity id", entity_id)
    encoded = encode(payload, Any, f"alarm {name!r} payload")
    when = fire_time(delay)
    scheduling = uuid.uuid4().hex  # one scheduling, written directly and by the queued copy
    change = AlarmChange(
        registry.type_name(entity_type), entity_id, name, when, encoded, scheduling
    )
    _change_alarms(
        change.entity_type, entity_id, set_alarm_msg(change), lambda s: s.set_alarm(change)
    )
    return when


def cancel_alarm(entity_type: str | type[Entity], entity_id: str, name: str) -> None:
    """Cancels alarm ``name`` of an entity (nothing happens if there is none); like
    :func:`schedule_alarm`, in order with the entity's messages too."""
    _check_alarm_name(name)
    validate_id("entity id", entity_id)
    change = AlarmChange(registry.type_name(entity_type), entity_id, name, None)
    _change_alarms(
        change.entity_type, entity_id, set_alarm_msg(change), lambda s: s.set_alarm(change)
    )


def cancel_all_alarms(entity_type: str | type[Entity], entity_id: str) -> None:
    """Cancels every alarm of an entity; like :func:`schedule_alarm`, in order with the
    entity's messages too."""
    validate_id("entity id", entity_id)
    name = registry.type_name(entity_type)
    _change_alarms(
        name, entity_id, clear_alarms_msg(), lambda s: s.cancel_all_alarms(name, entity_id)
    )


def list_alarms(entity_type: str | type[Entity], entity_id: str) -> list[tuple[str, dt.datetime]]:
    """The entity's scheduled alarms as (name, fire time), ordered by fire time.

    Alarms that will not fire by themselves are listed by :func:`failed_alarms`.
    """
    alarms = get_store().list_alarms(registry.type_name(entity_type), entity_id)
    return [(a.name, a.fire_at) for a in alarms if a.status == "scheduled"]


def failed_alarms(entity_type: str | type[Entity] | None = None, limit: int = 100) -> list[Alarm]:
    """Alarms kept unfired, oldest first: ``failed`` (their handler kept raising) or
    ``skipped`` (the misfire policy); ``last_error`` says why. See :func:`retry_alarm`."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    name = None if entity_type is None else registry.type_name(entity_type)
    return get_store().failed_alarms(name, limit)


def retry_alarm(entity_type: str | type[Entity], entity_id: str, name: str) -> bool:
    """Schedules a failed or skipped alarm again, to fire now, as a new scheduling.

    The alarm keeps its payload and starts again with no attempts. Returns False
    if the entity has no failed or skipped alarm ``name``. Like
    :func:`schedule_alarm`, it is applied in order with the entity's messages too.
    """
    _check_alarm_name(name)
    etype = registry.type_name(entity_type)
    kept = get_store().get_alarm(etype, entity_id, name)
    if kept is None or kept.status not in ("failed", "skipped"):
        return False
    when = clock.now()
    scheduling = uuid.uuid4().hex  # one scheduling, written directly and by the queued copy
    copy = AlarmChange(etype, entity_id, name, when, kept.payload, scheduling)
    _change_alarms(
        etype,
        entity_id,
        set_alarm_msg(copy),
        lambda s: s.retry_alarm(etype, entity_id, name, when, scheduling),
    )
    return True
