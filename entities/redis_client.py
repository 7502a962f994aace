"""The redis-py client of a Celery/kombu Redis URL, shared by workers and inspection."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

import redis


def redis_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for a kombu/Celery Redis URL (including ``redis+socket://``)."""
    if url.startswith("redis+socket://"):
        parsed = urlparse(url)
        return redis.Redis(unix_socket_path=unquote(parsed.path), **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def async_redis_from_url(url: str, **kwargs: Any) -> Any:
    """A redis.asyncio client for a kombu/Celery Redis URL (including ``redis+socket://``)."""
    import redis.asyncio

    if url.startswith("redis+socket://"):
        parsed = urlparse(url)
        return redis.asyncio.Redis(unix_socket_path=unquote(parsed.path), **kwargs)
    return redis.asyncio.Redis.from_url(url, **kwargs)
