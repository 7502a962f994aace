"""The forwarder of Celery's default queue: one worker at a time, reliably, in queue order.

A client without our router (a plain Celery app, a client in another
language, ``app.send_task`` by name with Celery's default routing) publishes
``send_to_entity`` calls to Celery's default queue, ``celery``
(:data:`~entities.routing.DEFAULT_QUEUE`). No Celery consumer reads that queue:
Celery's consumer and pool would run the calls in parallel, and kombu's Redis
transport loses a popped message when its worker is killed. Instead the queue
is read like a partition:

- A lease (:data:`~entities.routing.FORWARDER_LEASE_KEY`, ``SET NX PX``, renewed
  by every fetch) lets one worker at a time forward. Every worker runs a
  forwarder thread; the others wait for the lease.
- A fetch script moves messages atomically from the default queue (and kombu's
  priority sub-queues of it) into the in-flight list
  (:data:`~entities.routing.FORWARDER_INFLIGHT_KEY`) and returns the oldest.
- Each message gets a destination: a ``send_to_entity`` call goes to its
  entity's partition queue unchanged (same task id, headers and options);
  another task of this app (alarm dispatch from an older beat) goes to
  :data:`~entities.routing.TASKS_QUEUE`, the queue this app's Celery consumer
  reads (hardened in :mod:`workers.consumer`); a well-formed call whose entity
  message is malformed gets a ``BadMessage`` reply; anything else is
  dead-lettered with its reason. Nothing here is ever fatal.
- A settle script, only while the lease is still this forwarder's, pushes
  each message to its destination and trims it from the in-flight list, in
  one step.

Invariant: every message on the default queue leaves the in-flight list exactly
once, in queue order, to its destination. Hence messages one producer
publishes in sequence to one entity reach the entity's partition queue in that
sequence, and are applied in it (the partition's own invariant). A forwarder
killed at any instant leaves its fetched messages in the in-flight list; the
next lease holder (one lease TTL later) settles them first, oldest first.
Forwarding and trimming are one script, so nothing is forwarded twice; a
forwarder that lost its lease can neither fetch nor settle. What a forwarder
does outside Redis before settling (a dead letter, a BadMessage reply) may be
done again by the next holder: a dead letter can appear twice, a reply is
stored once (the first wins).

The scripts touch the default queue, the forwarder's keys and partition queues
at once: like Celery's default queue itself, this needs one Redis server, not
a Redis Cluster.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from entities.errors import BadMessage
from entities.messages import parse_envelope
from entities.routing import (
    DEFAULT_QUEUE,
    FORWARDER_INFLIGHT_KEY,
    FORWARDER_LEASE_KEY,
    TASK_NAME,
    TASKS_QUEUE,
    partition_for,
    queue_name,
)
from entities.settings import Settings
from entities.store import CommitBatch, DeadLetter, Store
from workers.consumer import screen_envelope
from workers.processor import Outcome
from workers.replies import ReplyWriter

log = logging.getLogger(__name__)

#: Messages moved and settled per round.
BATCH = 100
#: Seconds a blocking wait for the default queue lasts (the lease outlives it).
WAIT_S = 0.5
#: Longest part of a dead message kept in the store or in the log.
MAX_DEAD_LETTER_CHARS = 64 << 10
#: kombu's Redis priority sub-queues of a queue: ``<name>\x06\x16<priority>``.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

# KEYS: lease, inflight, source queues (in reading order). ARGV: token, n, ttl_ms.
# False if the lease is not ours. Else renews the lease, tops the in-flight list up
# to n from the sources and returns its n oldest entries, newest first.
_FETCH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local n = tonumber(ARGV[2])
local have = redis.call('LLEN', KEYS[2])
for i = 3, #KEYS do
  while have < n do
    if not redis.call('LMOVE', KEYS[i], KEYS[2], 'RIGHT', 'LEFT') then break end
    have = have + 1
  end
end
if have == 0 then return {} end
return redis.call('LRANGE', KEYS[2], -n, -1)
"""

# KEYS: lease, inflight, destination queues. ARGV: token, then one destination per
# settled message, oldest first: an index into KEYS, or 0 for none (answered or
# dead-lettered). -1 if the lease is not ours; else pushes each message to its
# destination and drops them all from the in-flight list; returns their count.
_SETTLE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = #ARGV - 1
for i = 1, n do
  local d = tonumber(ARGV[i + 1])
  if d > 0 then redis.call('LPUSH', KEYS[d], redis.call('LINDEX', KEYS[2], -i)) end
end
redis.call('LTRIM', KEYS[2], 0, -n - 1)
return n
"""

# KEYS: lease. ARGV: token. Deletes the lease only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DefaultQueueForwarder(threading.Thread):
    """Forwards Celery's default queue while this worker holds its lease (see the module)."""

    def __init__(
        self,
        client: redis.Redis,
        token: str,
        settings: Settings,
        app: Any,
        store: Store,
        replies: ReplyWriter,
    ) -> None:
        super().__init__(name="entities-forwarder", daemon=True)
        self.client = client
        self.token = token
        self.settings = settings
        self.app = app
        self.store = store
        self.replies = replies
        self.ttl_ms = max(1000, int(settings.lease_ttl_s * 1000))
        self.holding = False
        self.forwarded = 0
        self._stopping = threading.Event()
        self._fetch = client.register_script(_FETCH)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._sources = [DEFAULT_QUEUE + suffix for suffix in PRIORITY_SUFFIXES]

    def stop(self) -> None:
        """Asks the loop to finish the messages in hand and give the lease up."""
        self._stopping.set()

    def run(self) -> None:
        backoff = idle = self.settings.lease_ttl_s / 4
        while not self._stopping.is_set():
            try:
                if not self.holding:
                    self.holding = bool(
                        self.client.set(FORWARDER_LEASE_KEY, self.token, nx=True, px=self.ttl_ms)
                    )
                    if self.holding:
                        log.info("forwarding Celery's default queue %r", DEFAULT_QUEUE)
                    else:
                        self._stopping.wait(idle)
                        continue
                if not self.step():
                    log.warning("lost the lease of the default queue; another worker forwards")
                    self.holding = False
                backoff = idle
            except Exception:
                log.warning("forwarding the default queue failed; retrying", exc_info=True)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.settings.lease_ttl_s)
        if self.holding:
            try:
                self._release(keys=[FORWARDER_LEASE_KEY], args=[self.token])
            except Exception:
                log.warning("could not release the lease of the default queue", exc_info=True)
            self.holding = False

    def step(self) -> bool:
        """Forwards one batch, or waits briefly for one; False if the lease is lost."""
        raws = self._fetch(
            keys=[FORWARDER_LEASE_KEY, FORWARDER_INFLIGHT_KEY, *self._sources],
            args=[self.token, BATCH, self.ttl_ms],
        )
        if raws is None:
            return False
        if not raws:
            # Moved in flight as it arrives; the next fetch returns it (in order, since
            # it leaves the queue's oldest end after everything fetched before it).
            wait_s: Any = WAIT_S  # redis-py's stub says int; the server takes seconds as a float
            self.client.blmove(DEFAULT_QUEUE, FORWARDER_INFLIGHT_KEY, wait_s, "RIGHT", "LEFT")
            return True
        raws = list(reversed(raws))
        destinations = [self._destination(raw) for raw in raws]
        queues = sorted({d for d in destinations if d is not None})
        index = {q: i + 3 for i, q in enumerate(queues)}  # KEYS are 1-based, after 2 fixed
        settled = self._settle(
            keys=[FORWARDER_LEASE_KEY, FORWARDER_INFLIGHT_KEY, *queues],
            args=[self.token, *(0 if d is None else index[d] for d in destinations)],
        )
        if int(settled) < 0:
            return False
        self.forwarded += sum(d is not None for d in destinations)
        return True

    def _destination(self, raw: bytes) -> str | None:
        """Where one message goes (None: answered or dead-lettered here instead); never
        raises, so no message can stop the queue."""
        try:
            return self._route(raw)
        except Exception as exc:  # a bug: the message must not block the ones behind it
            log.exception("could not forward a message from the default queue")
            self._dead_letter(raw, f"the default queue's forwarder could not handle it: {exc!r}")
            return None

    def _route(self, raw: bytes) -> str | None:
        unreadable = screen_envelope(raw)
        if unreadable is not None:
            self._dead_letter(raw, unreadable)
            return None
        env = parse_envelope(raw, self.settings.max_message_bytes)
        name = env.headers.get("task")
        other_task = isinstance(name, str) and name != TASK_NAME and name in self.app.tasks
        if env.error is not None and other_task:  # its Celery consumer runs it
            return TASKS_QUEUE
        if env.error is not None:
            self._dead_letter(raw, env.error)
            self._reply(env.task_id, env.silent, BadMessage(env.error))
            return None
        if env.bad is not None:  # its own class: UnknownHandler, BadMessage, MessageExpired
            self._reply(env.task_id, env.silent, env.bad)
            return None
        return queue_name(partition_for(env.entity_type, env.entity_id, self.settings.partitions))

    def _reply(self, task_id: str, silent: bool, error: Exception) -> None:
        if task_id and not silent:
            try:
                self.replies.write([Outcome.failure(task_id, error)])
            except Exception:
                log.warning("could not store the BadMessage reply of %s", task_id, exc_info=True)

    def _dead_letter(self, raw: bytes, reason: str) -> None:
        """Keeps a message nobody can process, with the reason; logs it if the store fails
        (a message no worker can read would only circle back)."""
        text = raw[:MAX_DEAD_LETTER_CHARS].decode("utf-8", "replace")
        log.warning("dead-lettered a message on %s: %s", DEFAULT_QUEUE, reason)
        try:
            letter = DeadLetter(DEFAULT_QUEUE, reason[:4000], text)
            self.store.commit(CommitBatch(partition=-1, epoch=None, dead_letters=[letter]))
        except Exception:
            log.exception("could not store a dead letter; dropping it: %r", text)
