"""Entity classes of the core test suite (loaded by workers through ENTITIES_MODULES)."""

from __future__ import annotations

from typing import Any

from entities import Entity, field, handler


class Probe(Entity, name="suite-probe"):
    """An entity whose handlers misbehave on request, to test what callers and state see."""

    value: Any = None
    blob: str = ""
    calls: int = 0
    notes: list[str] = field(default_factory=list)

    @handler
    def set(self, value: Any) -> Any:
        self.value = value
        self.calls += 1
        return value

    @handler
    def get(self) -> Any:
        return self.value

    @handler
    def fill(self, size: int) -> int:
        self.blob = "x" * size
        return size

    @handler
    def note(self, text: str) -> int:
        self.notes.append(text)
        return len(self.notes)

    @handler
    def reply_unencodable(self) -> Any:
        self.calls += 1
        return {1, 2, 3}

    @handler
    def fail(self, message: str) -> None:
        self.calls += 1
        raise ValueError(message)
