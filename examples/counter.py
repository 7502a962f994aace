"""The Counter of the README."""

from __future__ import annotations

from datetime import datetime, timezone

from entities import Entity, handler


class Counter(Entity, name="counter"):
    """Counts; replies with the new count."""

    count: int = 0
    last_incremented_at: datetime | None = None

    @handler
    def increment(self, amount: int = 1) -> int:
        self.count += amount
        self.last_incremented_at = datetime.now(timezone.utc)
        return self.count

    @handler
    def get(self) -> int:
        return self.count
