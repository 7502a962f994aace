"""Telemetry: named events with measurements and metadata, and a small subscriber API.

The runtime emits, among others (metadata in brackets):

=========================  ===================================================
``storage.load``           span: snapshots loaded [partition, count]
``storage.save``           span: one fenced commit [partition, entities, messages]
``storage.delete``         an entity's state and alarms removed [entity_type, entity_id, version]
``entity.activate``        an entity entered memory [entity_type, entity_id, version, vsn]
``entity.hibernate``       an idle entity kept only its snapshot [entity_type, entity_id]
``entity.passivate``       an entity left memory [entity_type, entity_id, reason]
``entity.flush``           relaxed changes committed [partition, entities, reason]
``entity.conflict``        a version fence rejected a commit [partition, error]
``message.applied``        a batch was applied and replied to [partition, messages,
                           duration_s, started_at (epoch seconds), raws (the broker
                           messages, oldest first), outcomes (one reply per task id)]
``message.dead_lettered``  a message could not be understood [queue, reason]
``send.refused``           an entity refused a message another entity sent
                           [sender_type, sender_id, entity_type, entity_id, op, error]
``alarm.fired``            an alarm's handler committed [entity_type, entity_id, name]
``alarm.failed``           an alarm's handler raised [entity_type, entity_id, name, attempts]
``partition.zombie``       a stale owner's commit was refused [partition, epoch]
=========================  ===================================================

A span emits ``<name>.start``, then ``<name>.stop`` with ``duration_s`` or
``<name>.exception`` with ``duration_s`` and ``error``. Subscribers run in the
emitting thread and must be quick; an exception in a subscriber is logged and
never disturbs the runtime. With no subscribers, emitting costs one check.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Event:
    """One telemetry event."""

    name: str
    measurements: dict[str, float]
    metadata: dict[str, Any]


Subscriber = Callable[[Event], None]

_lock = threading.Lock()
_subscribers: tuple[tuple[frozenset[str] | None, Subscriber], ...] = ()


def subscribe(handler: Subscriber, events: Iterable[str] | None = None) -> Callable[[], None]:
    """Calls ``handler`` for every event (or only those named in ``events``).

    Returns a function that unsubscribes it.
    """
    global _subscribers
    entry = (None if events is None else frozenset(events), handler)
    with _lock:
        _subscribers = (*_subscribers, entry)

    def unsubscribe() -> None:
        global _subscribers
        with _lock:
            _subscribers = tuple(s for s in _subscribers if s is not entry)

    return unsubscribe


def enabled() -> bool:
    """True when anyone listens (callers may skip building expensive metadata)."""
    return bool(_subscribers)


def emit(name: str, measurements: dict[str, float] | None = None, /, **metadata: Any) -> None:
    """Sends one event to its subscribers."""
    subscribers = _subscribers
    if not subscribers:
        return
    event = Event(name, measurements or {}, metadata)
    for wanted, handler in subscribers:
        if wanted is not None and name not in wanted:
            continue
        try:
            handler(event)
        except Exception:
            log.exception("telemetry subscriber %r failed on %s", handler, name)


@contextmanager
def span(name: str, /, **metadata: Any) -> Iterator[dict[str, Any]]:
    """Emits ``name.start`` and ``name.stop`` (or ``name.exception``) around a block.

    The yielded dict may be filled with more metadata for the stop event.
    """
    if not _subscribers:
        yield metadata
        return
    started = time.perf_counter()
    emit(f"{name}.start", {}, **metadata)
    try:
        yield metadata
    except BaseException as exc:
        emit(
            f"{name}.exception",
            {"duration_s": time.perf_counter() - started},
            error=repr(exc),
            **metadata,
        )
        raise
    emit(f"{name}.stop", {"duration_s": time.perf_counter() - started}, **metadata)
