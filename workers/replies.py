"""Storing replies in the Celery result backend, after their commit.

Replies use Celery's own result format, so ``AsyncResult.get()`` works
unchanged. With a Redis backend all replies of a batch go out in one pipeline
(SET with expiry plus PUBLISH per reply, as the backend itself writes them);
any other backend gets ``store_result`` per reply.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from celery import states

from workers.processor import Outcome


class ReplyWriter:
    """Writes the outcomes of a committed batch to the result backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._redis = getattr(backend, "client", None) if _is_redis(backend) else None

    def write(self, outcomes: Iterable[Outcome]) -> None:
        """Stores every outcome's reply (a value, or an exception for the caller to re-raise)."""
        items = [
            (o.task_id, o.value if o.ok else o.error, states.SUCCESS if o.ok else states.FAILURE)
            for o in outcomes
            if o.task_id and not o.silent
        ]
        if not items:
            return
        if self._redis is None:
            for task_id, value, state in items:
                self.backend.store_result(task_id, value, state)
            return
        backend = self.backend
        expires = backend.expires
        # The meta Celery's backend writes for a finished task with no request
        # (Backend._get_result_meta), built once per batch here instead of
        # through the app's configuration lookups for every reply.
        date_done = datetime.datetime.now(datetime.UTC).isoformat()
        with self._redis.pipeline(transaction=False) as pipe:
            for task_id, value, state in items:
                ok = state == states.SUCCESS
                meta = {
                    "status": state,
                    "result": value if ok else backend.encode_result(value, state),
                    "traceback": None,
                    "children": [],
                    "date_done": date_done,
                    "task_id": task_id,
                }
                payload = backend.encode(meta)
                key = backend.get_key_for_task(task_id)
                if expires:
                    pipe.setex(key, int(expires), payload)
                else:
                    pipe.set(key, payload)
                pipe.publish(key, payload)
            pipe.execute()


def _is_redis(backend: Any) -> bool:
    from celery.backends.redis import RedisBackend

    return isinstance(backend, RedisBackend)
