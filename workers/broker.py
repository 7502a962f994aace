"""Reliable reads of partition queues: Lua scripts over the queue and its in-flight list.

Producers LPUSH Celery messages onto a partition's queue (kombu's Redis
transport). The owner moves them atomically into the partition's in-flight
list and acknowledges them by trimming that list after their commit, so a
worker killed at any instant loses nothing: what it fetched is still in the
in-flight list, and the next owner processes it first, in order. Fetch and ack
check the lease token inside the script, so a worker that lost its lease can
neither take nor acknowledge messages.

Layout: messages enter the in-flight list on the left; its right end holds the
oldest unacknowledged message.
"""

from __future__ import annotations

import redis

from entities.inspect import WORKERS_KEY
from entities.redis_client import redis_from_url
from entities.routing import inflight_key, lease_key, queue_name

__all__ = ["PartitionQueues", "redis_from_url"]

# KEYS: queue, inflight, lease. ARGV: token, skip, n. Tops the in-flight list up
# to skip + n from the queue and returns the n oldest entries after the ``skip``
# oldest (those are applied but not yet acknowledged), newest first; nil if the
# lease is not ours.
_FETCH = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return false end
local skip = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local have = redis.call('LLEN', KEYS[2])
while have < skip + n do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') then break end
  have = have + 1
end
if have <= skip then return {} end
return redis.call('LRANGE', KEYS[2], -(skip + n), -(skip + 1))
"""

# KEYS: inflight, lease. ARGV: token, n. Drops the n oldest in-flight entries.
_ACK = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
redis.call('LTRIM', KEYS[1], 0, -n - 1)
return n
"""

# KEYS: leases. ARGV: token per key..., ttl_ms. Returns 1 per key still ours (renewed).
_RENEW = """
local ttl = ARGV[#ARGV]
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('PEXPIRE', key, ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# The worker registry is a sorted set scored by when each heartbeat expires, in the
# Redis server's own milliseconds, so hosts whose clocks disagree still agree on it.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: registry. ARGV: worker id, ttl_ms. Marks the worker live for ttl_ms, drops
# expired entries, returns the live count. (replicate_commands: Redis 6 allows writes
# after TIME only with effects replication; Redis 7 always replicates effects.)
_HEARTBEAT = (
    "redis.replicate_commands()"
    + _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: registry. Counts the workers whose heartbeat has not expired.
_LIVE = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: lease. ARGV: token. Deletes the lease only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class PartitionQueues:
    """The Redis operations on partition queues, leases and in-flight lists."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._fetch = client.register_script(_FETCH)
        self._ack = client.register_script(_ACK)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._live = client.register_script(_LIVE)

    def heartbeat(self, worker_id: str, ttl_ms: int) -> int:
        """Marks ``worker_id`` live for ``ttl_ms`` (server time); returns the live count."""
        return int(self._heartbeat(keys=[WORKERS_KEY], args=[worker_id, ttl_ms]))

    def live_workers(self) -> int:
        """How many workers' heartbeats have not expired (server time)."""
        return int(self._live(keys=[WORKERS_KEY]))

    def acquire(self, partition: int, token: str, ttl_ms: int) -> bool:
        """Takes the partition's lease if nobody holds it."""
        return bool(self.client.set(lease_key(partition), token, nx=True, px=ttl_ms))

    def renew(self, tokens: dict[int, str], ttl_ms: int) -> dict[int, bool]:
        """Extends the leases still held; returns which partitions are still ours."""
        if not tokens:
            return {}
        parts = list(tokens)
        result = self._renew(
            keys=[lease_key(p) for p in parts], args=[*(tokens[p] for p in parts), ttl_ms]
        )
        return {p: bool(r) for p, r in zip(parts, result, strict=True)}

    def release(self, partition: int, token: str) -> None:
        """Gives the lease up if it is still ours."""
        self._release(keys=[lease_key(partition)], args=[token])

    def holders(self, partitions: range) -> dict[int, bytes | str | None]:
        """The current lease token of each partition (None: free)."""
        values = self.client.mget([lease_key(p) for p in partitions])
        return dict(zip(partitions, values, strict=True))

    def fetch(self, partition: int, token: str, n: int, skip: int = 0) -> list[bytes] | None:
        """Up to ``n`` messages after the ``skip`` oldest unacknowledged ones, oldest first.

        None if the lease is lost.
        """
        keys = [queue_name(partition), inflight_key(partition), lease_key(partition)]
        raw = self._fetch(keys=keys, args=[token, skip, n])
        if raw is None:
            return None
        return list(reversed(raw))

    def ack(self, partition: int, token: str, n: int) -> bool:
        """Acknowledges the ``n`` oldest in-flight messages; False if the lease is lost."""
        return (
            int(self._ack(keys=[inflight_key(partition), lease_key(partition)], args=[token, n]))
            >= 0
        )

    def forward(self, raws_by_partition: dict[int, list[bytes]]) -> None:
        """Appends messages, unchanged and in order, to other partitions' queues."""
        with self.client.pipeline(transaction=False) as pipe:
            for partition, raws in raws_by_partition.items():
                for raw in raws:
                    pipe.lpush(queue_name(partition), raw)
            pipe.execute()

    def wait(self, partition: int, timeout_s: float) -> None:
        """Blocks until a message arrives (moving it in flight) or ``timeout_s`` passes."""
        self.client.blmove(
            queue_name(partition),
            inflight_key(partition),
            timeout_s,  # type: ignore[arg-type]  # redis-py takes float seconds; typed as int
            "RIGHT",
            "LEFT",
        )

    def depth(self, partition: int) -> tuple[int, int]:
        """(queued, in flight) message counts of a partition."""
        with self.client.pipeline() as pipe:
            pipe.llen(queue_name(partition))
            pipe.llen(inflight_key(partition))
            queued, inflight = pipe.execute()
        return int(queued), int(inflight)
