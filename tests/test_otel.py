"""Given the OpenTelemetry extra, when a client sends inside a span, then the message carries
the trace context, and the worker's span for applying it is a child of the client's."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from entities.contrib import otel
from entities.routing import partition_for, queue_name
from entities.telemetry import Event
from tests.conftest import Workers

_exporter = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    uninstall = otel.install()
    yield _exporter
    uninstall()


def test_the_client_puts_its_trace_context_in_the_message_headers(spans, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given no worker, when a message is sent inside a span, then the queued message's
    headers hold a traceparent naming that trace and the producer span."""
    import os

    from workers import send_to_entity

    with trace.get_tracer("test").start_as_current_span("checkout") as parent:
        result = send_to_entity.delay("counter", "otel", {"op": "increment"})
    partition = partition_for("counter", "otel", int(os.environ["ENTITIES_PARTITIONS"]))
    [raw] = redis_client.lrange(queue_name(partition), 0, -1)
    headers = json.loads(raw)["headers"]
    trace_id = format(parent.get_span_context().trace_id, "032x")
    producer = next(s for s in spans.get_finished_spans() if s.name == "send_to_entity counter")
    assert (
        producer.parent is not None and producer.parent.span_id == parent.get_span_context().span_id
    )
    span_id = format(producer.context.span_id, "016x")
    assert headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert headers["id"] == result.id


def test_an_applied_batch_gives_one_child_span_per_message(spans) -> None:  # type: ignore[no-untyped-def]
    """Given a batch event with a traced message and a failed one, then each gets a consumer
    span timed by the batch; the traced one continues the sender's trace."""
    from entities.testing import celery_message
    from workers.apply import Outcome

    traced = json.loads(celery_message("counter", "a", {"op": "increment"}, task_id="t1"))
    traced["headers"]["traceparent"] = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    failing = celery_message("counter", "b", {"op": "nope"}, task_id="t2")
    otel.on_applied(
        Event(
            "message.applied",
            {"messages": 2, "duration_s": 0.5},
            {
                "partition": 3,
                "started_at": 1000.0,
                "raws": [json.dumps(traced).encode(), failing],
                "outcomes": [Outcome("t1", True, 1), Outcome("t2", False, error=KeyError("x"))],
            },
        )
    )
    ok, bad = sorted(spans.get_finished_spans(), key=lambda s: s.attributes["messaging.message.id"])
    assert ok.name == "apply counter.increment"
    assert format(ok.context.trace_id, "032x") == "ab" * 16
    assert ok.parent is not None and format(ok.parent.span_id, "016x") == "cd" * 8
    assert (ok.start_time, ok.end_time) == (1000 * 10**9, 1000 * 10**9 + 500_000_000)
    assert ok.attributes["entities.partition"] == 3
    assert bad.status.status_code == trace.StatusCode.ERROR and bad.parent is None


def test_a_real_worker_continues_the_clients_trace(spans, workers: Workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker with ENTITIES_OTEL=console, when a traced client's call is applied, then
    the worker's span has the client's trace id and the producer span as its parent."""
    from workers import send_to_entity

    proc = workers.start(1, ENTITIES_OTEL="console")[0]
    with trace.get_tracer("test").start_as_current_span("checkout") as parent:
        assert send_to_entity.delay("counter", "traced", {"op": "increment"}).get(timeout=30) == 1
    trace_id = format(parent.get_span_context().trace_id, "032x")
    producer = next(s for s in spans.get_finished_spans() if s.name == "send_to_entity counter")
    deadline = time.monotonic() + 10
    while f'"trace_id": "0x{trace_id}"' not in proc.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    # The console exporter prints each span as JSON (after Celery's log prefix).
    printed = re.findall(
        r'\{\n\s+"name": "apply counter.increment".*?^\}$', proc.output(), re.M | re.S
    )
    applied = [json.loads(p) for p in printed]
    assert [s["context"]["trace_id"] for s in applied] == [f"0x{trace_id}"], proc.output()[-3000:]
    assert applied[0]["parent_id"] == f"0x{producer.context.span_id:016x}"
    assert applied[0]["kind"] == "SpanKind.CONSUMER"
