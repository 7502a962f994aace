"""The messages of one applied batch with their replies, from a ``message.applied`` event."""

from __future__ import annotations

import dataclasses
from typing import Any

from entities.messages import Envelope, parse_envelope
from entities.settings import get_settings
from entities.telemetry import Event


@dataclasses.dataclass(frozen=True)
class Applied:
    """One message of a batch and its reply (None: held by a pause, or unreadable)."""

    envelope: Envelope
    ok: bool | None
    value: Any = None
    error: BaseException | None = None


def applied_messages(event: Event) -> list[Applied]:
    """The batch's messages, oldest first, each with the reply it got."""
    outcomes = {o.task_id: o for o in event.metadata.get("outcomes") or ()}
    max_bytes = get_settings().max_message_bytes
    out = []
    for raw in event.metadata.get("raws") or ():
        env = parse_envelope(raw, max_bytes)
        o = outcomes.get(env.task_id) if env.task_id else None
        if o is None:
            out.append(Applied(env, None))
        else:
            out.append(Applied(env, bool(o.ok), o.value, o.error))
    return out
