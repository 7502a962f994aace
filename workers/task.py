"""The send_to_entity task: the one way into an entity's partition.

A call through our router is published straight to its partition queue and
served by the partition owner; the task body never runs for it. A call that
reached Celery's default queue (a client without our router, e.g. in another
language, sending by task name) is forwarded unchanged to its partition, in
order, by :mod:`workers.forwarder`; the body never runs for it either. The body
runs only for a call sent explicitly to this app's tasks queue, and forwards
it keeping its task id, expiry, callbacks and ids, so the reply arrives as
usual. Send options are checked by :func:`entities.options.check_options`:
each is honoured or refused. Under the test kit's transport
(:mod:`entities.transports`) a call is applied in this process instead.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from entities.broker_errors import reaching
from entities.messages import validate_message
from entities.options import check_callbacks, check_options
from entities.results import EntityResult
from entities.routing import TASK_NAME
from entities.transport import describe, send_direct
from entities.transports import BrokerTransport, Call, current_transport
from workers.app import app


class EntityTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """send_to_entity's class: a plain call is published straight to its partition.

    Every send returns an :class:`~entities.results.EntityResult` (an AsyncResult
    whose timeout is a ReplyTimeout naming the entity, op and task id).
    """

    def AsyncResult(self, task_id: str, **kwargs: Any) -> EntityResult[Any]:  # Celery's hook
        """The result class of this task's sends (Celery's hook, used by apply_async)."""
        return EntityResult(
            task_id, backend=self.backend, task_name=self.name, app=self._get_app(), **kwargs
        )

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> Any:
        check_options(options)
        check_callbacks(link, link_error, options.get("chain"))
        transport = current_transport()
        if not isinstance(transport, BrokerTransport):  # the test kit's, in this process
            given = {"producer": producer, "link": link, "link_error": link_error, "shadow": shadow}
            extra = {k: v for k, v in given.items() if v}
            return transport.send(Call.of_task(args, kwargs, task_id, {**options, **extra}))
        if kwargs and set(kwargs) == {"durability"} and args and len(args) == 3:
            args, kwargs = [*args, kwargs["durability"]], None
        if not (kwargs or producer or link or link_error or shadow):
            sent = send_direct(self._get_app(), args, task_id, options, self.AsyncResult)
            if sent is not None:
                return sent
        with reaching(self._get_app()):  # Celery's publish retries, then BrokerError
            result = super().apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )
        if kwargs and not args:
            args = [kwargs.get(k) for k in ("entity_type", "entity_id", "msg")]
        return describe(result, args)


@app.task(name=TASK_NAME, bind=True, acks_late=True, base=EntityTask)  # type: ignore[untyped-decorator]
def send_to_entity(
    self: Any,
    entity_type: str,
    entity_id: str,
    msg: dict[str, Any],
    durability: str | None = None,
) -> Any:
    """Sends ``msg`` to entity (``entity_type``, ``entity_id``); the result is its reply."""
    validate_message(entity_type, entity_id, msg)
    args = [entity_type, entity_id, msg] + ([durability] if durability is not None else [])
    req = self.request
    # Forwarded with what Celery honours for the caller: its expiry, callbacks, chain,
    # ids and ignore_result (a due eta was waited for by the consumer's delayed set).
    self.app.send_task(
        TASK_NAME,
        args=args,
        task_id=req.id,
        expires=req.expires,
        link=req.callbacks,
        link_error=req.errbacks,
        chain=req.chain,
        root_id=req.root_id,
        parent_id=req.parent_id,
        ignore_result=bool(req.ignore_result),
    )
    raise Ignore()  # the partition owner stores the reply under this same task id
