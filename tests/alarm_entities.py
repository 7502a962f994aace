"""Entity classes for the alarm tests (worker processes and the in-process harness)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from entities import Entity, field, handler


class Alarmed(Entity, name="alarmed"):
    """Records every alarm it handles: [name, payload, wall time]."""

    fired: list[Any] = field(default_factory=list)

    @handler
    def schedule(self, name: str, delay: float, payload: Any = None) -> None:
        self.schedule_alarm(name, delay, payload)

    @handler
    def cancel(self, name: str) -> None:
        self.cancel_alarm(name)

    @handler
    def schedule_then_fail(self, name: str, delay: float) -> None:
        self.schedule_alarm(name, delay)
        raise RuntimeError("changed my mind")

    @handler
    def count(self) -> int:
        return len(self.fired)

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.fired.append([name, payload, time.time()])


class Ticker(Entity, name="ticker"):
    """An alarm that reschedules itself every ``interval`` seconds, ``limit`` times."""

    ticks: int = 0
    interval: float = 0.2
    limit: int = 1_000_000

    @handler
    def start(self, interval: float, limit: int = 1_000_000) -> None:
        self.interval, self.limit = interval, limit
        self.schedule_alarm("tick", interval)

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.ticks += 1
        if self.ticks < self.limit:
            self.schedule_alarm("tick", self.interval)


class Relay(Entity, name="relay"):
    """Alarm a schedules alarm b; b is recorded."""

    seen: list[str] = field(default_factory=list)

    @handler
    def start(self) -> None:
        self.schedule_alarm("a", 0.05)

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.seen.append(name)
        if name == "a":
            self.schedule_alarm("b", 0.05)


class Riser(Entity, name="riser"):
    """Schedules a wake-up alarm from after_load, once."""

    armed: bool = False
    woke: int = 0

    def after_load(self) -> None:
        if not self.armed:
            self.armed = True
            self.schedule_alarm("wake", 0.1, {"from": "after_load"})

    @handler
    def hello(self) -> int:
        return self.woke

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.woke += 1


class Flaky(Entity, name="flaky"):
    """An alarm handler that raises until allowed; appends each attempt's time to a file."""

    allowed: bool = False
    fired: int = 0

    @handler
    def allow(self) -> None:
        self.allowed = True

    def handle_alarm(self, name: str, payload: Any) -> None:
        if payload and payload.get("log"):
            with open(payload["log"], "a") as f:
                f.write(f"{time.time()}\n")
        if not self.allowed:
            raise RuntimeError(f"not allowed to fire {name}")
        self.fired += 1


class Slow(Entity, name="slow_alarm"):
    """An alarm handler that marks its start in a file, then takes ``hold_s`` seconds."""

    fired: int = 0

    def handle_alarm(self, name: str, payload: Any) -> None:
        with Path(payload["marker"]).open("a") as f:
            f.write("started\n")
        time.sleep(payload["hold_s"])
        self.fired += 1


class Messenger(Entity, name="messenger"):
    """On its alarm, sends an increment to a counter (for the harness's outbox delivery)."""

    @handler
    def arm(self, target: str, delay: float) -> None:
        self.schedule_alarm("send", delay, {"target": target})

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.send("counter", payload["target"], {"op": "increment", "args": [1]})


class Lazy(Entity, name="lazy_counter", durability="interval", flush_interval=3600):
    """A relaxed counter: its changes commit on flush (or with a strict call)."""

    count: int = 0
    loads: int = 0

    def after_load(self) -> None:
        self.loads += 1

    @handler
    def increment(self) -> int:
        self.count += 1
        return self.count


class LazyAlarmed(Entity, name="lazy_alarmed", durability="on_stop", shutdown_after=None):
    """A relaxed entity with alarms: its changes wait in memory for a flush or a strict call."""

    fired: list[str] = field(default_factory=list)
    touched: int = 0

    @handler
    def schedule(self, name: str, delay: float) -> None:
        self.schedule_alarm(name, delay)

    @handler
    def cancel(self, name: str) -> None:
        self.cancel_alarm(name)

    @handler
    def touch(self) -> int:
        self.touched += 1
        return self.touched

    def handle_alarm(self, name: str, payload: Any) -> None:
        self.fired.append(name)
