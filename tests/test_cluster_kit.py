"""The kit of the cluster, chaos, fault and bad-input tests (it holds no tests itself).

- :func:`envelope` builds the exact Redis form of a Celery message (kombu's
  JSON envelope around a protocol-2 body), well-formed or hostile, for pushing
  straight onto a queue as any Celery client would.
- :class:`Load` sends counter messages round-robin over entities, resending
  with the same task id while the broker refuses them, and collects replies;
  :func:`check_exact` then proves nothing was lost, doubled or reordered.
- :func:`overlaps` finds recorder entries of one entity that ran at once.
- ``python -m tests.test_cluster_kit drive ...`` runs a Load in a fresh
  process, for tests whose servers differ from the ones this process uses.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entities.routing import TASK_NAME

Replies = dict[str, list[Any]]


def envelope(
    args: Any,
    kwargs: Any = None,
    *,
    task: Any = TASK_NAME,
    task_id: Any = None,
    queue: str = "celery",
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    body: bytes | None = None,
) -> bytes:
    """A kombu Redis envelope of a Celery protocol-2 call of ``task`` (override any part)."""
    task_id = str(uuid.uuid4()) if task_id is None else task_id
    if body is None:
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        body = json.dumps([args, kwargs or {}, embed]).encode()
    head = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "timelimit": [None, None],
        "ignore_result": False,
    }
    head.update(headers or {})
    props = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    props.update(properties or {})
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": head,
            "properties": props,
        }
    ).encode()


def call(
    entity_type: str,
    entity_id: str,
    op: str,
    *args: Any,
    task_id: str | None = None,
    queue: str = "celery",
) -> bytes:
    """A well-formed send_to_entity envelope, as a client without our router publishes it."""
    return envelope(
        [entity_type, entity_id, {"op": op, "args": list(args)}], task_id=task_id, queue=queue
    )


class Load:
    """Sends ``op`` to entities round-robin and keeps each entity's results in send order."""

    def __init__(self, entity_type: str, entity_ids: list[str], op: str = "add") -> None:
        self.entity_type = entity_type
        self.entity_ids = entity_ids
        self.op = op
        self.sent: dict[str, list[Any]] = {e: [] for e in entity_ids}
        self.resends = 0
        self.count = 0

    def send_one(self, entity_id: str, *args: Any, deadline_s: float = 120.0) -> Any:
        """Sends one message; resends with the same task id until the broker takes it."""
        from workers import send_to_entity

        task_id = str(uuid.uuid4())
        give_up = time.monotonic() + deadline_s
        while True:
            try:
                result = send_to_entity.apply_async(
                    (self.entity_type, entity_id, {"op": self.op, "args": list(args)}),
                    task_id=task_id,
                )
                break
            except Exception:
                if time.monotonic() > give_up:
                    raise
                self.resends += 1
                time.sleep(0.2)
        self.sent[entity_id].append(result)
        self.count += 1
        return result

    def send(
        self, n: int, duration_s: float = 0.0, each: Callable[[int], None] | None = None
    ) -> None:
        """Sends ``n`` messages round-robin, spread evenly over ``duration_s``."""
        started = time.monotonic()
        for i in range(n):
            self.send_one(self.entity_ids[i % len(self.entity_ids)])
            if each is not None:
                each(i)
            if duration_s:
                ahead = started + duration_s * (i + 1) / n - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def replies(self, timeout_s: float = 120.0) -> Replies:
        """Every reply, per entity, in send order (an exception where a call failed)."""
        deadline = time.monotonic() + timeout_s
        out: Replies = {}
        for entity_id, results in self.sent.items():
            got = []
            for r in results:
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    got.append(_get(r, remaining))
                except Exception as exc:
                    got.append(f"{type(exc).__name__}: {exc}")
            out[entity_id] = got
        return out


def _get(result: Any, timeout_s: float) -> Any:
    """AsyncResult.get that rides out a result-backend reconnect."""
    import redis
    from kombu.exceptions import OperationalError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return result.get(timeout=max(0.5, deadline - time.monotonic()))
        except (redis.RedisError, OperationalError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the result backend is restarting


def check_exact(replies: Replies, entity_type: str, read: Callable[[str, str], Any]) -> None:
    """Each entity replied 1..n in send order, and its committed count is n."""
    bad = {e: r for e, r in replies.items() if r != list(range(1, len(r) + 1))}
    assert not bad, f"replies lost, doubled or reordered: {_short(bad)}"
    counts = {
        e: (read(entity_type, e).state["count"] if read(entity_type, e) else 0) for e in replies
    }
    wrong = {e: (counts[e], len(r)) for e, r in replies.items() if counts[e] != len(r)}
    assert not wrong, f"committed counts differ from messages sent (count, sent): {wrong}"


def overlaps(log: list[list[Any]]) -> list[tuple[list[Any], list[Any]]]:
    """Consecutive recorder entries ([seq, pid, start, end]) that ran at overlapping times."""
    return [(a, b) for a, b in itertools.pairwise(log) if b[2] < a[3]]


def _short(value: Any, limit: int = 2000) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def pid_of(worker_id: str | None) -> int | None:
    """The process id inside a worker id (host:pid:nonce)."""
    if not worker_id:
        return None
    return int(worker_id.rsplit(":", 2)[1])


def drive(argv: list[str]) -> None:
    """Runs a Load in this process and writes its replies as JSON (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--type", default="tally")
    parser.add_argument("--entities", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--out", required=True)
    opts = parser.parse_args(argv)
    load = Load(opts.type, [f"e{i}" for i in range(opts.entities)])
    progress = Path(opts.progress)

    def each(i: int) -> None:
        if i % 10 == 0:
            progress.write_text(str(i))

    load.send(opts.messages, opts.duration, each)
    progress.write_text(str(opts.messages))
    replies = load.replies(opts.timeout)
    Path(opts.out).write_text(json.dumps({"replies": replies, "resends": load.resends}))


if __name__ == "__main__":
    if sys.argv[1:2] != ["drive"]:
        sys.exit("usage: python -m tests.test_cluster_kit drive --progress P --out O [...]")
    os.environ.setdefault("ENTITIES_MODULES", "tests.cluster_entities")
    drive(sys.argv[2:])
