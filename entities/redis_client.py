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


def async_redis_from_url(url: str, max_connections: int = 16) -> Any:
    """A redis.asyncio client for a kombu/Celery Redis URL (including ``redis+socket://``).

    Its pool holds at most ``max_connections``; a command beyond them waits for
    a free one, so thousands of calls in flight share a few connections.
    """
    import redis.asyncio

    if url.startswith("redis+socket://"):
        pool = redis.asyncio.BlockingConnectionPool(
            connection_class=redis.asyncio.UnixDomainSocketConnection,
            path=unquote(urlparse(url).path),
            max_connections=max_connections,
            timeout=None,
        )
    else:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None
        )
    return redis.asyncio.Redis(connection_pool=pool)
