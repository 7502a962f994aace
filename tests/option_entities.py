"""Celery tasks the send-option tests link to: each notes what it received in Redis.

Workers load this module through ENTITIES_MODULES, so the tasks are registered
in the worker that runs them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from workers.app import app


def _note(key: str, value: Any) -> None:
    from entities.redis_client import redis_from_url

    client = redis_from_url(os.environ["ENTITIES_BROKER_URL"])
    try:
        client.rpush(key, json.dumps(value))
    finally:
        client.close()


@app.task(name="tests.note_reply")  # type: ignore[untyped-decorator]
def note_reply(value: Any, key: str) -> None:
    """A callback: notes the reply it was given under ``key``."""
    _note(key, value)


@app.task(name="tests.note_call")  # type: ignore[untyped-decorator]
def note_call(key: str) -> None:
    """An immutable callback: notes that it ran, with no reply."""
    _note(key, "ran")


@app.task(name="tests.note_error")  # type: ignore[untyped-decorator]
def note_error(task_id: str, key: str) -> None:
    """An errback: notes the id of the failed call."""
    _note(key, task_id)


@app.task(name="tests.note_ids", bind=True)  # type: ignore[untyped-decorator]
def note_ids(self: Any, value: Any, key: str) -> None:
    """A callback: notes the reply with its own parent and root ids."""
    _note(key, [value, self.request.parent_id, self.request.root_id])
