"""Publishing pre-filled queues and watching for the stored replies, cheaply.

The publisher pipelines its messages and does not subscribe to result
channels (Celery's Redis backend subscribes on every send by default);
completion is read from the result keys instead. Each queue is FIFO and
served in order, so the run is complete when the last message of every queue
has its reply; every key is then checked, and any straggler is waited for, so
the end time is never early.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

RESULT_PREFIX = "celery-task-meta-"
#: Keys per pipeline when checking many result keys.
CHUNK = 1000
#: Messages per pipelined publish.
PUBLISH_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Sent:
    """One published message: its task id, its queue, and its entity's running sequence."""

    task_id: str
    queue: str
    entity_id: str
    seq: int  # this is the seq-th message to entity_id (1-based), so a counter replies seq


def result_key(task_id: str) -> str:
    """The Redis key of a task's stored reply."""
    return f"{RESULT_PREFIX}{task_id}"


@contextlib.contextmanager
def no_result_subscriptions(app: Any) -> Iterator[None]:
    """Publishes through ``app`` without subscribing to each task's result channel."""
    backend = app.backend
    original = backend.on_task_call
    backend.on_task_call = lambda *_a, **_k: None
    try:
        yield
    finally:
        backend.on_task_call = original


def publish(
    app: Any,
    send: Callable[[Any, str, int], tuple[str, str]],
    entity_ids: Sequence[str],
) -> list[Sent]:
    """Sends one message per item of ``entity_ids``, in order; ``send`` returns (task id, queue).

    ``send(producer, entity_id, seq)`` publishes through ``producer``.
    """
    counts: dict[str, int] = {}
    sent: list[Sent] = []
    with (
        no_result_subscriptions(app),
        app.producer_or_acquire() as producer,
        _batch(producer),
    ):
        for entity_id in entity_ids:
            seq = counts[entity_id] = counts.get(entity_id, 0) + 1
            task_id, queue = send(producer, entity_id, seq)
            sent.append(Sent(task_id, queue, entity_id, seq))
    return sent


def _batch(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """kombu's pipelined publishing (``Producer.batch``, kombu >= 5.7) where there is one.

    The messages are exactly those Celery would publish one by one; only the
    Redis round trips are shared, which halves the time to fill a queue.
    """
    batch = getattr(producer, "batch", None)
    return batch(max_size=PUBLISH_BATCH) if batch is not None else contextlib.nullcontext()


def missing(client: redis.Redis, task_ids: Sequence[str]) -> list[str]:
    """The task ids whose reply is not stored yet."""
    out: list[str] = []
    for start in range(0, len(task_ids), CHUNK):
        chunk = task_ids[start : start + CHUNK]
        with client.pipeline(transaction=False) as pipe:
            for task_id in chunk:
                pipe.exists(result_key(task_id))
            found = pipe.execute()
        out.extend(t for t, f in zip(chunk, found, strict=True) if not f)
    return out


def wait_replies(
    client: redis.Redis, sent: Sequence[Sent], timeout_s: float, poll_s: float = 0.005
) -> float:
    """Waits until every message of ``sent`` has a stored reply; returns that perf_counter time.

    Polls only the last message of each queue (a handful of keys) until all
    of them are stored, then checks every key once.
    """
    last: dict[str, str] = {}
    for s in sent:
        last[s.queue] = s.task_id
    sentinels = [result_key(t) for t in last.values()]
    deadline = time.perf_counter() + timeout_s
    while client.exists(*sentinels) < len(sentinels):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"replies not stored within {timeout_s}s")
        time.sleep(poll_s)
    done = time.perf_counter()
    pending = missing(client, [s.task_id for s in sent])
    while pending:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(pending)} replies not stored within {timeout_s}s")
        time.sleep(poll_s)
        pending = missing(client, pending)
        done = time.perf_counter()
    return done


def check_replies(client: redis.Redis, sent: Sequence[Sent], counting: bool) -> dict[str, int]:
    """Reads every stored reply: how many failed, and (``counting``) how many != their seq.

    A counter that applied each message once and in order replies ``seq`` to
    the seq-th message of an entity: a wrong value means a lost, doubled or
    reordered message.
    """
    failed = wrong = absent = 0
    for start in range(0, len(sent), CHUNK):
        chunk = sent[start : start + CHUNK]
        values = client.mget([result_key(s.task_id) for s in chunk])
        for s, raw in zip(chunk, values, strict=True):
            if raw is None:
                absent += 1
                continue
            meta = json.loads(raw)
            if meta.get("status") != "SUCCESS":
                failed += 1
            elif counting and meta.get("result") != s.seq:
                wrong += 1
    return {"replies": len(sent) - absent, "missing": absent, "failed": failed, "wrong": wrong}
