"""The Celery app of workers and clients, and the bootstep that serves partitions."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps, signals

from entities.celeryconf import app_config
from entities.routing import DEFAULT_QUEUE, TASKS_QUEUE
from entities.settings import get_settings
from entities.transport import ensure_broker

log = logging.getLogger(__name__)

app = Celery("entities")
# ENTITIES_* settings, plus the deployment's own celeryconfig.py if there is one; a setting
# there that would break routing or JSON-only messages stops the process here.
app.conf.update(app_config(get_settings()))
# Celery's default queue is forwarded in order, one worker at a time (workers.forwarder);
# this app's own tasks never share it, whatever configuration was loaded.
if app.conf.task_default_queue == DEFAULT_QUEUE:
    app.conf.task_default_queue = TASKS_QUEUE
# Dead-letters unreadable messages on the default queue instead of stopping the worker.
app.conf.worker_consumer = "workers.consumer:Consumer"


class PartitionStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Runs the partition service inside `celery -A workers worker` (after the pool starts)."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.service: Any = None
        self.stop_extras: Any = None

    def start(self, worker: Any) -> None:
        from workers.service import PartitionService

        self.service = PartitionService(get_settings(), worker.app)
        worker.entities_service = self.service
        # Metrics, tracing and task events, as the environment and -E ask (entities.contrib).
        from entities.contrib.worker import start as start_extras

        self.stop_extras = start_extras(worker)
        self.service.start()

    def stop(self, worker: Any) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.stop_extras is not None:
            self.stop_extras()
            self.stop_extras = None

    shutdown = stop


app.steps["worker"].add(PartitionStep)


def _start_embedded_broker(**_: Any) -> None:
    """Starts the embedded redis-server when the broker is the default (a no-op otherwise)."""
    ensure_broker(get_settings())


def _leave_the_default_queue(instance: Any = None, **_: Any) -> None:
    """Keeps Celery's consumer off Celery's default queue even under ``-Q celery``: its
    pool would run the calls in parallel, and the forwarder reads that queue in order."""
    queues = instance.app.amqp.queues
    if DEFAULT_QUEUE in queues.consume_from:
        log.warning(
            "not consuming %r with Celery's consumer: one worker at a time forwards it in "
            "order; this app's tasks are on %r",
            DEFAULT_QUEUE,
            TASKS_QUEUE,
        )
        queues.deselect(DEFAULT_QUEUE)


signals.celeryd_after_setup.connect(_leave_the_default_queue, weak=False)
signals.worker_init.connect(_start_embedded_broker, weak=False)
signals.beat_init.connect(_start_embedded_broker, weak=False)
