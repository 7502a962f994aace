"""OpenTelemetry traces from the client's ``send_to_entity`` to the worker's commit (the
``otel`` extra).

:func:`install` does both halves in the process that calls it:

- Client: a Celery ``before_task_publish`` handler writes the current trace
  context (W3C ``traceparent``, and ``tracestate``) into the headers of every
  ``send_to_entity`` message, and opens a ``send_to_entity <type>`` producer
  span around the publish.
- Worker: a telemetry subscriber opens, per applied message, a consumer span
  ``apply <type>.<op>`` whose parent is the sender's context, timed from the
  start of the batch to its commit and reply, with the entity's type, id, op,
  partition, task id and batch size as attributes, and an error status when
  the handler raised.

Spans go to the global tracer provider: configure it (exporter, sampler) as
for any other OpenTelemetry service. In a worker, ``ENTITIES_OTEL=1`` calls
:func:`install`; ``ENTITIES_OTEL=console`` also prints every span (debugging).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from entities import telemetry
from entities.contrib.batch import applied_messages
from entities.routing import TASK_NAME
from entities.telemetry import Event

TRACER_NAME = "celery-entities"

# The producer spans being published by this thread, innermost last (after_task_publish
# names no task id, and a publish runs in the thread that started it).
_publishing = threading.local()


def _tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def before_publish(sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
    """Celery ``before_task_publish``: opens the producer span and injects its context."""
    if sender != TASK_NAME or not isinstance(headers, dict):
        return
    args = headers.get("argsrepr") or ""
    task_id = headers.get("id") or ""
    call = body[0] if isinstance(body, tuple | list) and body else ()
    call = call if isinstance(call, tuple | list) else ()
    entity_type = call[0] if call and isinstance(call[0], str) else "?"
    span = _tracer().start_span(
        f"send_to_entity {entity_type}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "celery",
            "messaging.message.id": task_id,
            "entities.entity_type": entity_type,
            "entities.entity_id": str(call[1]) if len(call) > 1 else "",
            "entities.args": str(args)[:256],
        },
    )
    token = context.attach(trace.set_span_in_context(span))
    propagate.inject(headers)
    stack = getattr(_publishing, "stack", None)
    if stack is None:
        stack = _publishing.stack = []
    stack.append((span, token))


def after_publish(sender: Any = None, **_: Any) -> None:
    """Celery ``after_task_publish``: ends the producer span."""
    stack = getattr(_publishing, "stack", None)
    if sender != TASK_NAME or not stack:
        return
    span, token = stack.pop()
    span.end()
    context.detach(token)


def on_applied(event: Event) -> None:
    """Opens and ends one consumer span per applied message, parented on its sender."""
    started_ns = int(float(event.metadata.get("started_at") or 0.0) * 1e9)
    ended_ns = started_ns + int(float(event.measurements.get("duration_s", 0.0)) * 1e9)
    tracer = _tracer()
    batch = int(event.measurements.get("messages", 0))
    for m in applied_messages(event):
        env = m.envelope
        if m.ok is None:
            continue
        parent = propagate.extract(env.headers)
        span = tracer.start_span(
            f"apply {env.entity_type}.{env.op}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=started_ns or None,
            attributes={
                "messaging.system": "celery",
                "messaging.message.id": env.task_id,
                "entities.entity_type": env.entity_type,
                "entities.entity_id": env.entity_id,
                "entities.op": env.op,
                "entities.partition": int(event.metadata.get("partition", -1)),
                "entities.batch_size": batch,
            },
        )
        if not m.ok:
            span.set_status(Status(StatusCode.ERROR, repr(m.error)[:256]))
        span.end(end_time=ended_ns or None)


def install() -> Callable[[], None]:
    """Traces entity messages in this process (client and worker halves); returns the undo."""
    from celery import signals

    signals.before_task_publish.connect(before_publish, weak=False)
    signals.after_task_publish.connect(after_publish, weak=False)
    unsubscribe = telemetry.subscribe(on_applied, events=["message.applied"])

    def uninstall() -> None:
        signals.before_task_publish.disconnect(before_publish)
        signals.after_task_publish.disconnect(after_publish)
        unsubscribe()

    return uninstall


def console_exporter() -> None:
    """Installs a global tracer provider that prints every span on stdout (debugging)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
