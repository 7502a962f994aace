"""Entity messages: their shape, their bounds, and how they travel in Celery envelopes.

A message is ``{"op": <handler>, "args": [...], "kwargs": {...}}``; ``args``
and ``kwargs`` are optional. It travels as the arguments of the Celery task
``entities.send_to_entity(entity_type, entity_id, msg, durability=None)`` in a
Celery protocol 2 message, JSON only.

Invariant: no message content can stall a partition. Everything a message
carries that the runtime stores or looks up (type names, ids, task ids, and the
arguments of the runtime's own ops: ``__alarm__``, ``__delete__``,
``__set_alarm__``, ``__clear_alarms__``) is checked
here, before any handler runs or any store is asked: names must be storable
text (no NUL, no lone surrogate, bounded), numbers within the store's range.
Internal ops are validated exactly like user ops; a message that fails gets a
``BadMessage`` reply (or is dead-lettered) and the partition moves on. What
slips past this check and makes the store refuse a value is the runner's to
isolate (see :mod:`workers.poison`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any

import orjson

from entities.errors import BadMessage, MessageError, UnknownHandler
from entities.model import DURABILITIES
from entities.options import message_options
from entities.routing import TASK_NAME

#: Longest entity id or type name accepted.
MAX_ID_LENGTH = 255

#: Ops of the runtime itself; handler names cannot start with "_".
OP_DELETE = "__delete__"
OP_ALARM = "__alarm__"
OP_SET_ALARM = "__set_alarm__"  # see entities.alarm_ops
OP_CLEAR_ALARMS = "__clear_alarms__"
OP_SEND_FAILED = "__send_failed__"  # tells a sender that its message was refused
RUNTIME_OPS = frozenset({OP_DELETE, OP_ALARM, OP_SET_ALARM, OP_CLEAR_ALARMS, OP_SEND_FAILED})

#: The Celery message header naming the entity that sent a message: [type, id].
SENDER_HEADER = "entities_sender"
#: Longest alarm scheduling id accepted (the store keeps 64 characters).
MAX_SCHEDULING_ID_LENGTH = 64
#: Largest alarm attempt number accepted (the store keeps a 32-bit count, plus one).
MAX_ALARM_ATTEMPT = 2**31 - 2


def validate_id(what: str, value: Any, max_length: int = MAX_ID_LENGTH) -> str:
    """Checks an entity type name, id or task id: a non-empty str, bounded, storable text."""
    if not isinstance(value, str):
        raise BadMessage(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise BadMessage(f"{what} must not be empty")
    if len(value) > max_length:
        raise BadMessage(f"{what} is {len(value)} characters long; the limit is {max_length}")
    if "\x00" in value:
        raise BadMessage(f"{what} must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadMessage(
                f"{what} is not valid Unicode text (it has a lone surrogate)"
            ) from None
    return value


def validate_message(
    entity_type: Any, entity_id: Any, msg: Any
) -> tuple[str, list[Any], dict[str, Any]]:
    """Checks a message's shape; returns (op, args, kwargs).

    Raises BadMessage for a malformed message, UnknownHandler for an op that
    can be no handler (one starting with ``_`` that is not a runtime op).
    """
    validate_id("entity type", entity_type)
    validate_id("entity id", entity_id)
    if not isinstance(msg, dict):
        raise BadMessage(f"a message must be a dict with an 'op', got {type(msg).__name__}")
    unknown = set(msg) - {"op", "args", "kwargs"}
    if unknown:
        raise BadMessage(
            f"a message has only 'op', 'args' and 'kwargs'; got also {sorted(unknown)}"
        )
    op = msg.get("op")
    if not isinstance(op, str) or not op:
        raise BadMessage(f"a message needs 'op', the handler name as a str; got {op!r}")
    if op.startswith("_") and op not in RUNTIME_OPS:
        raise UnknownHandler(
            f"entity type {entity_type!r} has no handler {op!r} (handler names never start with _)"
        )
    args = msg.get("args", [])
    kwargs = msg.get("kwargs", {})
    if not isinstance(args, list):
        raise BadMessage(f"'args' must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise BadMessage("'kwargs' must be a dict with str keys")
    if op in RUNTIME_OPS:
        validate_runtime_args(op, args, kwargs)
    return op, args, kwargs


def validate_runtime_args(op: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Checks the arguments of a runtime op as a handler's are checked: shape, types,
    storable text and bounds; raises BadMessage naming what is wrong."""
    if kwargs:
        raise BadMessage(f"op {op!r} takes no kwargs, got {sorted(kwargs)}")
    if op in (OP_DELETE, OP_CLEAR_ALARMS):
        if args:
            raise BadMessage(f"op {op!r} takes no args, got {len(args)}")
    elif op == OP_SET_ALARM:
        from entities import codec
        from entities.alarm_ops import parse_set_alarm
        from entities.errors import StateError

        change = parse_set_alarm("-", "-", args)
        try:
            codec.check_json(change.payload, f"{op} payload")
        except StateError as exc:
            raise BadMessage(str(exc)) from None
    elif op == OP_SEND_FAILED:
        from entities.sends import SendFailure

        if len(args) != 1:
            raise BadMessage(f"op {op!r} takes args [failure], got {len(args)} args")
        SendFailure.from_json(args[0])
    elif op == OP_ALARM:
        if len(args) != 3:
            raise BadMessage(
                f"op {op!r} takes args [name, scheduling_id, attempt], got {len(args)} args"
            )
        name, scheduling_id, attempt = args
        validate_id("alarm name", name)
        validate_id("alarm scheduling id", scheduling_id, MAX_SCHEDULING_ID_LENGTH)
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise BadMessage(f"alarm attempt must be an int, got {type(attempt).__name__}")
        if not 0 <= attempt <= MAX_ALARM_ATTEMPT:
            raise BadMessage(f"alarm attempt must be 0..{MAX_ALARM_ATTEMPT}, got {attempt}")


@dataclasses.dataclass
class Envelope:
    """One message read from a partition queue.

    ``raw`` is the exact bytes read from the broker. When the envelope could not
    be understood, ``error`` says why and the message is dead-lettered; an
    envelope whose entity message is malformed keeps its task id and gets a
    BadMessage (or UnknownHandler) reply instead (``bad``).
    """

    raw: bytes
    task_id: str = ""
    entity_type: str = ""
    entity_id: str = ""
    op: str = ""
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    durability: str | None = None
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    bad: MessageError | None = None
    silent: bool = False  # the sender asked for no reply (Celery's ignore_result)
    sender: tuple[str, str] | None = None  # the entity that sent it (SENDER_HEADER)
    eta: float | None = None  # not to be applied before (seconds since the epoch)
    expires: float | None = None  # not to be applied after (seconds since the epoch)
    links: dict[str, Any] | None = None  # callbacks, errbacks, chain to fire after the reply

    @property
    def key(self) -> tuple[str, str]:
        """The (type, id) of the addressed entity."""
        return (self.entity_type, self.entity_id)


#: A run of digits this long may be an integer outside 64 bits, which orjson turns into
#: a float without a word (-2**63 - 1 becomes -9.223372036854776e+18).
_LONG_DIGITS = re.compile(rb"[0-9]{19,}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19,}")


def _loads(data: bytes | str, exact: bool = True) -> Any:
    """JSON in, fast (orjson) for what it reads exactly; the standard library for the rest.

    orjson refuses a few things json accepts (NaN, huge exponents) and reads
    integers beyond 64 bits as floats, so a message using them goes to the
    standard library and parses exactly as before. ``exact=False`` (the kombu
    envelope, whose numbers are never used) skips the search for long integers.
    """
    if not exact:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)
    if isinstance(data, str):
        exact = _LONG_DIGITS_TEXT.search(data) is None
    else:
        exact = isinstance(data, bytes) and _LONG_DIGITS.search(data) is None
    if exact:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def parse_envelope(raw: bytes, max_bytes: int) -> Envelope:
    """Parses a kombu Redis envelope holding a protocol 2 send_to_entity call.

    Never raises: whatever is wrong is recorded on the returned Envelope.
    """
    env = Envelope(raw=raw)
    # Parsed even when too large, so the caller still gets a reply naming the limit.
    too_large = len(raw) > max_bytes * 2  # base64 and the envelope inflate the body
    try:
        outer = _loads(raw, exact=False)  # only its strings are read
        headers = outer["headers"]
        props = outer.get("properties") or {}
        ctype = outer.get("content-type")
        body = outer["body"]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deep nesting
        env.error = "not a Celery message (the envelope is not JSON with headers and body)"
        return env
    if not isinstance(headers, dict):
        env.error = "not a Celery message (headers are not an object)"
        return env
    env.headers = headers
    env.silent = bool(headers.get("ignore_result"))
    env.sender = _sender(headers.get(SENDER_HEADER))
    task_id = headers.get("id")
    if headers.get("task") != TASK_NAME or not isinstance(task_id, str) or not task_id:
        env.error = (
            f"not a {TASK_NAME} message of Celery protocol 2 (task={headers.get('task')!r}, "
            f"id={task_id!r})"
        )
        return env
    env.task_id = task_id
    try:  # the task id is stored as the processed-message key, so it is bounded like an id
        validate_id("task id", task_id)
    except BadMessage as exc:
        env.error = str(exc)
        if "lone surrogate" in env.error:
            env.task_id = ""  # no reply: it could not even be a result-backend key
        return env
    if too_large:
        env.error = f"message of {len(raw)} bytes exceeds the limit of {max_bytes} bytes"
        return env
    if headers.get("compression"):
        env.error = f"compressed message ({headers['compression']!r}) refused: JSON only"
        return env
    if ctype != "application/json":
        env.error = f"content type {ctype!r} refused: only application/json is accepted"
        return env
    if not isinstance(props, dict):
        env.error = "not a Celery message (properties are not an object)"
        return env
    try:
        if props.get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        if len(body) > max_bytes:
            env.error = f"message body of {len(body)} bytes exceeds the limit of {max_bytes} bytes"
            return env
        args, kwargs, embed = _loads(body)
    except (ValueError, TypeError, RecursionError, binascii.Error):
        env.error = "body is not a JSON [args, kwargs, embed] triple"
        return env
    try:
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise BadMessage("send_to_entity takes (entity_type, entity_id, msg, durability=None)")
        call = dict(zip(("entity_type", "entity_id", "msg", "durability"), args, strict=False))
        overlap = set(call) & set(kwargs)
        if overlap or set(kwargs) - {"entity_type", "entity_id", "msg", "durability"}:
            raise BadMessage(f"send_to_entity got unexpected arguments {sorted(kwargs)}")
        call.update(kwargs)
        if len(args) > 4 or not {"entity_type", "entity_id", "msg"} <= set(call):
            raise BadMessage("send_to_entity takes (entity_type, entity_id, msg, durability=None)")
        env.entity_type = call["entity_type"] if isinstance(call["entity_type"], str) else ""
        env.entity_id = call["entity_id"] if isinstance(call["entity_id"], str) else ""
        env.op, env.args, env.kwargs = validate_message(
            call["entity_type"], call["entity_id"], call["msg"]
        )
        durability = call.get("durability")
        if durability is not None and durability not in DURABILITIES:
            raise BadMessage(
                f"durability must be one of {DURABILITIES} or None, got {durability!r}"
            )
        env.durability = durability
        options = message_options(headers, embed)
        env.eta, env.expires, env.links = options.eta, options.expires, options.links
    except MessageError as exc:
        env.bad = exc
    return env


def _sender(value: Any) -> tuple[str, str] | None:
    """The (type, id) of a SENDER_HEADER value; None if absent or malformed (it only
    decides who hears of a refusal, so a bad one is ignored, never fatal)."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    try:
        return validate_id("sender type", value[0]), validate_id("sender id", value[1])
    except BadMessage:
        return None
