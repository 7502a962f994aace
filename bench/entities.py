"""The entity classes the bench's workers serve (ENTITIES_MODULES=bench.entities)."""

from __future__ import annotations

import time
from typing import Any

from entities import Entity, handler


class Counter(Entity, name="counter"):
    """A small entity: one integer; ``increment`` replies with the new count."""

    count: int = 0

    @handler
    def increment(self, amount: int = 1) -> int:
        self.count += amount
        return self.count

    @handler
    def get(self) -> int:
        return self.count


class AlarmProbe(Entity, name="alarm_probe"):
    """Records how late its alarm fired: ``payload["due"]`` is the intended Unix time."""

    fired: int = 0
    lateness_s: float | None = None

    @handler
    def get(self) -> float | None:
        return self.lateness_s

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.fired += 1
        if self.lateness_s is None:
            self.lateness_s = time.time() - float(payload["due"])
