"""Helpers for tests that watch worker memory and wait for conditions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.1) -> T:
    """Polls ``check`` until it returns a truthy value; returns it, or fails with the last one."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last: {value!r})")
        time.sleep(interval_s)
        value = check()
    return value


def worker_stats(redis_client: Any) -> list[dict[str, Any]]:
    """The stats every live worker published (resident, hibernated, partitions, ...)."""
    from workers.service import STATS_KEY

    return [json.loads(v) for v in redis_client.hgetall(STATS_KEY).values()]


def memory_counts(redis_client: Any) -> tuple[int, int]:
    """(resident, hibernated) summed over live workers."""
    stats = worker_stats(redis_client)
    return sum(s["resident"] for s in stats), sum(s["hibernated"] for s in stats)
