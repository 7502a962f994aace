"""What a sender learns when another entity refused its message: :class:`SendFailure`.

``self.send(type, id, msg)`` checks what it can before the handler commits:
the type must be registered in this process (every worker imports the same
``ENTITIES_MODULES``), ``op`` must be one of its handlers and the arguments
must fit it; otherwise the send raises in the handler (UnknownEntityType,
UnknownHandler, BadMessage) and the sender's change rolls back.

What only the receiver can know (its handler raised, its state grew too large,
its class changed since) is a refusal. The runtime never drops one silently:
it is logged with both entities, counted (``send.refused`` telemetry,
``sends_refused`` in ``entities stats``), kept as a dead letter naming both,
and, if the sender's class overrides ``handle_send_failed(self, failure)``,
delivered to the sender as a :class:`SendFailure`, after the refusal commits,
so the sender can compensate. The hook runs like a handler (its changes
commit with the sender's durability; if it raises, that is logged and the
failure is not delivered again).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from entities.errors import BadMessage

__all__ = ["SendFailure"]


@dataclasses.dataclass(frozen=True)
class SendFailure:
    """A message this entity sent that its receiver refused.

    ``entity_type``/``entity_id``: the receiver; ``msg``: the message as sent;
    ``error_type``, ``error_module`` and ``error``: the class, its module and
    the message of the error the receiver raised; ``message_id``: the task id
    the message travelled under.
    """

    entity_type: str
    entity_id: str
    msg: dict[str, Any]
    error_type: str
    error_module: str
    error: str
    message_id: str

    def to_json(self) -> dict[str, Any]:
        """The failure as the plain JSON the runtime message carries."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SendFailure:
        """The failure from :meth:`to_json`'s output; BadMessage if it is not one."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            raise BadMessage(f"a send failure is an object with exactly the keys {names}")
        if not isinstance(data["msg"], dict) or not all(
            isinstance(data[n], str) for n in names if n != "msg"
        ):
            raise BadMessage("a send failure's fields are str, but 'msg', an object")
        return cls(**data)
