"""Async twins of the client helpers, for asyncio applications (FastAPI, aiohttp...).

``await entities.aio.send("counter", "a", {"op": "increment", "args": [5]})``
sends like :func:`entities.client.send` and awaits the reply, with no thread
per call: the message is pushed with one LPUSH on the loop's kept
``redis.asyncio`` client and the reply arrives through the loop's one reply
subscription (:mod:`entities.replies`), so thousands of calls can be in
flight from one event loop. The task id and the stored reply are Celery's,
so ``AsyncResult(task_id).get()`` elsewhere sees the same reply.

Cancelling an awaited call (a client that went away, ``asyncio.wait_for``)
stops the wait, not the message: it stays sent and may still be applied.
Send a retry with the same ``task_id`` to have it applied at most once.

The store helpers (``read``, ``list_entities``, ``list_alarms``) and the
alarm changes run their blocking database work in the loop's default
executor. A call that needs Celery's own publish path (options such as
``countdown``) is sent there too, and its reply is still awaited on the
loop's subscription.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from entities import client, registry, transport
from entities.broker_errors import publish_retrying_async
from entities.messages import OP_DELETE, validate_id
from entities.options import check_options
from entities.replies import async_replies
from entities.results import RAW, EntityResult
from entities.store import Snapshot
from entities.transports import Call, current_transport

if TYPE_CHECKING:
    from entities.model import Delay, Entity


async def send(
    entity_type: str | type[Entity],
    entity_id: str,
    msg: dict[str, Any],
    durability: str | None = None,
    *,
    timeout: float | None = client.DEFAULT_TIMEOUT_S,
    **options: Any,
) -> Any:
    """Sends ``msg`` to an entity and awaits its reply (its JSON form, as ``AsyncResult``
    gives it); raises the entity's error, or ReplyTimeout after ``timeout`` seconds."""
    return await call(entity_type, entity_id, msg, durability, timeout=timeout, **options)


async def call(
    entity_type: str | type[Entity],
    entity_id: str,
    msg: dict[str, Any],
    durability: str | None = None,
    *,
    timeout: float | None = client.DEFAULT_TIMEOUT_S,
    decode_as: Any = RAW,
    **options: Any,
) -> Any:
    """:func:`send`, with the reply decoded as ``decode_as`` (what typed references use)."""
    name = registry.type_name(entity_type)
    validate_id("entity id", entity_id)
    registry.ensure_modules()  # an entity's exception comes back as its own class
    check_options(options)
    task_id = options.pop("task_id", None) or str(uuid.uuid4())
    op = str(msg.get("op")) if isinstance(msg, dict) else "?"
    call = Call(name, entity_id, msg, durability, task_id, options)
    result = await current_transport().send_and_wait(call, timeout)
    result.describe(name, entity_id, op, decode_as)
    return result.reply()


async def send_and_wait(
    entity_type: str,
    entity_id: str,
    msg: dict[str, Any],
    durability: str | None,
    task_id: str,
    options: dict[str, Any],
    timeout: float | None,
) -> EntityResult[Any]:
    """Publishes one call through the broker and awaits its stored reply on the loop's
    subscription; returns the settled result (``.reply()`` gives the reply or raises).

    Subscribes before publishing (:mod:`entities.replies`); raises ReplyTimeout after
    ``timeout`` seconds. This is the broker's async send
    (:class:`entities.transports.BrokerTransport`); the test kit's transport
    applies the call in process instead.
    """
    args: list[Any] = [entity_type, entity_id, msg]
    if durability is not None:
        args.append(durability)
    app = transport.client_app()
    if not transport.routing_checked():  # the first send checks the store: off the loop
        await asyncio.to_thread(transport.check_routing)
    result: EntityResult[Any] = EntityResult(task_id, app=app, backend=app.backend)
    result.describe(entity_type, entity_id, str(msg.get("op")) if isinstance(msg, dict) else "?")
    backend_url = _redis_url(app.conf.result_backend)
    if backend_url is None:  # replies are not in Redis: wait in a thread
        sent = await asyncio.to_thread(
            client.send, entity_type, entity_id, msg, durability, task_id=task_id, **options
        )
        await asyncio.to_thread(sent.get, timeout, False)  # settles it; .reply() raises
        return sent
    direct = transport.direct_message(app, args, task_id, options)
    replies = async_replies(backend_url, _text(app.backend.task_keyprefix))
    reply: asyncio.Future[bytes] | None = None
    try:
        reply = await replies.watch(task_id)
        if direct is not None and not direct.delayed:
            broker, queue, raw = (
                async_replies(app.conf.broker_url, "").client,
                direct.queue,
                direct.raw,
            )
            await publish_retrying_async(app, lambda: broker.lpush(queue, raw))
        elif direct is not None:  # due later: the delayed set's script, once, off the loop
            await asyncio.to_thread(transport.push, app, direct)
        else:  # options only Celery's publish path takes
            await asyncio.to_thread(
                client.send, entity_type, entity_id, msg, durability, task_id=task_id, **options
            )
    except BaseException as exc:
        if reply is not None:
            reply.cancel()
        if isinstance(exc, Exception):
            error = transport.publish_error(exc)
            if error is not exc:
                raise error from exc
        raise
    try:
        payload = await asyncio.wait_for(reply, timeout)
    except TimeoutError:
        from entities.errors import ReplyTimeout

        raise ReplyTimeout(result.timeout_message(timeout)) from None
    result.settle(payload)
    return result


async def delete(entity_type: str | type[Entity], entity_id: str, timeout: float = 10) -> None:
    """Deletes an entity's state and alarms, in order with its queued messages (awaits
    the commit, up to ``timeout`` seconds)."""
    await call(entity_type, entity_id, {"op": OP_DELETE}, timeout=timeout)


async def read(entity_type: str | type[Entity], entity_id: str) -> Snapshot | None:
    """The last committed state (see :func:`entities.read`)."""
    return await asyncio.to_thread(client.read, entity_type, entity_id)


async def list_entities(
    entity_type: str | type[Entity], limit: int = 100, after: str | None = None
) -> list[str]:
    """Stored ids of ``entity_type`` (see :func:`entities.list_entities`)."""
    return await asyncio.to_thread(client.list_entities, entity_type, limit, after)


async def schedule_alarm(
    entity_type: str | type[Entity],
    entity_id: str,
    name: str,
    delay: Delay,
    payload: Any = None,
) -> dt.datetime:
    """Schedules (or replaces) an alarm (see :func:`entities.schedule_alarm`)."""
    return await asyncio.to_thread(
        client.schedule_alarm, entity_type, entity_id, name, delay, payload
    )


async def cancel_alarm(entity_type: str | type[Entity], entity_id: str, name: str) -> None:
    """Cancels an alarm (see :func:`entities.cancel_alarm`)."""
    await asyncio.to_thread(client.cancel_alarm, entity_type, entity_id, name)


async def cancel_all_alarms(entity_type: str | type[Entity], entity_id: str) -> None:
    """Cancels every alarm of an entity (see :func:`entities.cancel_all_alarms`)."""
    await asyncio.to_thread(client.cancel_all_alarms, entity_type, entity_id)


async def list_alarms(
    entity_type: str | type[Entity], entity_id: str
) -> list[tuple[str, dt.datetime]]:
    """The entity's scheduled alarms, by fire time (see :func:`entities.list_alarms`)."""
    return await asyncio.to_thread(client.list_alarms, entity_type, entity_id)


async def aclose() -> None:
    """Closes the running loop's Redis connections (an app's shutdown; optional)."""
    from entities.replies import close_loop

    await close_loop()


def _redis_url(url: Any) -> str | None:
    if isinstance(url, str) and url.startswith(("redis://", "rediss://", "redis+socket://")):
        return url
    return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: The async twins; ``call`` (with ``decode_as``) and ``send_and_wait`` are for references
#: and transports.
__all__ = [
    "aclose",
    "cancel_alarm",
    "cancel_all_alarms",
    "delete",
    "list_alarms",
    "list_entities",
    "read",
    "schedule_alarm",
    "send",
]
