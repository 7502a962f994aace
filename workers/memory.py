"""A partition's entity memory: live objects, hibernated snapshots, and idle eviction.

Entities are kept in least-recently-used order. An entity idle for its class's
``hibernate_after`` drops its live object and keeps only its encoded snapshot
(compact JSON bytes); idle for ``shutdown_after`` it leaves memory entirely.
A bound on resident entities evicts the least recently used first, whatever
the idle timers say. Entities with unflushed changes are never evicted: the
runner flushes first (see ``dirty``).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from entities import telemetry
from entities.model import Entity

Key = tuple[str, str]


class Live:
    """One entity in memory: its live object (or frozen snapshot) and committed version."""

    __slots__ = (
        "cls",
        "deleted",
        "dirty_since",
        "encoded",
        "frozen",
        "last_used",
        "obj",
        "version",
        "vsn",
    )

    def __init__(
        self,
        cls: type[Entity],
        obj: Entity | None,
        version: int,
        vsn: int,
        encoded: dict[str, Any] | None,
    ) -> None:
        self.cls = cls
        self.obj = obj
        self.version = version  # the committed version (0: never committed)
        self.vsn = vsn  # the vsn of the committed snapshot
        self.encoded = encoded  # the working state, encoded (None while hibernated)
        self.frozen: bytes | None = None  # the encoded state as JSON while hibernated
        self.dirty_since: float | None = None  # monotonic time of the first unflushed change
        self.deleted = False  # deleted in memory; the delete commits with the next write
        self.last_used = time.monotonic()

    @property
    def hibernated(self) -> bool:
        """True while only the encoded snapshot is kept."""
        return self.obj is None

    def hibernate(self) -> None:
        """Drops the live object, keeping the state as compact JSON bytes."""
        if self.obj is not None:
            self.frozen = json.dumps(self.encoded, separators=(",", ":")).encode()
            self.obj = None
            self.encoded = None

    def wake(self, entity_id: str) -> Entity:
        """The live object, rebuilt from the frozen snapshot if hibernated (no after_load)."""
        if self.obj is None:
            assert self.frozen is not None
            self.encoded = json.loads(self.frozen)
            self.frozen = None
            self.obj = self.cls.from_state(entity_id, self.encoded)
        return self.obj


class EntityMemory:
    """The entities of one partition held by this worker, least recently used first."""

    def __init__(self, max_resident: Callable[[], int]) -> None:
        self._items: OrderedDict[Key, Live] = OrderedDict()
        self._dirty: dict[Key, Live] = {}
        self._max_resident = max_resident

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: Key) -> Live | None:
        """The entity, marked as just used; None if not in memory."""
        live = self._items.get(key)
        if live is not None:
            live.last_used = time.monotonic()
            self._items.move_to_end(key)
        return live

    def put(self, key: Key, live: Live) -> None:
        """Keeps ``live`` as the most recently used entity."""
        live.last_used = time.monotonic()
        self._items[key] = live
        self._items.move_to_end(key)

    def pop(self, key: Key) -> Live | None:
        """Removes an entity from memory."""
        self._dirty.pop(key, None)
        return self._items.pop(key, None)

    def clear(self) -> None:
        """Forgets every entity."""
        self._items.clear()
        self._dirty.clear()

    def mark_dirty(self, key: Key, live: Live, now: float) -> None:
        """Records that ``live`` has changes not committed yet (since ``now`` if it had none)."""
        if live.dirty_since is None:
            live.dirty_since = now
        self._dirty[key] = live

    def mark_clean(self, key: Key, live: Live) -> None:
        """Records that every change of ``live`` is committed."""
        live.dirty_since = None
        self._dirty.pop(key, None)

    def dirty(self) -> list[tuple[Key, Live]]:
        """Entities with changes not yet committed."""
        return list(self._dirty.items())

    @property
    def has_dirty(self) -> bool:
        """True while some entity has uncommitted changes."""
        return bool(self._dirty)

    def counts(self) -> tuple[int, int]:
        """(resident, hibernated) entity counts; safe to call from another thread.

        ``list()`` copies the values in one step under the GIL, so the runner
        thread cannot change the dict while it is being counted.
        """
        entities = list(self._items.values())
        hibernated = sum(1 for v in entities if v.obj is None)
        return len(entities) - hibernated, hibernated

    def sweep(self, now: float | None = None) -> tuple[list[Key], bool]:
        """Hibernates and evicts idle entities and enforces the resident bound.

        Returns the evicted keys and whether a dirty entity blocked eviction
        (the caller should flush, then sweep again).
        """
        now = time.monotonic() if now is None else now
        evicted: list[Key] = []
        blocked = False
        limit = self._max_resident()
        soonest = _soonest_timer_s()
        for key, live in self._items.items():
            idle = now - live.last_used
            opts = live.cls.__entity_options__
            over = len(self._items) - len(evicted) > limit
            shutdown = opts.shutdown_after_s is not None and idle >= opts.shutdown_after_s
            if not over and idle < opts.hibernate_after_s and not shutdown:
                if idle < soonest:
                    break  # everything after this was used more recently still
                continue
            if live.dirty_since is not None:
                if over or shutdown:
                    blocked = True
                continue
            if over or shutdown:
                evicted.append(key)
            elif live.obj is not None:
                live.hibernate()
                telemetry.emit("entity.hibernate", entity_type=key[0], entity_id=key[1])
        for key in evicted:
            self._items.pop(key, None)
        return evicted, blocked


def _soonest_timer_s() -> float:
    """The shortest idle timer of any registered class: no entity idles out sooner."""
    from entities import registry

    timers: list[float] = []
    for name in registry.names():
        opts = registry.lookup(name).__entity_options__
        timers.append(opts.hibernate_after_s)
        if opts.shutdown_after_s is not None:
            timers.append(opts.shutdown_after_s)
    return min(timers, default=0.0)
