"""Example entities: Counter, RateLimiter and Account (ENTITIES_MODULES=examples)."""

from examples.account import Account
from examples.counter import Counter
from examples.rate_limiter import RateLimiter

__all__ = ["Account", "Counter", "RateLimiter"]
