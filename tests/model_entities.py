"""Entity classes of the model-based runtime test (tests/test_model_runtime.py).

One class per durability mode, the same handlers in each. Every handler that
changes something appends its message's tag to ``log``, so the stored state
records which messages were applied, how often and in what order.
"""

from __future__ import annotations

from typing import Any

from entities import Entity, field, handler


class Insufficient(Exception):
    """A withdraw larger than the value."""


class Refused(Exception):
    """A handler that always raises (after changing state, which must be undone)."""


class ModelStrict(Entity, name="model-strict"):
    """The entity the model mirrors: a value and the log of applied tags."""

    value: int = 0
    log: list[str] = field(default_factory=list)

    @handler
    def add(self, tag: str, amount: int) -> int:
        self.value += amount
        self.log.append(tag)
        return self.value

    @handler
    def withdraw(self, tag: str, amount: int) -> int:
        if self.value < amount:
            raise Insufficient(f"{amount} > {self.value}")
        self.value -= amount
        self.log.append(tag)
        return self.value

    @handler
    def get(self) -> int:
        return self.value

    @handler
    def fail(self, tag: str) -> None:
        self.value += 1000
        self.log.append(tag)
        self.schedule_alarm("never", 1.0, "never")
        raise Refused(tag)

    @handler
    def arm(self, tag: str | None, name: str, delay: float, gen: str) -> None:
        self.schedule_alarm(name, delay, gen)
        if tag is not None:
            self.log.append(tag)

    @handler
    def disarm(self, tag: str | None, name: str) -> None:
        self.cancel_alarm(name)
        if tag is not None:
            self.log.append(tag)

    @handler
    def tell(self, tag: str, entity_type: str, entity_id: str) -> None:
        self.send(entity_type, entity_id, {"op": "add", "args": [tag, 1]})
        self.log.append(tag)

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.log.append(f"alarm:{name}:{payload}")


class ModelInterval(ModelStrict, name="model-interval", durability="interval", flush_interval=3600):
    """ModelStrict's handlers, flushed on the interval (an hour: the test flushes it)."""


class ModelOnStop(ModelStrict, name="model-on-stop", durability="on_stop"):
    """ModelStrict's handlers, flushed only when the owner flushes (stop, strict call)."""
