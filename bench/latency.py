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


#: The client calls measured against B, alternating call by call on one worker.
CLIENTS = ("ref", "aio", "delay")


def client_round_trips(
    entity_ids: Sequence[str], calls: int, warmup: int, timeout_s: float
) -> dict[str, list[float]]:
    """Milliseconds of a strict increment through each client, ``calls`` each (after
    ``warmup`` unrecorded rounds), the three alternating call by call so drift hits all alike:

    ``ref``: ``Counter.ref(id).increment(1)``; ``aio``: ``await
    Counter.ref(id).increment.aio(1)`` on one kept event loop (timed inside the loop);
    ``delay``: ``send_to_entity.delay(...).get()``.
    """
    import asyncio

    from bench.entities import Counter
    from entities import aio
    from workers import send_to_entity

    msg = {"op": "increment", "args": [1]}
    loop = asyncio.new_event_loop()

    async def awaited(entity_id: str) -> float:
        started = time.perf_counter()
        await Counter.ref(entity_id, timeout=timeout_s).increment.aio(1)
        return time.perf_counter() - started

    def timed(call: Any) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    methods = {
        "ref": lambda e: timed(lambda: Counter.ref(e, timeout=timeout_s).increment(1)),
        "aio": lambda e: loop.run_until_complete(awaited(e)),
        "delay": lambda e: timed(
            lambda: send_to_entity.delay("counter", e, msg).get(timeout=timeout_s)
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in CLIENTS}
    try:
        for i in range(warmup + calls):
            entity_id = entity_ids[i % len(entity_ids)]
            for name in CLIENTS:
                seconds = methods[name](entity_id)
                if i >= warmup:
                    samples[name].append(seconds * 1000)
    finally:
        loop.run_until_complete(aio.aclose())
        loop.close()
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
