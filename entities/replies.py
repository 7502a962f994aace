"""Waiting for replies on kept Redis subscriptions: one per thread, one per event loop.

A reply is Celery's result meta, stored by the partition owner's settle script
under ``celery-task-meta-<task id>`` (SET, then PUBLISH on the channel of the
same name). A caller waits for it like this, and never misses it:

1. SUBSCRIBE to the key's channel (written, not awaited) *before* the message
   is sent;
2. send the message (one LPUSH, :func:`entities.transport.send_direct`);
3. read the subscription; each time Redis confirms the subscription, GET the
   key once: a reply published before the subscription took effect was stored
   before it too, so the GET finds it (this closes the race between the two
   connections, also after a reconnect, which resubscribes);
4. take the first of the published reply and the GET; UNSUBSCRIBE, batched:
   finished keys are unsubscribed together once :data:`UNSUBSCRIBE_BATCH` of
   them have gathered (or the loop is idle), one write instead of one per call;
   a late message on a finished key is ignored.

Invariant: no key stays watched after its call is over. The wait that takes a
key (answered or timed out) unwatches it; a result never waited for, or
settled another way (``ready()``, ``state``), is forgotten by its finalizer,
and the forgotten keys are dropped at the waiter's next watch or wait; so a
long-running client's watched set holds only the calls still in flight.

So a call costs the LPUSH's round trip and the reply's arrival; the SUBSCRIBE,
the GET and the UNSUBSCRIBE overlap with the worker's own work.

Sync callers (:class:`ReplyWaiter`): one subscription connection per thread,
read by the thread that waits, so no thread hands a reply to another. Async
callers (:class:`AsyncReplies`): one subscription per event loop, read by one
task that resolves each caller's future; the keys confirmed since the last
look are read in one MGET, and finished keys are unsubscribed together, so
thousands of calls can be in flight on a few connections.
The payload handed back is the stored meta, which
:meth:`entities.results.EntityResult.settle` decodes as Celery would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from typing import Any

#: Finished reply keys unsubscribed together, in one command.
UNSUBSCRIBE_BATCH = 64

_local = threading.local()
_log = logging.getLogger(__name__)


class ReplyWaiter:
    """One thread's kept subscription to reply channels (safe to share under its lock)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._pubsub = client.pubsub()
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._arrived: dict[str, bytes] = {}
        self._confirmed: set[str] = set()
        self._forgotten: list[str] = []
        self._stale: list[str] = []  # finished, still subscribed until the next batch
        self.broken = False

    def watch(self, task_id: str) -> None:
        """Subscribes to the reply of ``task_id``; call it before sending the message."""
        key = self._prefix + task_id
        with self._lock:
            try:
                self._drop_forgotten()
                self._watched.add(key)
                if key in self._stale:  # the same task id again: keep its subscription
                    self._stale.remove(key)
                self._pubsub.subscribe(key)
            except Exception:
                self.broken = True
                raise

    def forget(self, task_id: str) -> None:
        """Stops watching ``task_id`` at the next use (safe from a finalizer, takes no lock)."""
        self._forgotten.append(self._prefix + task_id)

    def wait(self, task_id: str, timeout: float | None) -> bytes | None:
        """The stored reply of a watched ``task_id``, or None after ``timeout`` seconds."""
        key = self._prefix + task_id
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            try:
                self._drop_forgotten()
                return self._wait(key, deadline)
            except Exception:
                self.broken = True  # this thread's next call starts on a new connection
                raise
            finally:
                if not self.broken:
                    self._unwatch(key)

    def _wait(self, key: str, deadline: float | None) -> bytes | None:
        if key not in self._watched:  # not watched (or forgotten): its stored reply, if any
            self._watched.add(key)
            if key in self._stale:
                self._stale.remove(key)
            self._pubsub.subscribe(key)
        while True:
            if key in self._arrived:
                return self._arrived.pop(key)
            if key in self._confirmed:
                self._confirmed.discard(key)
                stored: bytes | None = self._client.get(key)
                if stored is not None:
                    return stored
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            message = self._pubsub.get_message(timeout=remaining if remaining is not None else 5.0)
            if message is not None:
                self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        channel = _text(message["channel"])
        if channel not in self._watched:
            return
        if message["type"] == "subscribe":
            self._confirmed.add(channel)
        elif message["type"] == "message":
            self._arrived[channel] = message["data"]

    def _unwatch(self, key: str) -> None:
        self._watched.discard(key)
        self._arrived.pop(key, None)
        self._confirmed.discard(key)
        self._stale.append(key)
        if len(self._stale) >= UNSUBSCRIBE_BATCH:
            stale, self._stale = self._stale, []
            self._pubsub.unsubscribe(*stale)

    def _drop_forgotten(self) -> None:
        while self._forgotten:
            key = self._forgotten.pop()
            if key in self._watched:
                self._unwatch(key)


def waiter_for(backend: Any) -> ReplyWaiter:
    """This thread's waiter on ``backend``'s Redis (a Celery RedisBackend)."""
    waiters: dict[tuple[int, int], ReplyWaiter] | None = getattr(_local, "waiters", None)
    if waiters is None:
        waiters = _local.waiters = {}
    client = backend.client
    key = (os.getpid(), id(client))  # a forked child never reads its parent's connection
    waiter = waiters.get(key)
    if waiter is None or waiter._client is not client or waiter.broken:
        waiter = waiters[key] = ReplyWaiter(client, _text(backend.task_keyprefix))
    return waiter


class AsyncReplies:
    """One event loop's kept subscription to reply channels, read by one task."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self._prefix = prefix
        self._pubsub = client.pubsub()
        self._futures: dict[str, list[asyncio.Future[bytes]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._connecting = asyncio.Lock()
        # True once a subscribe has completed: the connection exists and is set up (while
        # it connects, ``connection`` is already set, so checking it let others in early).
        self._subscribed = False
        self._done: list[str] = []
        self._unchecked: list[str] = []
        self._checker: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        """Stops the reader and closes the subscription and the client."""
        for task in (self._reader, self._checker):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._pubsub.aclose()
        await self.client.aclose()

    async def watch(self, task_id: str) -> asyncio.Future[bytes]:
        """A future of the stored reply of ``task_id``; await it before sending the message."""
        key = self._prefix + task_id
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiting = self._futures.setdefault(key, [])
        waiting.append(future)
        if key in self._done:  # the same task id again: keep its subscription
            self._done.remove(key)
        future.add_done_callback(lambda f: self._release(key, f))
        if len(waiting) == 1:
            if not self._subscribed:  # until a first subscribe has connected, one at a time
                async with self._connecting:
                    await self._pubsub.subscribe(key)
                    self._subscribed = True
            else:
                await self._pubsub.subscribe(key)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        self._idle.set()
        return future

    def _release(self, key: str, future: asyncio.Future[bytes]) -> None:
        """A caller is done (answered, timed out or cancelled): unsubscribe when none waits."""
        waiting = self._futures.get(key)
        if waiting is None:
            return
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            del self._futures[key]
            self._done.append(key)
            self._idle.set()

    async def _read(self) -> None:
        while True:
            if len(self._done) >= UNSUBSCRIBE_BATCH or (self._done and not self._futures):
                done, self._done = self._done, []
                await self._pubsub.unsubscribe(*done)
            if not self._futures:
                self._idle.clear()
                await self._idle.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=None)  # a task of its own
            except asyncio.CancelledError:
                raise
            except Exception:  # the next read reconnects and resubscribes; MGET closes the gap
                _log.warning("reply subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.1)
                continue
            if message is None:
                continue
            key = _text(message["channel"])
            if message["type"] == "subscribe" and key in self._futures:
                self._unchecked.append(key)
                if self._checker is None or self._checker.done():
                    self._checker = asyncio.ensure_future(self._check())
            elif message["type"] == "message":
                self._resolve(key, message["data"])

    async def _check(self) -> None:
        """GETs the keys whose subscription was confirmed (a reply published earlier),
        all confirmed since the last look in one MGET."""
        while self._unchecked:
            keys, self._unchecked = self._unchecked, []
            try:
                stored = await self.client.mget(keys)
            except Exception:  # the published reply still arrives; log and go on
                _log.warning("could not read %d stored replies", len(keys), exc_info=True)
                continue
            for key, payload in zip(keys, stored, strict=True):
                if payload is not None:
                    self._resolve(key, payload)

    def _resolve(self, key: str, payload: bytes) -> None:
        for future in list(self._futures.get(key, ())):
            if not future.done():
                future.set_result(payload)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncReplies]] = (
    weakref.WeakKeyDictionary()
)


def async_replies(url: str, prefix: str) -> AsyncReplies:
    """The running loop's reply subscription on the Redis at ``url``."""
    from entities.redis_client import async_redis_from_url

    per_loop = _loops.setdefault(asyncio.get_running_loop(), {})
    replies = per_loop.get(url)
    if replies is None:
        replies = per_loop[url] = AsyncReplies(async_redis_from_url(url), prefix)
    return replies


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def close_loop() -> None:
    """Closes the running loop's reply subscriptions and clients."""
    per_loop = _loops.pop(asyncio.get_running_loop(), {})
    for replies in per_loop.values():
        await replies.aclose()
