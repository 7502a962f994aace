"""Entity classes for the lifecycle tests: idle timers, durability levels, upgrades, outbox."""

from __future__ import annotations

import os
from typing import Any

from entities import Entity, handler


class IdleCounter(Entity, name="idle_counter", hibernate_after=0.3, shutdown_after=1.5):
    count: int = 0
    activations: int = 0

    def after_load(self) -> None:
        self.activations += 1

    @handler
    def increment(self) -> list[int]:
        self.count += 1
        return [self.count, self.activations]


class IntervalCounter(Entity, name="interval_counter", durability="interval", flush_interval=1.0):
    count: int = 0

    @handler
    def increment(self) -> int:
        self.count += 1
        return self.count

    @handler
    def get(self) -> int:
        return self.count


class SlowFlushCounter(
    Entity, name="slow_flush_counter", durability="interval", flush_interval=3600
):
    count: int = 0

    @handler
    def increment(self) -> int:
        self.count += 1
        return self.count

    @handler
    def get(self) -> int:
        return self.count


class OnStopCounter(Entity, name="on_stop_counter", durability="on_stop", shutdown_after=None):
    count: int = 0

    @handler
    def increment(self) -> int:
        self.count += 1
        return self.count


PROFILE_VSN = int(os.environ.get("TEST_PROFILE_VSN", "1"))


class Profile(Entity, name="profile", vsn=PROFILE_VSN):
    """vsn 1 stores ``name``; vsn 2 stores ``full_name``; vsn 3 adds ``tags``."""

    name: str = ""
    full_name: str = ""
    tags: list[str] | None = None

    @classmethod
    def upgrade(cls, from_vsn: int, state: dict[str, Any]) -> dict[str, Any]:
        if from_vsn == 1:
            return {"full_name": state.get("name", ""), "tags": None}
        if from_vsn == 2 and not os.environ.get("TEST_PROFILE_BROKEN"):
            return {**state, "tags": []}
        raise ValueError(f"no way from vsn {from_vsn}")

    @handler
    def set_name(self, name: str) -> None:
        if PROFILE_VSN == 1:
            self.name = name
        else:
            self.full_name = name

    @handler
    def show(self) -> dict[str, Any]:
        return {"name": self.name, "full_name": self.full_name, "tags": self.tags}


class Sender(Entity, name="sender"):
    sent: int = 0

    @handler
    def forward(self, target_id: str, amount: int = 1) -> int:
        self.sent += 1
        self.send("counter", target_id, {"op": "increment", "args": [amount]})
        return self.sent

    @handler
    def relay(self, target_id: str, seq: int) -> int:
        """Sends ``seq`` to a recorder: the order it arrives in is the order of the sends."""
        self.sent += 1
        self.send("recorder", target_id, {"op": "record", "args": [seq]})
        return self.sent

    @handler
    def forward_then_fail(self, target_id: str) -> None:
        self.send("counter", target_id, {"op": "increment"})
        raise RuntimeError("changed my mind")
