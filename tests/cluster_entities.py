"""Entity classes of the cluster, chaos and fault tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from entities import Entity, field, handler


class Tally(Entity, name="tally"):
    """A strict counter: its n-th applied message replies n."""

    count: int = 0

    @handler
    def add(self) -> int:
        self.count += 1
        return self.count


class RelaxedTally(Entity, name="relaxed_tally", durability="interval", flush_interval=0.5):
    """An interval counter: replies before its commit, so a handoff must flush it."""

    count: int = 0

    @handler
    def add(self) -> int:
        self.count += 1
        return self.count


class Stall(Entity, name="stall"):
    """Records who applied each message and when; can announce a handler start in a file."""

    log: list[Any] = field(default_factory=list)

    @handler
    def record(self, seq: int, hold_s: float = 0.0, started_file: str | None = None) -> int:
        start = time.time()
        if started_file:
            Path(started_file).write_text(str(os.getpid()))
        if hold_s:
            time.sleep(hold_s)
        self.log.append([seq, os.getpid(), start, time.time()])
        return len(self.log)
