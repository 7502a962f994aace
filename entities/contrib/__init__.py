"""Integrations with the tools operators already run, each behind an optional extra.

- :mod:`entities.contrib.prometheus` (``celery-entities[prometheus]``): counters
  and latency histograms fed by telemetry, served over HTTP by a worker.
- :mod:`entities.contrib.otel` (``celery-entities[otel]``): trace context from
  the client's ``send_to_entity`` to the worker's commit.
- :mod:`entities.contrib.flower`: Celery task events for entity messages, so
  Flower and ``celery events`` show them (a worker started with ``-E``).
- :mod:`entities.contrib.worker`: turns them on inside a worker from the
  environment.

Nothing here is imported by ``entities`` itself.
"""
