"""Turning the integrations on inside a worker, from the environment.

========================== ====================================================
``ENTITIES_PROMETHEUS_PORT``  serve Prometheus metrics on this port (``prometheus`` extra)
``ENTITIES_OTEL``             ``1``: trace entity messages; ``console``: and print spans
``-E`` (Celery)               send task events for entity messages (Flower)
========================== ====================================================

:func:`start` is called by the worker's partition bootstep; it returns the
function that stops what it started.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def start(worker: Any, env: dict[str, str] | None = None) -> Callable[[], None]:
    """Starts what the environment and the worker's options ask for."""
    env = dict(os.environ) if env is None else env
    stops: list[Callable[[], None]] = []
    port = env.get("ENTITIES_PROMETHEUS_PORT")
    if port:
        from entities.contrib import prometheus

        stops.append(prometheus.serve(int(port)).uninstall)
        log.info("Prometheus metrics on port %s", port)
    mode = env.get("ENTITIES_OTEL", "")
    if mode:
        from entities.contrib import otel

        if mode == "console":
            otel.console_exporter()
        stops.append(otel.install())
        log.info("OpenTelemetry tracing of entity messages on (%s)", mode)
    if getattr(worker, "task_events", None) or worker.app.conf.worker_send_task_events:
        from entities.contrib import flower

        stops.append(flower.install(worker.app, worker.hostname))
        log.info("task events for entity messages on")

    def stop() -> None:
        for s in reversed(stops):
            s()

    return stop
