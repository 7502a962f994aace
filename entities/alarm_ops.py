"""Alarm changes made outside an entity, as runtime messages through its queue.

``entities.schedule_alarm``, ``cancel_alarm`` and ``cancel_all_alarms`` write
the store at once (so ``list_alarms`` sees the change and it holds with no
worker running) and also send the same change through the entity's queue,
where it is applied in order with the entity's messages. Invariant: an
external change is never undone by a change the entity made before it. A
relaxed entity's unflushed alarm change (made before the call) commits at the
latest with the queued copy, which is staged after it and so wins; a firing
the direct write cancelled or replaced may be queued only behind that copy
(it is pushed first), so it meets the change staged or committed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from entities.errors import BadMessage
from entities.messages import OP_CLEAR_ALARMS, OP_SET_ALARM
from entities.store import AlarmChange

__all__ = [
    "OP_CLEAR_ALARMS",
    "OP_SET_ALARM",
    "clear_alarms_msg",
    "parse_set_alarm",
    "set_alarm_msg",
]

# OP_SET_ALARM schedules or replaces (``[name, fire_at ISO 8601, payload]``) or cancels
# (``[name, None]``); OP_CLEAR_ALARMS (no arguments) cancels every alarm of the entity.


def set_alarm_msg(change: AlarmChange) -> dict[str, Any]:
    """The runtime message that applies ``change`` (its payload already encoded)."""
    if change.fire_at is None:
        return {"op": OP_SET_ALARM, "args": [change.name, None]}
    return {
        "op": OP_SET_ALARM,
        "args": [change.name, change.fire_at.astimezone(dt.UTC).isoformat(), change.payload],
    }


def clear_alarms_msg() -> dict[str, Any]:
    """The runtime message that cancels every alarm of an entity."""
    return {"op": OP_CLEAR_ALARMS}


def parse_set_alarm(entity_type: str, entity_id: str, args: list[Any]) -> AlarmChange:
    """The change an ``__set_alarm__`` message carries; BadMessage naming what is wrong."""
    from entities.model import _check_alarm_name

    if not 2 <= len(args) <= 3:
        raise BadMessage(f"{OP_SET_ALARM} takes [name, fire_at or None, payload]")
    name, when = args[0], args[1]
    _check_alarm_name(name)
    if when is None:
        return AlarmChange(entity_type, entity_id, name, None)
    if not isinstance(when, str):
        raise BadMessage(f"{OP_SET_ALARM}: fire_at must be an ISO 8601 str, got {when!r}")
    try:
        fire_at = dt.datetime.fromisoformat(when)
    except ValueError:
        raise BadMessage(f"{OP_SET_ALARM}: fire_at {when!r} is not ISO 8601") from None
    if fire_at.tzinfo is None:
        raise BadMessage(f"{OP_SET_ALARM}: fire_at {when!r} has no time zone")
    payload = args[2] if len(args) == 3 else None
    return AlarmChange(entity_type, entity_id, name, fire_at, payload)
