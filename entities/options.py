"""Send options: each Celery option of a send_to_entity call is honoured or refused.

Honoured, by the direct send, by Celery's publish and by the partition owner
for a message from any client:

- ``countdown`` / ``eta``: the message waits in its partition's durable delayed
  set (:mod:`entities.delayed`) and is applied not before that time;
- ``expires``: a message found expired when it is to be applied gets a
  :class:`~entities.errors.MessageExpired` reply and has no effect;
- ``link``, ``link_error`` and chains: fired once the message's reply is stored
  (:mod:`workers.links`);
- Celery's bookkeeping: ``task_id``, parent and root ids, ``headers``,
  ``ignore_result``, ``shadow``, publish ``retry`` / ``retry_policy``, groups.

Refused with :class:`~entities.errors.BadMessage` naming the option, because
honouring it would strand the message or break what a partition owner
guarantees (:data:`REFUSED`): a priority, a queue, exchange or routing
override, a serializer other than JSON, compression, a chord, time limits.
The same rules hold for a message that arrives from a client that did not
check them (:func:`message_options`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from entities.errors import BadMessage

#: Options refused on a send, with why.
REFUSED = {
    "priority": "an entity's messages are applied in the order they were sent, and kombu "
    "would put a prioritised message on a sub-queue no partition owner reads",
    "queue": "a call goes to its entity's partition queue; any other queue is read by no "
    "partition owner",
    "routing_key": "a call goes to its entity's partition queue; another routing key "
    "would put it where no partition owner reads",
    "exchange": "a call goes to its entity's partition queue; another exchange would put "
    "it where no partition owner reads",
    "exchange_type": "a call goes to its entity's partition queue through its own exchange",
    "compression": "messages are plain JSON; a compressed body is unreadable to other "
    "clients and refused by partition owners",
    "chord": "a partition owner does not join chords: wait for a group's results instead",
    "time_limit": "a partition owner cannot stop a handler part-way (it would leave the "
    "batch half-applied)",
    "soft_time_limit": "a partition owner cannot stop a handler part-way (it would leave "
    "the batch half-applied)",
}


def check_options(options: dict[str, Any]) -> None:
    """Raises BadMessage naming the first send option that cannot be honoured."""
    for name, why in REFUSED.items():
        if options.get(name):
            raise BadMessage(
                f"send_to_entity takes no {name} (got {name}={options[name]!r}): {why}"
            )
    serializer = options.get("serializer")
    if serializer is not None and serializer != "json":
        raise BadMessage(
            f"send_to_entity takes no serializer={serializer!r}: messages are JSON only "
            "(pickle and others are refused by partition owners)"
        )


def check_callbacks(*groups: Any) -> None:
    """Raises BadMessage for a callback (``link``, ``link_error``, chain step) that is a
    send_to_entity call with an option that cannot be honoured, before anything is sent
    (the worker firing it later could only log the refusal)."""
    from entities.routing import TASK_NAME

    for sigs in groups:
        for sig in sigs if isinstance(sigs, (list, tuple)) else [sigs]:
            if isinstance(sig, dict) and sig.get("task") == TASK_NAME:
                check_options(dict(sig.get("options") or {}))


def due_at(countdown: Any = None, eta: Any = None) -> dt.datetime | None:
    """The aware UTC time a send with ``countdown`` (seconds) or ``eta`` is due; None if neither.

    A naive ``eta`` is taken as UTC, as Celery takes it with ``enable_utc``.
    """
    if eta is not None:
        return _aware(_time(eta, "eta"))
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)):
            raise BadMessage(f"countdown must be a number of seconds, got {countdown!r}")
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=countdown)
    return None


def expires_at(expires: Any, now: dt.datetime | None = None) -> dt.datetime | None:
    """The aware UTC time of ``expires`` (seconds from now, or a time); None if not set."""
    if expires is None:
        return None
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return (now or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=expires)
    return _aware(_time(expires, "expires"))


@dataclasses.dataclass(frozen=True)
class MessageOptions:
    """The options a received protocol-2 message carries, in the worker's terms."""

    eta: float | None = None  # seconds since the epoch: not to be applied before
    expires: float | None = None  # seconds since the epoch: not to be applied after
    links: dict[str, Any] | None = None  # callbacks, errbacks, chain, root_id (if any)


#: The options of a message that carries none (the common case, shared).
NO_OPTIONS = MessageOptions()
_EMBED_OPTIONS = ("callbacks", "errbacks", "chain", "chord")


def message_options(headers: dict[str, Any], embed: Any) -> MessageOptions:
    """Reads the options of a received message's headers and embed; raises BadMessage
    naming one that cannot be honoured (whoever sent it)."""
    timelimit = headers.get("timelimit")
    if (
        headers.get("eta") is None
        and headers.get("expires") is None
        and (not timelimit or timelimit == [None, None])
        and (not isinstance(embed, dict) or not any(embed.get(k) for k in _EMBED_OPTIONS))
    ):
        return NO_OPTIONS
    if isinstance(timelimit, (list, tuple)) and any(t is not None for t in timelimit):
        raise BadMessage(f"send_to_entity takes no time limits (got {list(timelimit)})")
    eta = headers.get("eta")
    expires = headers.get("expires")
    embed = embed if isinstance(embed, dict) else {}
    if embed.get("chord"):
        raise BadMessage(f"send_to_entity takes no chord: {REFUSED['chord']}")
    links: dict[str, Any] = {}
    for name in ("callbacks", "errbacks", "chain"):
        value = embed.get(name)
        if value is None or value == []:
            continue
        if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
            raise BadMessage(f"the message's {name} must be a list of Celery signatures")
        links[name] = value
    if links:
        root_id = headers.get("root_id")
        links["root_id"] = root_id if isinstance(root_id, str) else None
    return MessageOptions(
        eta=_aware(_time(eta, "eta")).timestamp() if eta is not None else None,
        expires=_aware(_time(expires, "expires")).timestamp() if expires is not None else None,
        links=links or None,
    )


def _time(value: Any, what: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise BadMessage(f"{what} must be an ISO 8601 time, got {value!r}")


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
