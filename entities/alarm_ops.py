"""Alarm changes made outside an entity, as runtime messages through its queue.

``entities.schedule_alarm``, ``cancel_alarm``, ``cancel_all_alarms`` and
``retry_alarm`` send the change through the entity's queue, then write the
store (so ``list_alarms`` sees it at once, and it holds with no worker
running). Invariant: an external change is never undone by a change the
entity made before it. The queued copy is applied after every message the
entity took before the call, so it is staged after any of its unflushed alarm
changes and wins at their commit.

Invariant: a schedule made once is one scheduling, fired once. The client
chooses the scheduling id, and the direct write and the queued copy both write
it; writing a scheduling the row already holds is a no-op (its dispatch state
and attempts stay). A dispatch of the direct write is made only after the copy
was pushed, so its firing is queued behind the copy and finds that same
scheduling current, whether the copy committed before the dispatch claimed it,
after, or is staged in the firing's own batch (the firing then checks the
staged change, and the commit writes the change before the firing's outcome).
Had the copy made a new scheduling, a firing dispatched before the copy was
applied would be dropped as replaced, and the alarm would wait for another
dispatch.
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

# OP_SET_ALARM schedules or replaces (``[name, fire_at ISO 8601, payload, scheduling id]``;
# without the id, the commit makes a new scheduling) or cancels
# (``[name, None]``); OP_CLEAR_ALARMS (no arguments) cancels every alarm of the entity.


def set_alarm_msg(change: AlarmChange) -> dict[str, Any]:
    """The runtime message that applies ``change`` (its payload already encoded)."""
    if change.fire_at is None:
        return {"op": OP_SET_ALARM, "args": [change.name, None]}
    args = [change.name, change.fire_at.astimezone(dt.UTC).isoformat(), change.payload]
    if change.scheduling_id is not None:
        args.append(change.scheduling_id)
    return {"op": OP_SET_ALARM, "args": args}


def clear_alarms_msg() -> dict[str, Any]:
    """The runtime message that cancels every alarm of an entity."""
    return {"op": OP_CLEAR_ALARMS}


def parse_set_alarm(entity_type: str, entity_id: str, args: list[Any]) -> AlarmChange:
    """The change an ``__set_alarm__`` message carries; BadMessage naming what is wrong."""
    from entities.messages import MAX_SCHEDULING_ID_LENGTH
    from entities.model import _check_alarm_name

    if not 2 <= len(args) <= 4:
        raise BadMessage(f"{OP_SET_ALARM} takes [name, fire_at or None, payload, scheduling id]")
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
    payload = args[2] if len(args) >= 3 else None
    scheduling_id = args[3] if len(args) == 4 else None
    if scheduling_id is not None and (
        not isinstance(scheduling_id, str) or not 0 < len(scheduling_id) <= MAX_SCHEDULING_ID_LENGTH
    ):
        raise BadMessage(
            f"{OP_SET_ALARM}: scheduling id must be a str of 1 to "
            f"{MAX_SCHEDULING_ID_LENGTH} characters, got {scheduling_id!r}"
        )
    return AlarmChange(entity_type, entity_id, name, fire_at, payload, scheduling_id)
