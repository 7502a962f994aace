"""Entity classes the integration tests send messages to.

Workers load them through ENTITIES_MODULES=tests.fixture_entities.
"""

from __future__ import annotations

import os
import time
from typing import Any

from entities import Entity, field, handler


class Counter(Entity, name="counter"):
    count: int = 0

    @handler
    def increment(self, amount: int = 1) -> int:
        self.count += amount
        return self.count

    @handler
    def get(self) -> int:
        return self.count


class Boom(Exception):
    """A handler's own error."""


class Fragile(Entity, name="fragile"):
    value: int = 0

    @handler
    def set(self, value: int) -> int:
        self.value = value
        return value

    @handler
    def set_then_fail(self, value: int) -> None:
        self.value = value
        raise Boom(f"refusing {value}")

    @handler
    def get(self) -> int:
        return self.value

    @handler
    def bad_state(self) -> None:
        self.value = object()  # type: ignore[assignment]


class Recorder(Entity, name="recorder"):
    """Records which process applied each message, and when, to check exclusivity."""

    log: list[Any] = field(default_factory=list)
    count: int = 0

    @handler
    def record(self, seq: int, hold_s: float = 0.0) -> int:
        start = time.time()
        if hold_s:
            time.sleep(hold_s)
        self.count += 1
        self.log.append([seq, os.getpid(), start, time.time()])
        return self.count


class Sleepy(Entity, name="sleepy"):
    count: int = 0

    @handler
    def slow_increment(self, seconds: float) -> int:
        time.sleep(seconds)
        self.count += 1
        return self.count
