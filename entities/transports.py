"""The client's one injection point: how a call reaches its entity and its reply comes back.

Every client helper that sends goes through :func:`current_transport`:
``Counter.ref(id).op()`` and ``.op.delay()``, :func:`entities.client.send`,
``entities.delete``, the in-order copy of every alarm helper's change, and
``send_to_entity.delay``/``apply_async``; ``Counter.ref(id).op.aio()`` and
the ``entities.aio`` twins await :meth:`Transport.send_and_wait`. The default,
:class:`BrokerTransport`, publishes through Celery and Redis (:mod:`entities.transport`) and raises
:class:`~entities.errors.BrokerError` when they cannot be reached. The test kit
installs an in-process transport (``workers.testing.Harness``), so inside a
harness no helper opens a connection or starts a server.

Helpers that only read (``read``, ``list_entities``, ``list_alarms``,
``failed_alarms``) go to the process's store, which the harness installs the same
way (:func:`entities.client.set_store`).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from entities.broker_errors import reaching
from entities.errors import BadMessage
from entities.results import EntityResult
from entities.routing import TASK_NAME


@dataclasses.dataclass(frozen=True)
class Call:
    """One ``send_to_entity`` call: the entity, the message, and how it is sent."""

    entity_type: str
    entity_id: str
    msg: dict[str, Any]
    durability: str | None = None
    task_id: str | None = None
    #: apply_async options (``ignore_result``, ``countdown`` ...), as Celery takes them.
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def args(self) -> list[Any]:
        """The task's positional arguments."""
        args: list[Any] = [self.entity_type, self.entity_id, self.msg]
        return args if self.durability is None else [*args, self.durability]

    @classmethod
    def of_task(
        cls, args: Any, kwargs: Any, task_id: str | None, options: Mapping[str, Any]
    ) -> Call:
        """The call ``send_to_entity.apply_async(args, kwargs, task_id, **options)`` makes."""
        names = ("entity_type", "entity_id", "msg", "durability")
        given = dict(zip(names, args or (), strict=False))
        extra = set(kwargs or {}) - set(names)
        if len(args or ()) > len(names) or extra or not {*names[:3]} <= {*given, *(kwargs or {})}:
            raise BadMessage(
                "send_to_entity takes (entity_type, entity_id, msg[, durability]); "
                f"got args={args!r}, kwargs={kwargs!r}"
            )
        given.update(kwargs or {})
        return cls(task_id=task_id, options=dict(options), **given)


class Transport:
    """How calls are sent and replies awaited; subclasses override both methods."""

    def send(self, call: Call) -> EntityResult[Any]:
        """Sends ``call``; returns its result, whose ``.get(timeout=...)`` gives the reply
        (as JSON brings it, or decoded once ``.describe`` names a type) or raises the
        entity's error."""
        raise NotImplementedError

    async def send_and_wait(self, call: Call, timeout_s: float | None) -> EntityResult[Any]:
        """Sends ``call`` and awaits its reply without blocking the event loop; returns the
        settled result (``.reply()`` gives the reply or raises its error)."""
        raise NotImplementedError


class BrokerTransport(Transport):
    """The default: publishes to the entity's partition queue through Celery and Redis.

    A plain call takes the direct publish (:func:`entities.transport.send_direct`);
    any other goes through Celery's ``send_task``. Both retry under the app's
    publish retry policy, then raise BrokerError (:mod:`entities.broker_errors`).
    An async call publishes and awaits its reply on the event loop's one reply
    subscription (:func:`entities.aio.send_and_wait`), with no thread per call.
    """

    def send(self, call: Call) -> EntityResult[Any]:
        from entities.transport import client_app, describe, send_direct

        app = client_app()
        with reaching(app):
            sent: EntityResult[Any] | None = send_direct(
                app, call.args, call.task_id, dict(call.options)
            )
            if sent is not None:
                return sent
            result = app.send_task(
                TASK_NAME,
                args=call.args,
                task_id=call.task_id,
                result_cls=_result_class(app),
                **call.options,
            )
        return describe(result, call.args)  # type: ignore[no-any-return]

    async def send_and_wait(self, call: Call, timeout_s: float | None) -> EntityResult[Any]:
        from entities import aio
        from entities.transport import client_app

        with reaching(client_app()):
            return await aio.send_and_wait(
                call.entity_type,
                call.entity_id,
                call.msg,
                call.durability,
                call.task_id or str(uuid.uuid4()),
                dict(call.options),
                timeout_s,
            )


def _result_class(app: Any) -> Callable[[str], EntityResult[Any]]:
    def make(task_id: str) -> EntityResult[Any]:
        return EntityResult(task_id, app=app, backend=app.backend)

    return make


_lock = threading.Lock()
_default = BrokerTransport()
_current: Transport = _default


def current_transport() -> Transport:
    """The transport every client helper of this process sends through."""
    return _current


def use_transport(transport: Transport | None) -> Transport:
    """Installs ``transport`` for every client helper of the process (None: the broker's);
    returns the previous one, for the caller to restore."""
    global _current
    with _lock:
        previous, _current = _current, transport or _default
    return previous
