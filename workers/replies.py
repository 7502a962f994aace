"""Storing replies in the Celery result backend, after their commit.

Replies use Celery's own result format, so ``AsyncResult.get()`` works
unchanged. With a Redis backend a batch's replies are one script (for each
reply: SET if absent, with expiry, then PUBLISH; the first reply wins, as in
Celery's own backend), which the runner sends together with the batch's
acknowledgement when the backend and the broker are the same Redis database;
any other backend gets ``store_result`` per reply.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any

import redis
from celery import states

from workers.broker import NO_REPLIES, Replies
from workers.processor import Outcome

#: Connection settings that decide whether two redis-py clients reach the same database.
_SAME_DATABASE = ("host", "port", "path", "db", "username", "password")


class ReplyWriter:
    """Turns the outcomes of a committed batch into replies in the result backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._redis: redis.Redis | None = (
            getattr(backend, "client", None) if _is_redis(backend) else None
        )
        if self._redis is not None:
            from workers.broker import PartitionQueues

            self._queues = PartitionQueues(self._redis)

    def rides_on(self, client: redis.Redis) -> bool:
        """True if replies can be sent through ``client`` (same server and database)."""
        if self._redis is None:
            return False
        mine = self._redis.connection_pool.connection_kwargs
        theirs = client.connection_pool.connection_kwargs
        return all(mine.get(k) == theirs.get(k) for k in _SAME_DATABASE)

    def prepare(self, outcomes: Iterable[Outcome]) -> Replies:
        """The Redis keys and payloads of the outcomes' replies (Redis backends only)."""
        items = [o for o in outcomes if o.task_id and not o.silent]
        if not items:
            return NO_REPLIES
        items.sort(key=lambda o: not o.committed)  # committed ones first (a stable sort)
        backend = self.backend
        expires = backend.expires
        # The meta Celery's backend writes for a finished task with no request
        # (Backend._get_result_meta), built once per batch here instead of
        # through the app's configuration lookups for every reply.
        date_done = datetime.datetime.now(datetime.UTC).isoformat()
        prefix = _text(backend.task_keyprefix)
        plain_json = backend.serializer == "json"
        keys, payloads = [], []
        for o in items:
            meta = {
                "status": states.SUCCESS if o.ok else states.FAILURE,
                "result": o.value if o.ok else backend.encode_result(o.error, states.FAILURE),
                "traceback": None,
                "children": [],
                "date_done": date_done,
                "task_id": o.task_id,
            }
            keys.append(prefix + o.task_id)  # Backend.get_key_for_task
            payloads.append(_encode(backend, meta, plain_json))
        committed = sum(1 for o in items if o.committed)
        return Replies(keys, payloads, int(expires) if expires else 0, committed)

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Stores every outcome's reply (a value, or an exception for the caller to re-raise)."""
        if self._redis is None:
            for o in outcomes:
                if o.task_id and not o.silent:
                    state = states.SUCCESS if o.ok else states.FAILURE
                    self.backend.store_result(o.task_id, o.value if o.ok else o.error, state)
            return
        replies = self.prepare(outcomes)
        if replies.keys:
            self._queues.store_replies(replies)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _encode(backend: Any, meta: dict[str, Any], plain_json: bool) -> str | bytes:
    """Backend.encode(meta): kombu's JSON, which is the standard library's for values that
    are plain JSON (a reply of another type takes kombu's encoder, which tags it)."""
    if plain_json:
        try:
            return json.dumps(meta)
        except (TypeError, ValueError):
            pass
    return backend.encode(meta)  # type: ignore[no-any-return]


def _is_redis(backend: Any) -> bool:
    from celery.backends.redis import RedisBackend

    return isinstance(backend, RedisBackend)
