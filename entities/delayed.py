"""The durable delayed set of a partition: messages sent with ``countdown`` or ``eta``.

A delayed message waits in a Redis sorted set per partition
(``entities.{pN}.delayed``), scored by the time it is due in milliseconds
since the epoch, its member the exact message bytes. The sender adds it there
instead of to the partition queue; the partition owner adds it there when one
arrives on the queue early (Celery's own publish, a client without our router),
before acknowledging it. The owner moves due messages to the tail of the
partition queue with one script.

Invariants:

- a delayed message is never applied before it is due: it reaches the queue
  only through the move, which takes only members scored at or before the
  owner's clock, and an owner that fetches one early puts it back;
- nothing is lost or moved twice: the move is one script (ZRANGEBYSCORE, LPUSH,
  ZREM), so a crash leaves each member either in the set or on the queue,
  never both or neither; adding a member that is already there (a redelivery
  of the message that was being delayed) changes nothing;
- order: a delayed message takes its place in its entity's order when it
  becomes due, after whatever was queued before that moment, not when it was
  sent; messages due at the same millisecond are moved in the order of their
  bytes.

The set is keyed by partition like the queue: anything that moves a
partition's queue (a change of partition count) must move its delayed set too.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

from entities.routing import queue_name

#: Most messages one move takes; a longer backlog is moved by the next calls.
MOVE_LIMIT = 500

# KEYS: delayed set, queue. ARGV: now_ms, limit. Moves the members due at or before
# now_ms (oldest first) to the queue's tail; returns {moved, score of the next member
# or -1}.
_MOVE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, raw in ipairs(due) do
  redis.call('LPUSH', KEYS[2], raw)
  redis.call('ZREM', KEYS[1], raw)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, nxt[2]}
"""


def delayed_key(partition: int) -> str:
    """The Redis sorted set of the partition's delayed messages, scored by due time (ms)."""
    return f"{queue_name(partition)}.delayed"


def due_ms(when: dt.datetime | float) -> int:
    """A due time (an aware datetime, or seconds since the epoch) as the set's score."""
    seconds = when.timestamp() if isinstance(when, dt.datetime) else when
    return math.ceil(seconds * 1000)  # never before: moved when due, not a fraction early


def add(client: Any, partition: int, items: Iterable[tuple[bytes, int]]) -> None:
    """Adds (message bytes, due ms) to the partition's delayed set, in one round trip."""
    mapping = {raw: score for raw, score in items}
    if mapping:
        client.zadd(delayed_key(partition), mapping)


class DelayedSet:
    """The move of due messages from a partition's delayed set to its queue."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._move = client.register_script(_MOVE)

    def move_due(self, partition: int, now_ms: int) -> tuple[int, int | None]:
        """Moves the messages due at ``now_ms`` to the queue's tail; returns how many, and
        the due time (ms) of the next one still waiting (None: none)."""
        moved, nxt = self._move(
            keys=[delayed_key(partition), queue_name(partition)], args=[now_ms, MOVE_LIMIT]
        )
        nxt = int(float(nxt))
        return int(moved), (None if nxt < 0 else nxt)

    def add(self, partition: int, items: Iterable[tuple[bytes, int]]) -> None:
        """Adds (message bytes, due ms) to the partition's delayed set."""
        add(self.client, partition, items)
