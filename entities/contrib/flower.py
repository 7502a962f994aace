"""Celery task events for entity messages, so Flower and ``celery events`` show them.

Celery's consumer never sees a partition message (the partition owner reads
its queue directly), so Celery sends no task events for it. When the worker
runs with events enabled (``celery -A workers worker -E``, or
``worker_send_task_events``), this subscriber sends, per applied message,
``task-received``, ``task-started`` and ``task-succeeded`` or ``task-failed``
through the app's event dispatcher, with the fields Celery itself sends.
Times are those of the batch: received when its fetch began, finished when it
was committed and replied to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from entities import telemetry
from entities.contrib.batch import applied_messages
from entities.telemetry import Event

log = logging.getLogger(__name__)

#: Longest repr of arguments or results put in an event (Celery's own default).
REPR_MAX = 1024


class TaskEvents:
    """Sends task events for the messages of every applied batch of this process."""

    def __init__(self, app: Any, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._lock = threading.Lock()  # runners are threads; a dispatcher is not thread-safe
        self._dispatcher: Any = None

    def _get_dispatcher(self) -> Any:
        if self._dispatcher is None:
            self._dispatcher = self.app.events.Dispatcher(
                self.app.connection_for_write(), hostname=self.hostname, enabled=True
            )
        return self._dispatcher

    def on_event(self, event: Event) -> None:
        """Sends the task events of one ``message.applied`` batch."""
        started_at = float(event.metadata.get("started_at") or 0.0)
        runtime = float(event.measurements.get("duration_s", 0.0))
        with self._lock:
            send = self._get_dispatcher().send
            for m in applied_messages(event):
                env = m.envelope
                if m.ok is None or not env.task_id:
                    continue  # held by a pause or unreadable: not applied
                headers = env.headers
                args = [
                    env.entity_type,
                    env.entity_id,
                    {"op": env.op, "args": env.args, "kwargs": env.kwargs},
                ]
                send(
                    "task-received",
                    uuid=env.task_id,
                    name=headers.get("task"),
                    args=repr(args)[:REPR_MAX],
                    kwargs="{}",
                    root_id=headers.get("root_id"),
                    parent_id=headers.get("parent_id"),
                    retries=headers.get("retries", 0),
                    eta=headers.get("eta"),
                    expires=headers.get("expires"),
                    timestamp=started_at,
                )
                send("task-started", uuid=env.task_id, timestamp=started_at)
                if m.ok:
                    send(
                        "task-succeeded",
                        uuid=env.task_id,
                        result=repr(m.value)[:REPR_MAX],
                        runtime=runtime,
                    )
                else:
                    send(
                        "task-failed",
                        uuid=env.task_id,
                        exception=repr(m.error)[:REPR_MAX],
                        traceback=None,
                    )

    def close(self) -> None:
        """Releases the dispatcher's connection."""
        with self._lock:
            if self._dispatcher is not None:
                self._dispatcher.close()
                self._dispatcher = None


def install(app: Any, hostname: str) -> Callable[[], None]:
    """Sends task events for entity messages from now on; returns the function that stops it."""
    events = TaskEvents(app, hostname)
    unsubscribe = telemetry.subscribe(events.on_event, events=["message.applied"])

    def stop() -> None:
        unsubscribe()
        events.close()

    return stop
