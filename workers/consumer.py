"""The Celery consumer of this app's tasks queue, hardened: garbage is dead-lettered, never fatal.

Workers run Celery's consumer only for this app's own tasks (alarm dispatch),
on :data:`~entities.routing.TASKS_QUEUE`. Celery's default queue, where
clients without our router send, is forwarded by :mod:`workers.forwarder`
(one worker at a time, in order), which screens its messages with
:func:`screen_envelope` and the partition owners' rules.

A stock Celery worker (celery 5.7, kombu 5.7, Redis) exits with "Unrecoverable
error" when one of these reaches a queue it consumes: text that is not JSON;
JSON that is not an object; ``properties`` that are not an object; ``headers``
that are a list; an unknown ``body_encoding`` or invalid base64; a task id that
is None or not a str; a protocol-2 body that is not an ``[args, kwargs,
embed]`` triple; non-list ``stamped_headers``. With late acknowledgement the
failing message is restored to the queue and stops the next worker too.

Here every message on the tasks queue is checked twice, with the rules the
partition owners apply (:func:`entities.messages.parse_envelope`):

1. As it leaves Redis (:class:`ScreeningChannel`): an item kombu could not turn
   into a message is dead-lettered with its reason and never reaches kombu.
2. Before Celery's task strategy runs (:class:`Consumer`): a message that is
   not a well-formed ``send_to_entity`` call is dead-lettered (unreadable, an
   unknown task, a refused content type such as pickle) or answered with
   ``BadMessage`` (a well-formed call with a malformed entity message), and
   acknowledged. A call not due yet (an ``eta``) goes to its partition's
   durable delayed set instead of this worker's memory; an expired one gets
   a MessageExpired reply. Other tasks of this app (alarm dispatch) go to
   Celery as usual. Anything Celery's strategy still raises is dead-lettered
   too. (A ``send_to_entity`` call sent to this queue explicitly is forwarded
   by the task body, in the pool: no order holds for such calls.)

Dead letters go to the state store with the queue name and the reason; if the
store is unreachable the message is logged (truncated) and dropped, since a
message no worker can read would only circle back.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads as kombu_loads
from kombu.utils.objects import cached_property

from entities import clock
from entities.delayed import add as add_delayed
from entities.delayed import due_ms
from entities.errors import BadMessage
from entities.messages import Envelope, parse_envelope
from entities.routing import TASK_NAME, partition_for
from entities.store import CommitBatch, DeadLetter, Store
from entities.transport import broker_client
from workers.apply import Outcome
from workers.processor import expiry_error
from workers.replies import ReplyWriter

log = logging.getLogger(__name__)

#: Longest part of a dead message kept in the store or in the log.
MAX_DEAD_LETTER_CHARS = 64 << 10

#: Receives (queue, raw message, reason) for a message nobody can process.
DeadLetterSink = Callable[[str, bytes, str], None]


def screen(raw: bytes, channel: Any) -> str | None:
    """Why kombu could not read this popped item as a message; None if it can."""
    reason = screen_envelope(raw)
    if reason is not None:
        return reason
    try:
        channel.Message(kombu_loads(raw.decode("utf-8")), channel=channel)
    except Exception as exc:
        return f"not a Celery message: kombu cannot read it ({exc!r})"
    return None


def screen_envelope(raw: bytes) -> str | None:
    """Why this item is no kombu Redis envelope (kombu's own rules, with no channel);
    None if it is one."""
    try:
        payload = kombu_loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not a Celery message: not UTF-8 text"
    except Exception as exc:  # kombu's JSON hooks raise what the decoders raise
        return f"not a Celery message: not JSON ({exc})"
    if not isinstance(payload, dict):
        return f"not a Celery message: a JSON {type(payload).__name__}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str):
        return "not a Celery message: no properties object with a delivery tag"
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        return "not a Celery message: headers are not an object"
    encoding, body = props.get("body_encoding"), payload.get("body")
    if body and encoding:  # what kombu's virtual channel does with the body
        if encoding != "base64":
            return f"not a Celery message: kombu cannot read it (body encoding {encoding!r})"
        try:
            base64.b64decode(body)
        except (ValueError, TypeError) as exc:
            return f"not a Celery message: kombu cannot read it (invalid base64: {exc})"
    return None


class ScreeningChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, with every popped item screened before kombu parses it."""

    @cached_property  # type: ignore[untyped-decorator]
    def client(self) -> Any:
        client = self._create_client(asynchronous=True)
        parse = client.parse_response

        def parse_response(connection: Any, command_name: str, **options: Any) -> Any:
            reply = parse(connection, command_name, **options)
            if command_name == "BRPOP" and reply:
                queue, item = reply
                reason = screen(item, self)
                if reason is not None:
                    name = _text(queue).rsplit(self.sep, 1)[0]  # without a priority suffix
                    self.connection.dead_letter(name, item, reason)
                    return None  # as if the pop had timed out: kombu polls again
            return reply

        client.parse_response = parse_response
        return client


class ScreeningTransport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with :class:`ScreeningChannel`."""

    Channel = ScreeningChannel
    #: Set by the consumer that opened the connection.
    sink: DeadLetterSink | None = None

    def dead_letter(self, queue: str, raw: bytes, reason: str) -> None:
        """Hands a screened-out item to the sink (or the log, if none is set)."""
        if self.sink is not None:
            self.sink(queue, raw, reason)
            return
        log.error(
            "dropped an unreadable message on %s (%s): %r",
            queue,
            reason,
            raw[:MAX_DEAD_LETTER_CHARS],
        )


#: The name the screening transport goes by in URLs and logs.
TRANSPORT_ALIASES.setdefault("entities-redis", f"{__name__}:ScreeningTransport")


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's worker consumer, dead-lettering what it cannot run instead of stopping."""

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        conn = self.app.connection_for_read(heartbeat=heartbeat)
        if conn.transport_cls in ("redis", "rediss"):
            conn.transport_cls = "entities-redis"
        conn = self.ensure_connected(conn)
        if isinstance(conn.transport, ScreeningTransport):
            conn.transport.sink = self.dead_letter
        return conn

    # -- dead letters ------------------------------------------------------------

    @cached_property  # type: ignore[untyped-decorator]
    def replies(self) -> ReplyWriter:
        return ReplyWriter(self.app.backend)

    def _store(self) -> Store:
        service = getattr(self.controller, "entities_service", None)
        if service is not None:
            store: Store = service.store
            return store
        from entities.client import get_store

        return get_store()

    def dead_letter(self, queue: str, raw: bytes, reason: str) -> None:
        """Keeps a message nobody can process, with the reason, in the state store."""
        text = raw[:MAX_DEAD_LETTER_CHARS].decode("utf-8", "replace")
        log.warning("dead-lettered a message on %s: %s", queue, reason)
        try:
            self._store().commit(
                CommitBatch(
                    partition=-1, epoch=None, dead_letters=[DeadLetter(queue, reason[:4000], text)]
                )
            )
        except Exception:
            log.exception("could not store a dead letter; dropping it: %r", text)

    def _reject(
        self,
        message: Any,
        reason: str,
        task_id: str = "",
        silent: bool = False,
        dead: bool = True,
        error: BaseException | None = None,
    ) -> None:
        queue = (message.delivery_info or {}).get("routing_key") or "celery"
        if dead:
            self.dead_letter(queue, _raw(message), reason)
        if task_id and not silent:
            try:
                self.replies.write([Outcome.failure(task_id, error or BadMessage(reason))])
            except Exception:
                log.warning("could not store the BadMessage reply of %s", task_id, exc_info=True)
        if not message.acknowledged:
            message.ack_log_error(log, self.connection_errors)

    # -- Celery's hooks ---------------------------------------------------------------

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        run = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            if self._other_task(message):
                return guarded(message)  # another task of this app: Celery runs it
            try:
                env = parse_envelope(_raw(message), self._max_message_bytes)
            except Exception as exc:  # parse_envelope never raises; belt and braces
                return self._reject(message, f"unreadable message ({exc!r})")
            if env.error is not None:
                return self._reject(message, env.error, env.task_id, env.silent)
            if env.bad is not None:
                return self._reject(
                    message, str(env.bad), env.task_id, env.silent, dead=False, error=env.bad
                )
            if env.expires is not None and env.expires <= clock.now().timestamp():
                return self._reject(
                    message, "", env.task_id, env.silent, dead=False, error=expiry_error(env)
                )
            if env.eta is not None and env.eta > clock.now().timestamp():
                return self._delay(message, env)
            return guarded(message)

        def guarded(message: Any) -> Any:
            try:
                return run(message)
            except Exception as exc:
                log.exception("the task strategy failed on a message; dead-lettering it")
                return self._reject(message, f"Celery could not run it: {exc!r}")

        return on_task_received

    def _delay(self, message: Any, env: Envelope) -> None:
        """Puts a call that is not due yet in its partition's durable delayed set (never in
        this worker's memory, as Celery would), then acknowledges it."""
        from entities.settings import get_settings

        partition = partition_for(env.entity_type, env.entity_id, get_settings().partitions)
        client = broker_client(self.app.conf.broker_url)
        add_delayed(client, partition, [(env.raw, due_ms(env.eta or 0.0))])
        message.ack_log_error(log, self.connection_errors)

    def _other_task(self, message: Any) -> bool:
        """True for a message naming another task this app registered."""
        headers = message.headers
        name = headers.get("task") if isinstance(headers, dict) else None
        return isinstance(name, str) and name != TASK_NAME and name in self.app.tasks

    @cached_property  # type: ignore[untyped-decorator]
    def _max_message_bytes(self) -> int:
        from entities.settings import get_settings

        return get_settings().max_message_bytes

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._reject(message, "not a Celery task message (no task name)")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._reject(message, f"unknown task: {exc!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._reject(message, f"invalid task message: {exc!r}")

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self._reject(message, f"cannot decode the body: {exc!r}")


def _raw(message: Any) -> bytes:
    """The message as kombu's Redis transport stored it (JSON), for parsing and dead letters."""
    payload = getattr(message, "_raw", None)
    if isinstance(payload, dict):
        return json.dumps(payload, default=str).encode()
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
