"""Unit tests of a partition's entity memory: hibernation, eviction, the resident bound."""

from __future__ import annotations

import threading

import pytest

from entities import Entity, handler
from workers.memory import EntityMemory, Live

pytestmark = pytest.mark.no_services


class Idle(Entity, name="test_memory_idle", hibernate_after=10, shutdown_after=100):
    n: int = 0

    @handler
    def get(self) -> int:
        return self.n


def live(n: int = 0) -> Live:
    obj = Idle.from_state("x", {"n": n})
    return Live(Idle, obj, 1, 1, obj.encode_state())


def test_idle_entities_hibernate_then_leave_and_a_hibernated_one_wakes_with_its_state() -> None:
    """Given entities idle past hibernate_after, when swept, then they keep only their snapshot;
    past shutdown_after they leave; a woken one has its state back."""
    memory = EntityMemory(lambda: 1000)
    memory.put(("t", "a"), live(7))
    memory.put(("t", "b"), live(8))
    now = memory.get(("t", "a")).last_used  # type: ignore[union-attr]
    assert memory.sweep(now + 11) == ([], False)
    assert memory.counts() == (0, 2)
    woken = memory.get(("t", "a"))
    assert woken is not None and woken.wake("a").n == 7  # type: ignore[attr-defined]
    evicted, blocked = memory.sweep(now + 101)
    assert sorted(evicted) == [("t", "a"), ("t", "b")] and not blocked
    assert len(memory) == 0


def test_the_resident_bound_evicts_least_recently_used_first_but_never_a_dirty_entity() -> None:
    """Given a bound of 2 and 4 entities, one of them dirty and oldest, when swept, then the
    oldest clean ones leave, the dirty one stays and the sweep asks for a flush."""
    memory = EntityMemory(lambda: 2)
    for name in "abcd":
        memory.put(("t", name), live())
    memory.mark_dirty(("t", "a"), memory.get(("t", "a")), 0.0)  # type: ignore[arg-type]
    for name in "bcd":
        memory.get(("t", name))  # a is now the least recently used
    evicted, blocked = memory.sweep()
    assert evicted == [("t", "b"), ("t", "c")]
    assert blocked
    assert ("t", "a") in memory and ("t", "d") in memory


def test_counting_from_another_thread_while_the_runner_changes_memory_never_fails() -> None:
    """Given a thread putting and popping entities, when another counts them all the while,
    then counting never raises (the stats thread does this in a worker)."""
    memory = EntityMemory(lambda: 10**9)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            memory.put(("t", str(i % 2000)), live())
            memory.pop(("t", str((i * 7) % 2000)))
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(2000):
            resident, hibernated = memory.counts()
            assert resident >= 0 and hibernated == 0
    finally:
        stop.set()
        worker.join()
