"""Prometheus metrics fed by telemetry: counters and latency histograms (the ``prometheus`` extra).

In a worker, ``ENTITIES_PROMETHEUS_PORT=9808`` serves them on that port
(see :mod:`entities.contrib.worker`); elsewhere call :func:`install` and
expose the registry as you like. Metric names:

=====================================  ==============================================
``entities_messages_total{outcome}``   messages replied to (``ok`` or ``error``)
``entities_batch_seconds``             time to apply, commit and reply to a batch
``entities_batch_size``                messages per batch
``entities_storage_seconds{op}``       state-store loads and saves (``load``, ``save``)
``entities_storage_errors_total{op}``  loads and saves that raised
``entities_events_total{event}``       activations, hibernations, passivations,
                                       flushes, conflicts, deletes, dead letters,
                                       alarms fired and failed, zombie commits
=====================================  ==============================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from entities import telemetry
from entities.telemetry import Event

#: Telemetry events counted in ``entities_events_total``, by their label.
COUNTED = {
    "entity.activate": "activate",
    "entity.hibernate": "hibernate",
    "entity.passivate": "passivate",
    "entity.flush": "flush",
    "entity.conflict": "conflict",
    "storage.delete": "delete",
    "message.dead_lettered": "dead_lettered",
    "send.refused": "send_refused",
    "alarm.fired": "alarm_fired",
    "alarm.failed": "alarm_failed",
    "partition.zombie": "zombie",
}
#: Latency buckets in seconds, from a fast local commit to a stalled store.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclasses.dataclass
class Metrics:
    """The registered metrics, and the function that stops feeding them."""

    messages: Counter
    batch_seconds: Histogram
    batch_size: Histogram
    storage_seconds: Histogram
    storage_errors: Counter
    events: Counter
    uninstall: Callable[[], None]

    def on_event(self, event: Event) -> None:
        """Updates the metrics from one telemetry event."""
        name = event.name
        if name == "message.applied":
            self.batch_seconds.observe(event.measurements.get("duration_s", 0.0))
            self.batch_size.observe(event.measurements.get("messages", 0))
            outcomes = event.metadata.get("outcomes") or ()
            ok = sum(1 for o in outcomes if o.ok)
            self.messages.labels("ok").inc(ok)
            self.messages.labels("error").inc(len(outcomes) - ok)
        elif name in ("storage.load.stop", "storage.save.stop"):
            self.storage_seconds.labels(name.split(".")[1]).observe(
                event.measurements.get("duration_s", 0.0)
            )
        elif name in ("storage.load.exception", "storage.save.exception"):
            self.storage_errors.labels(name.split(".")[1]).inc()
        elif name in COUNTED:
            self.events.labels(COUNTED[name]).inc()


def install(registry: CollectorRegistry = REGISTRY) -> Metrics:
    """Registers the metrics in ``registry`` and subscribes them to telemetry."""
    metrics = Metrics(
        messages=Counter(
            "entities_messages", "Entity messages replied to", ["outcome"], registry=registry
        ),
        batch_seconds=Histogram(
            "entities_batch_seconds",
            "Seconds to apply, commit and reply to one batch",
            buckets=BUCKETS,
            registry=registry,
        ),
        batch_size=Histogram(
            "entities_batch_size",
            "Messages per batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=registry,
        ),
        storage_seconds=Histogram(
            "entities_storage_seconds",
            "Seconds per state-store load or save",
            ["op"],
            buckets=BUCKETS,
            registry=registry,
        ),
        storage_errors=Counter(
            "entities_storage_errors",
            "State-store loads and saves that raised",
            ["op"],
            registry=registry,
        ),
        events=Counter(
            "entities_events", "Entity lifecycle and failure events", ["event"], registry=registry
        ),
        uninstall=lambda: None,
    )
    metrics.uninstall = telemetry.subscribe(metrics.on_event)
    return metrics


def serve(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> Metrics:
    """Installs the metrics and serves ``registry`` at ``http://addr:port/metrics``."""
    from prometheus_client import start_http_server

    metrics = install(registry)
    start_http_server(port, addr, registry)
    return metrics
