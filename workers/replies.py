"""Storing replies in the Celery result backend, after their commit.

Replies use Celery's own result format, so ``AsyncResult.get()`` works
unchanged. With a Redis backend all replies of a batch go out in one pipeline
(one script per reply: SET if absent, with expiry, then PUBLISH; the first reply wins);
any other backend gets ``store_result`` per reply.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from celery import states

from workers.processor import Outcome

# KEYS: result key. ARGV: payload, ttl seconds (0: none). Stores and publishes the
# reply unless one is stored already: the first reply wins, as in Celery's own
# backend, so a resend with the same task id reads the first one's reply.
_STORE_FIRST = """
local ok
if tonumber(ARGV[2]) > 0 then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX')
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if ok then redis.call('PUBLISH', KEYS[1], ARGV[1]) end
return ok and 1 or 0
"""


class ReplyWriter:
    """Writes the outcomes of a committed batch to the result backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._redis = getattr(backend, "client", None) if _is_redis(backend) else None
        if self._redis is not None:
            self._store = self._redis.register_script(_STORE_FIRST)

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
        ttl = int(expires) if expires else 0
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
                key = backend.get_key_for_task(task_id)
                self._store(keys=[key], args=[backend.encode(meta), ttl], client=pipe)
            pipe.execute()


def _is_redis(backend: Any) -> bool:
    from celery.backends.redis import RedisBackend

    return isinstance(backend, RedisBackend)
