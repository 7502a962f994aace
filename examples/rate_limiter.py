"""A token-bucket rate limiter: one entity per client key."""

from __future__ import annotations

import time

from entities import Entity, handler


class RateLimiter(Entity, name="rate_limiter"):
    """Allows ``capacity`` requests at once, refilled at ``rate_per_s``."""

    capacity: float = 10.0
    rate_per_s: float = 1.0
    tokens: float = 10.0
    updated_at: float = 0.0

    @handler
    def configure(self, capacity: float, rate_per_s: float) -> None:
        if capacity <= 0 or rate_per_s <= 0:
            raise ValueError("capacity and rate_per_s must be positive")
        self.capacity, self.rate_per_s = capacity, rate_per_s
        self.tokens = min(self.tokens, capacity)

    @handler
    def acquire(self, cost: float = 1.0) -> bool:
        now = time.time()
        if self.updated_at:
            self.tokens = min(
                self.capacity, self.tokens + (now - self.updated_at) * self.rate_per_s
            )
        self.updated_at = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
