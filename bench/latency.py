"""Sequential call round trips: send one message, wait for its reply, repeat."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from bench.systems import System


def round_trips(system: System, entity_ids: Sequence[str], calls: int, warmup: int) -> list[float]:
    """Milliseconds of ``calls`` sequential calls (after ``warmup`` unrecorded ones)."""
    samples: list[float] = []
    for i in range(warmup + calls):
        entity_id = entity_ids[i % len(entity_ids)]
        started = time.perf_counter()
        system.call(entity_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if i >= warmup:
            samples.append(elapsed_ms)
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """p50, p90, p99, max and count of latency samples in milliseconds."""
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(max(values), 3),
    }
