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

import dataclasses
from collections.abc import Sequence
from typing import Any

import redis

from entities.inspect import WORKERS_KEY
from entities.redis_client import redis_from_url
from entities.routing import (
    held_set_key,
    inflight_key,
    lease_key,
    links_key,
    paused_key,
    queue_name,
    resume_set_key,
)

__all__ = ["Fetched", "Lane", "PartitionQueues", "redis_from_url"]

# KEYS: queue, inflight, lease, paused, held set, resume set. ARGV: token, skip, n,
# ttl_ms. Nil if the lease is not ours. Else it renews the lease for ttl_ms (if > 0: a
# runner that fetches keeps its lease, whether or not its worker's heartbeat thread
# gets the GIL in time) and returns {messages, paused, holds}: ``holds`` counts the
# partition's held and to-be-resumed entities (their names are read separately, only
# when there are some). Unless the partition is paused, tops the in-flight list up to
# skip + n from the queue and returns the n oldest entries after the ``skip`` oldest
# (those are applied but not yet acknowledged), newest first.
_FETCH = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return false end
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
local holds = redis.call('SCARD', KEYS[5]) + redis.call('SCARD', KEYS[6])
if redis.call('EXISTS', KEYS[4]) == 1 then return {{}, 1, holds} end
local skip = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local have = redis.call('LLEN', KEYS[2])
while have < skip + n do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') then break end
  have = have + 1
end
if have <= skip then return {{}, 0, holds} end
return {redis.call('LRANGE', KEYS[2], -(skip + n), -(skip + 1)), 0, holds}
"""

# KEYS: inflight, lease, links list, result keys..., link markers... ARGV: token, n,
# ttl seconds (0: none), number of result keys r, marker ttl seconds (0: none), c,
# payloads..., link records... Stores and publishes each reply unless one is stored
# already (the first reply wins, as in Celery's own backend). The first c replies are
# committed ones (recorded with a commit: true whoever stores them) and are stored
# first, always. Then, only if the lease is still ours: the other replies (computed
# on the owner's memory: a stale owner's would be wrong) are stored; each link record
# (a message's callbacks with its reply, see workers.links) is pushed onto the links
# list unless its marker exists (a message's callbacks are recorded once); and the n
# oldest in-flight entries are dropped. Returns n, or -1 if the lease is lost. One
# script, so a reply that cannot be stored stops the acknowledgement after it.
_SETTLE = """
local ttl = tonumber(ARGV[3])
local last_reply = 3 + tonumber(ARGV[4])
local link_ttl = tonumber(ARGV[5])
local committed = tonumber(ARGV[6])
local function store(i)
  local ok
  if ttl > 0 then
    ok = redis.call('SET', KEYS[i], ARGV[i + 3], 'EX', ttl, 'NX')
  else
    ok = redis.call('SET', KEYS[i], ARGV[i + 3], 'NX')
  end
  if ok then redis.call('PUBLISH', KEYS[i], ARGV[i + 3]) end
end
local function link(i)
  local ok
  if link_ttl > 0 then
    ok = redis.call('SET', KEYS[i], 1, 'EX', link_ttl, 'NX')
  else
    ok = redis.call('SET', KEYS[i], 1, 'NX')
  end
  if ok then redis.call('LPUSH', KEYS[3], ARGV[i + 3]) end
end
for i = 4, 3 + committed do store(i) end
local n = tonumber(ARGV[2])
if n == 0 and #KEYS == 3 + committed then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
for i = 4 + committed, last_reply do store(i) end
for i = last_reply + 1, #KEYS do link(i) end
if n == 0 then return 0 end
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


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What one fetch returned: messages (oldest first) and the partition's pause state."""

    raws: list[bytes]
    paused: bool = False
    holds: bool = False  # some entity of the partition is held or to be resumed


@dataclasses.dataclass(frozen=True)
class Replies:
    """Replies ready for the result backend: its keys and their payloads, in order.

    The first ``committed`` are replies recorded with a commit, stored even by an
    owner that lost its lease; the others only while the lease is the settler's.
    """

    keys: Sequence[str | bytes]
    payloads: Sequence[str | bytes]
    ttl_s: int = 0
    committed: int = 0
    #: (marker key, record) of messages whose callbacks fire after these replies
    #: (see workers.links); each record is pushed once per marker.
    links: Sequence[tuple[str, str | bytes]] = ()
    link_ttl_s: int = 0


NO_REPLIES = Replies((), ())


class PartitionQueues:
    """The Redis operations on partition queues, leases and in-flight lists."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._fetch = client.register_script(_FETCH)
        self._settle = client.register_script(_SETTLE)
        self._loaded = False  # the pipelined scripts are in the server's script cache
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

    def acquire_many(self, tokens: dict[int, str], ttl_ms: int) -> list[int]:
        """Takes, in one round trip, each free lease of ``tokens`` (partition: token);
        returns the partitions taken."""
        with self.client.pipeline(transaction=False) as pipe:
            for partition, token in tokens.items():
                pipe.set(lease_key(partition), token, nx=True, px=ttl_ms)
            results = pipe.execute()
        return [p for p, ok in zip(tokens, results, strict=True) if ok]

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

    def lane(self, partition: int, token: str, lease_ttl_ms: int = 0) -> Lane:
        """A runner's own connection for its partition's exchanges (see :class:`Lane`);
        each fetch renews the lease for ``lease_ttl_ms`` (0: not)."""
        return Lane(self, partition, token, lease_ttl_ms)

    def settle(self, partition: int, token: str, replies: Replies, ack: int) -> bool:
        """Stores ``replies`` (the first reply of a task id wins; those not committed
        only if the lease is ours), records their callbacks, then acknowledges the ``ack``
        oldest in-flight messages, in one script; False if the lease is lost."""
        if not (ack or replies.keys or replies.links):
            return True
        keys, args = self._settle_args(partition, token, replies, ack)
        return int(self._settle(keys=keys, args=args)) >= 0

    def store_replies(self, replies: Replies) -> None:
        """Stores every one of ``replies`` (the first reply of a task id wins; the caller
        vouches for them) and acknowledges nothing: the settle script with no
        acknowledgement and no lease, which touches no queue."""
        self.settle(0, "", dataclasses.replace(replies, committed=len(replies.keys)), 0)

    @staticmethod
    def _settle_args(
        partition: int, token: str, replies: Replies, ack: int
    ) -> tuple[list[str | bytes], list[int | str | bytes]]:
        keys = [
            inflight_key(partition),
            lease_key(partition),
            links_key(partition),
            *replies.keys,
            *(marker for marker, _ in replies.links),
        ]
        args = [
            token,
            ack,
            replies.ttl_s,
            len(replies.keys),
            replies.link_ttl_s,
            replies.committed,
            *replies.payloads,
            *(record for _, record in replies.links),
        ]
        return keys, args

    def _fetch_command(
        self, partition: int, token: str, n: int, skip: int, lease_ttl_ms: int = 0
    ) -> tuple[Any, ...]:
        keys = (
            queue_name(partition),
            inflight_key(partition),
            lease_key(partition),
            paused_key(partition),
            held_set_key(partition),
            resume_set_key(partition),
        )
        return ("EVALSHA", self._fetch.sha, len(keys), *keys, token, skip, n, lease_ttl_ms)

    def _settle_command(
        self, partition: int, token: str, replies: Replies, ack: int
    ) -> tuple[Any, ...]:
        keys, args = self._settle_args(partition, token, replies, ack)
        return ("EVALSHA", self._settle.sha, len(keys), *keys, *args)

    def _load_scripts(self) -> None:
        # Pipelined EVALSHAs skip redis-py's per-pipeline SCRIPT EXISTS round trip, so
        # the scripts are loaded once here; a NOSCRIPT reply fails the round trip (the
        # runner retries from the oldest unacknowledged message) and loads them again.
        if not self._loaded:
            for script in (self._fetch, self._settle):
                self.client.script_load(script.script)
            self._loaded = True

    def forward(self, raws_by_partition: dict[int, list[bytes]]) -> None:
        """Appends messages, unchanged and in order, to other partitions' queues."""
        with self.client.pipeline(transaction=False) as pipe:
            for partition, raws in raws_by_partition.items():
                for raw in raws:
                    pipe.lpush(queue_name(partition), raw)
            pipe.execute()

    def depth(self, partition: int) -> tuple[int, int]:
        """(queued, in flight) message counts of a partition."""
        with self.client.pipeline() as pipe:
            pipe.llen(queue_name(partition))
            pipe.llen(inflight_key(partition))
            queued, inflight = pipe.execute()
        return int(queued), int(inflight)


class Lane:
    """One runner's own Redis connection: each exchange is one round trip.

    An exchange settles what the runner has committed (its replies and the
    acknowledgement), waits for a message if the queue was empty, and fetches
    the next batch. When it need not wait, the fetch goes first and the settle
    after it, and the settle's reply is read with the next exchange's: the
    runner applies the next batch while Redis stores the last one's replies.
    Both run in order on this one connection, so the fetch skips exactly the
    messages that settle acknowledges.
    """

    def __init__(
        self, queues: PartitionQueues, partition: int, token: str, lease_ttl_ms: int = 0
    ) -> None:
        self.queues = queues
        self.partition = partition
        self.token = token
        self.lease_ttl_ms = lease_ttl_ms
        self._conn: Any = None
        self._settle_unread = False  # the last exchange's settle has not been read yet

    def exchange(
        self,
        n: int,
        pending: int,
        *,
        replies: Replies = NO_REPLIES,
        ack: int = 0,
        wait_s: float = 0.0,
    ) -> Fetched | None:
        """Stores ``replies``, acknowledges the ``ack`` oldest of the ``pending``
        unacknowledged messages, waits up to ``wait_s`` (if > 0) for one to be
        queued, and fetches up to ``n`` after the unacknowledged ones that remain.
        None if the lease is lost."""
        q = self.queues
        q._load_scripts()
        settle = (
            q._settle_command(self.partition, self.token, replies, ack)
            if ack or replies.keys or replies.links
            else None
        )
        late = settle is not None and wait_s <= 0  # fetch first; read the settle later
        commands: list[tuple[Any, ...]] = []
        if settle is not None and late:
            commands = [self._fetch(q, n, pending), settle]
        else:
            if settle is not None:
                commands.append(settle)
            if wait_s > 0:
                queue = queue_name(self.partition)
                inflight = inflight_key(self.partition)
                commands.append(("BLMOVE", queue, inflight, "RIGHT", "LEFT", wait_s))
            commands.append(self._fetch(q, n, pending - ack))
        results = self._round_trip(commands, len(commands) - (1 if late else 0))
        if results is None:
            return None
        self._settle_unread = late
        if settle is not None and not late and int(results[0]) < 0:
            return None
        fetched = results[-1]
        if fetched is None:
            return None
        raws, paused, holds = fetched
        return Fetched(list(reversed(raws)), bool(paused), bool(holds))

    @property
    def confirmed(self) -> bool:
        """True when every settle sent has been read back (none found the lease lost)."""
        return not self._settle_unread

    @property
    def settle_unread(self) -> bool:
        """True while the last exchange's settle was sent but its reply not yet read."""
        return self._settle_unread

    def _fetch(self, q: PartitionQueues, n: int, skip: int) -> tuple[Any, ...]:
        return q._fetch_command(self.partition, self.token, n, skip, self.lease_ttl_ms)

    def settle(self, replies: Replies, ack: int) -> bool:
        """Stores ``replies``, then acknowledges the ``ack`` oldest in-flight messages;
        False if the lease is lost."""
        if not (ack or replies.keys or replies.links):
            return not self._settle_unread or self._round_trip([], 0) is not None
        command = self.queues._settle_command(self.partition, self.token, replies, ack)
        results = self._round_trip([command], 1)
        self._settle_unread = False
        return results is not None and int(results[0]) >= 0

    def close(self) -> None:
        """Reads what is still unread and gives the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        pool = self.queues.client.connection_pool
        try:
            if self._settle_unread:
                conn.read_response()
        except Exception:
            conn.disconnect()
        finally:
            self._settle_unread = False
            pool.release(conn)

    def _round_trip(self, commands: list[tuple[Any, ...]], read: int) -> list[Any] | None:
        """Sends ``commands``, reads the last exchange's unread settle (None if it found
        the lease lost), then the first ``read`` replies of ``commands``."""
        if self._conn is None:
            self._conn = self.queues.client.connection_pool.get_connection()
        conn = self._conn
        try:
            if commands:
                # No health check while a reply is unread: its PING would read that reply.
                conn.send_packed_command(
                    conn.pack_commands(commands), check_health=not self._settle_unread
                )
            lost = False
            if self._settle_unread:
                self._settle_unread = False
                lost = int(conn.read_response()) < 0
            results = [conn.read_response() for _ in range(read)]
        except redis.exceptions.NoScriptError:
            self.queues._loaded = False  # the server lost its script cache (a restart)
            self._drop()
            raise
        except BaseException:
            self._drop()
            raise
        if lost:
            self._drop()  # replies of what was just sent are not read
            return None
        return results

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._settle_unread = False
        if conn is not None:
            conn.disconnect()
            self.queues.client.connection_pool.release(conn)
