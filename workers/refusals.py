"""Refused entity-to-entity messages: recorded once, dead-lettered, logged, counted, told.

A message one entity sent another carries its sender in the ``entities_sender``
header (the outbox keeps it; see :mod:`entities.sends` for what a sender sees).
When its receiver refuses it (unknown type or handler, arguments that do not
fit, the handler raised, state too large), the receiver's partition adds to the
commit of that batch:

- the message's processed-message record, with the error, so a redelivery of
  the message is recognised and refused from the record, never recorded twice;
- a dead letter naming both entities, holding the message under a fresh task
  id, so ``entities dead-letters replay`` applies it again once the cause is
  fixed (a replay refused again is a new refusal);
- if the sender's class overrides ``handle_send_failed``, a ``__send_failed__``
  message to the sender in the outbox, published after the commit like any
  sent message (and, like any, applied once).

After the commit the refusal is logged with both entities, emitted as
``send.refused`` and counted in the worker's ``sends_refused``.

Invariant: a refused entity-to-entity message leaves exactly one record, one
dead letter and at most one notice to its sender, in the same commit, or
nothing at all if that commit fails (and the message is then refused again).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
from typing import Any

from entities import registry, telemetry
from entities.messages import OP_SEND_FAILED, Envelope
from entities.model import Entity
from entities.routing import queue_name
from entities.sends import SendFailure
from entities.store import DeadLetter, OutboxMessage, Processed
from entities.transport import celery_message

log = logging.getLogger(__name__)

#: Longest error text kept in a record, a dead letter or a notice.
MAX_ERROR_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class Refusal:
    """What the commit of a batch holds for one refused entity-to-entity message."""

    sender: tuple[str, str]
    receiver: tuple[str, str]
    op: str
    error: BaseException
    reason: str
    processed: Processed
    dead_letter: DeadLetter
    notice: OutboxMessage | None

    def report(self) -> None:
        """Logs and emits the refusal (after its commit)."""
        log.warning("%s", self.reason)
        telemetry.emit(
            "send.refused",
            sender_type=self.sender[0],
            sender_id=self.sender[1],
            entity_type=self.receiver[0],
            entity_id=self.receiver[1],
            op=self.op,
            error=repr(self.error),
        )


def refuse(env: Envelope, error: BaseException, partition: int) -> Refusal:
    """The records of ``env``'s refusal with ``error``; ``env.sender`` must be set."""
    assert env.sender is not None
    sender, receiver = env.sender, env.key
    kind = type(error)
    text = _text(str(error))
    reason = _text(
        f"{sender[0]} {sender[1]!r} sent {env.op!r} to {receiver[0]} {receiver[1]!r}, "
        f"which refused it: {kind.__name__}: {text}"
    )
    processed = Processed(env.task_id, *receiver, partition, False, error_reply(error))
    msg: dict[str, Any] = {"op": env.op, "args": env.args, "kwargs": env.kwargs}
    if env.bad is None:  # a fresh task id: a replay is applied, not found as processed
        raw = celery_message(
            *receiver, msg, uuid.uuid4().hex, env.durability, ignore_result=True, sender=sender
        ).decode()
    else:
        raw = env.raw.decode("utf-8", "replace")
    dead = DeadLetter(queue_name(partition), reason, raw)
    notice = None
    cls = registry.find(sender[0])
    if cls is not None and cls.handle_send_failed is not Entity.handle_send_failed:
        failure = SendFailure(*receiver, msg, kind.__qualname__, kind.__module__, text, env.task_id)
        notice = OutboxMessage(
            uuid.uuid5(uuid.NAMESPACE_URL, f"entities-refused:{env.task_id}").hex,
            partition,
            *sender,
            {"op": OP_SEND_FAILED, "args": [failure.to_json()]},
        )
    return Refusal(sender, receiver, env.op, error, reason, processed, dead, notice)


def error_reply(error: BaseException) -> dict[str, str]:
    """How a processed-message record keeps an error: its class and its message, as
    :func:`recorded_error` rebuilds it."""
    kind = type(error)
    return {
        "exc_type": kind.__qualname__,
        "exc_module": kind.__module__,
        "exc_message": _text(str(error)),
    }


def recorded_error(reply: Any) -> BaseException:
    """The error a refusal's processed-message record holds, rebuilt as its class if that
    class is loaded here and takes its message (else a RuntimeError naming it)."""
    info = reply if isinstance(reply, dict) else {}
    name, module = str(info.get("exc_type", "Exception")), str(info.get("exc_module", ""))
    message = str(info.get("exc_message", ""))
    found: Any = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            return found(message)
        except Exception:
            pass
    return RuntimeError(f"{module}.{name}: {message}")


def _text(value: str) -> str:
    """``value`` bounded, as text every store holds (no NUL, no lone surrogate)."""
    value = value[:MAX_ERROR_CHARS].replace("\x00", "\ufffd")
    return value.encode("utf-8", "replace").decode("utf-8")
