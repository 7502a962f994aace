"""The test kit: run entities in a test, in-process, without a broker or a server.

The runtime half is :class:`workers.testing.Harness`: it applies messages with
the worker's own Processor (the real apply and commit code) on an SQLite store,
with a virtual clock, and fires alarms on demand::

    from workers.testing import Harness

    with Harness() as h:
        assert h.call(Counter, "a", "increment", 5) == 5
        h.advance(60)
        h.drain_alarms()

It lives in ``workers``, not here, because it runs worker code, and
``entities`` never imports ``workers`` (tests/test_public_api.py pins it): a
client, or a module that only defines entities, never loads the worker
runtime. This package holds the runtime-free half of the kit:

- :class:`VirtualClock`, the clock the harness installs (``entities.clock``);
- :func:`celery_message`, the bytes a Redis broker holds for one
  ``send_to_entity`` call, as partition owners read them.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from entities.clock import VirtualClock
from entities.routing import TASK_NAME

__all__ = ["VirtualClock", "celery_message"]


def celery_message(
    entity_type: str,
    entity_id: str,
    msg: dict[str, Any],
    task_id: str | None = None,
    durability: str | None = None,
    ignore_result: bool = False,
) -> bytes:
    """A kombu Redis envelope of a Celery protocol 2 ``send_to_entity`` call.

    The shape is what ``send_to_entity.apply_async`` leaves in a partition
    queue (JSON headers, properties and a base64 JSON body); ``task_id``
    defaults to a fresh one.
    """
    task_id = task_id or str(uuid.uuid4())
    args: list[Any] = [entity_type, entity_id, msg]
    if durability is not None:
        args.append(durability)
    body = json.dumps(
        [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "ignore_result": ignore_result,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": ""},
        },
    }
    return json.dumps(envelope).encode()
