"""Entity classes of the cluster, chaos and fault tests."""

from __future__ import annotations

from entities import Entity, handler


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
