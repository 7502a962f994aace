"""Callbacks of applied messages: ``link``, ``link_error`` and chains, fired as Celery does.

A message's callbacks travel in its protocol-2 embed (``callbacks``,
``errbacks``, ``chain``). When the message is applied (strictly: a message with
callbacks commits before its reply), its outcome carries them, and the settle
script that stores its reply also records a *link record* (the callbacks and
the reply) on the partition's links list, unless the message's marker key
already exists. The runner then fires each record and removes it.

What holds:

- callbacks fire only after the message's effect is committed and its reply
  stored (the record is written by the script that stores the reply);
- once per message: a redelivered or resent message (same task id) whose
  callbacks were recorded finds the marker and records nothing
  (``ENTITIES_DEDUP_RETENTION`` is the marker's lifetime, as for the processed
  record);
- nothing recorded is lost: a record stays on the list until its callbacks are
  published; a crash between the publish and the removal publishes them again
  with the same task ids (a callback or chain step without one gets an id
  derived from the message's), so an entity receiving them applies them once;
  any other task may run twice, as in Celery's own worker (a group given as
  one callback gets fresh ids);
- as in Celery's worker: on success each callback gets the reply as its first
  argument (an immutable ``.si()`` signature gets none), the next chain step gets
  it with the rest of the chain, several callbacks go out as one group; on an
  error reply the errbacks get the task id, or ``(request, exc, traceback)``
  when their task takes three arguments, and the chain stops.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from celery import group, signature
from celery.app.task import Context
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps, loads

from entities.routing import link_marker_key, links_key
from workers.apply import Outcome

log = logging.getLogger(__name__)

#: Records one call fires at most (the rest wait for the next call).
FIRE_LIMIT = 100

_NAMESPACE = uuid.UUID("5a1e6c1e-52c8-4c1b-9d3e-1a7b0f0e11a5")


def records(outcomes: Iterable[Outcome], partition: int, backend: Any) -> list[tuple[str, str]]:
    """The (marker key, record) of every outcome that carries callbacks."""
    out = []
    for o in outcomes:
        if not o.links or not o.task_id:
            continue
        try:
            record = {
                "id": o.task_id,
                "ok": o.ok,
                "reply": o.value if o.ok else backend.prepare_exception(o.error),
                **o.links,
            }
            encoded = dumps(record)
        except Exception:  # a reply the result backend could not store either
            log.exception("callbacks of %s not fired: their record cannot be encoded", o.task_id)
            continue
        out.append((link_marker_key(partition, o.task_id), encoded))
    return out


class LinkFirer:
    """Fires the recorded callbacks of one partition through the Celery app."""

    def __init__(self, app: Any, client: redis.Redis) -> None:
        self.app = app
        self.client = client

    def fire_pending(self, partition: int) -> int:
        """Fires the partition's recorded callbacks, oldest first, removing each once sent;
        returns how many records were handled. Raises if the broker cannot be reached
        (what was not sent stays recorded)."""
        key = links_key(partition)
        raws = self.client.lrange(key, -FIRE_LIMIT, -1)
        for raw in reversed(raws):  # pushed on the left: the oldest is on the right
            try:
                self.fire(loads(raw))
            except (OperationalError, redis.RedisError, OSError):
                raise
            except Exception:
                log.exception("partition %s: dropping callbacks that cannot be sent", partition)
            self.client.lrem(key, -1, raw)  # type: ignore[arg-type]  # bytes are accepted
        return len(raws)

    def fire(self, record: dict[str, Any]) -> None:
        """Sends one record's callbacks (on success) or errbacks (on an error reply)."""
        task_id = record["id"]
        root_id = record.get("root_id") or task_id
        if record["ok"]:
            self._callbacks(record, task_id, root_id)
        elif record.get("errbacks"):
            exc = self.app.backend.exception_to_python(record["reply"])
            request = Context(
                id=task_id,
                root_id=root_id,
                errbacks=record["errbacks"],
                delivery_info={},
                chord=None,
                group=None,
            )
            self.app.backend._call_task_errbacks(request, exc, None)

    def _callbacks(self, record: dict[str, Any], task_id: str, root_id: str) -> None:
        app, reply = self.app, record["reply"]
        options = {"parent_id": task_id, "root_id": root_id}
        callbacks = record.get("callbacks") or []
        if len(callbacks) > 1:
            sigs: list[Any] = []
            groups: list[Any] = []
            for i, sig in enumerate(callbacks):
                sig = signature(sig, app=app)
                if isinstance(sig, group):
                    groups.append(sig)
                else:
                    sig.set(**_with_id(sig, task_id, f"link/{i}"))
                    sigs.append(sig)
            for group_ in groups:
                group_.apply_async((reply,), **options)
            if sigs:
                group(sigs, app=app).apply_async((reply,), **options)
        elif callbacks:
            sig = signature(callbacks[0], app=app)
            sig.apply_async((reply,), **_with_id(sig, task_id, "link/0"), **options)
        chain = record.get("chain")
        if chain:
            sig = signature(chain[-1], app=app)
            ids = _with_id(sig, task_id, "chain")
            sig.apply_async((reply,), chain=chain[:-1], **ids, **options)


def _with_id(sig: Any, task_id: str, kind: str) -> dict[str, Any]:
    """A task id for a callback that has none, derived from its message's, so sending it
    twice (after a crash) sends the same call twice, which an entity applies once."""
    if sig.options.get("task_id") or sig.id:
        return {}
    return {"task_id": str(uuid.uuid5(_NAMESPACE, f"{task_id}/{kind}"))}
