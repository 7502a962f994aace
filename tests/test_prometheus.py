"""Given the Prometheus extra, when entities work, then counters and latency histograms move;
a worker with ENTITIES_PROMETHEUS_PORT serves them over HTTP."""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client import CollectorRegistry

from entities.contrib import prometheus
from entities.telemetry import Event
from tests.conftest import Workers
from tests.fixture_entities import Counter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_storage_spans_and_lifecycle_events_feed_the_metrics() -> None:
    """Given metrics on a fresh registry, when the harness applies messages, then storage
    saves are timed and activations counted; a batch event counts ok and failed replies."""
    from workers.apply import Outcome
    from workers.testing import Harness

    registry = CollectorRegistry()
    metrics = prometheus.install(registry)
    try:
        with Harness() as h:
            h.call(Counter, "m", "increment", 2)
            h.call(Counter, "m", "increment", 3)
        metrics.on_event(
            Event(
                "message.applied",
                {"messages": 2, "duration_s": 0.004},
                {"outcomes": [Outcome("a", True, 1), Outcome("b", False, error=ValueError())]},
            )
        )
    finally:
        metrics.uninstall()
    value = registry.get_sample_value
    assert value("entities_storage_seconds_count", {"op": "save"}) == 2
    assert value("entities_events_total", {"event": "activate"}) == 1
    assert value("entities_messages_total", {"outcome": "ok"}) == 1
    assert value("entities_messages_total", {"outcome": "error"}) == 1
    assert value("entities_batch_seconds_bucket", {"le": "0.005"}) == 1
    assert value("entities_batch_size_sum") == 2


def test_a_worker_serves_its_metrics_on_the_configured_port(workers: Workers) -> None:
    from workers import send_to_entity

    port = free_port()
    workers.start(1, ENTITIES_PROMETHEUS_PORT=str(port))
    for _ in range(3):
        send_to_entity.delay("counter", "prom", {"op": "increment"}).get(timeout=30)
    send_to_entity.delay("counter", "prom", {"op": "missing"})
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if 'entities_messages_total{outcome="error"} 1.0' in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 'entities_messages_total{outcome="ok"} 3.0' in text
    assert 'entities_messages_total{outcome="error"} 1.0' in text
    assert 'entities_storage_seconds_count{op="save"}' in text
    assert "entities_batch_seconds_bucket" in text
