"""Entity lifecycle: memory that tracks the working set, durability levels, upgrades.

Real Redis, Postgres and worker processes throughout.
"""

from __future__ import annotations

import signal
import time

from entities import read
from tests.lifecycle import eventually, memory_counts


def send(entity_type: str, entity_id: str, op: str, *args, **options):  # type: ignore[no-untyped-def]
    from workers import send_to_entity

    return send_to_entity.delay(entity_type, entity_id, {"op": op, "args": list(args)}, **options)


def call(entity_type: str, entity_id: str, op: str, *args, **options):  # type: ignore[no-untyped-def]
    return send(entity_type, entity_id, op, *args, **options).get(timeout=30)


def test_idle_entity_hibernates_then_leaves_memory_and_comes_back(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given an entity with short idle timers, when it idles, then it hibernates, then
    leaves memory, and its next message sees the committed state after a new activation."""
    workers.start(1)
    assert call("idle_counter", "a", "increment") == [1, 1]
    eventually(lambda: memory_counts(redis_client) == (0, 1), timeout_s=5)
    assert call("idle_counter", "a", "increment") == [2, 1]  # woke without a new activation
    eventually(lambda: memory_counts(redis_client) == (0, 0), timeout_s=10)
    assert call("idle_counter", "a", "increment") == [3, 2]  # revived: after_load ran again
    assert read("idle_counter", "a").state["count"] == 3


def test_resident_bound_holds_with_ten_times_more_entities(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a bound of 20 entities per worker, when 200 entities get messages, then memory
    never holds more than the bound (after a sweep) and every entity keeps its state."""
    workers.start(1, ENTITIES_MAX_RESIDENT="20")
    for rnd in (1, 2):
        results = [send("counter", f"c{i}", "increment") for i in range(200)]
        assert [r.get(timeout=60) for r in results] == [rnd] * 200
        eventually(lambda: sum(memory_counts(redis_client)) <= 20, timeout_s=10)


def test_interval_three_quick_increments_make_one_write_within_the_interval(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an interval entity (1 s), when it gets three quick increments, then the replies
    come before the commit and one write, within the interval, holds all three."""
    workers.start(1)
    started = time.monotonic()
    results = [send("interval_counter", "i", "increment") for _ in range(3)]
    assert [r.get(timeout=30) for r in results] == [1, 2, 3]
    snapshot = eventually(lambda: read("interval_counter", "i"), timeout_s=10, interval_s=0.02)
    assert time.monotonic() - started < 1.0 + 1.5
    assert snapshot.state == {"count": 3}
    assert snapshot.version == 1


def test_graceful_stop_flushes_pending_state(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an interval entity whose flush is an hour away, when the worker gets SIGTERM,
    then the pending state is committed before it exits."""
    (worker,) = workers.start(1)
    assert [call("slow_flush_counter", "s", "increment") for _ in range(4)] == [1, 2, 3, 4]
    assert read("slow_flush_counter", "s") is None
    worker.kill(signal.SIGTERM)
    assert read("slow_flush_counter", "s").state == {"count": 4}


def test_kill_before_flush_loses_no_increment(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an interval entity with unflushed increments, when the worker is killed -9 and
    another starts, then the messages are applied again on the committed state: none lost."""
    (worker,) = workers.start(1)
    assert [call("slow_flush_counter", "k", "increment") for _ in range(5)] == [1, 2, 3, 4, 5]
    worker.kill(signal.SIGKILL)
    assert read("slow_flush_counter", "k") is None
    workers.start(1)
    # A strict call commits everything pending before its reply.
    assert call("slow_flush_counter", "k", "increment", durability="strict") == 6
    assert read("slow_flush_counter", "k").state == {"count": 6}


def test_on_stop_writes_nothing_until_a_graceful_stop(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an on_stop entity, when it changes, then nothing is written until the worker
    stops gracefully, and then all of it is."""
    (worker,) = workers.start(1)
    assert [call("on_stop_counter", "o", "increment") for _ in range(3)] == [1, 2, 3]
    time.sleep(1.5)
    assert read("on_stop_counter", "o") is None
    worker.kill(signal.SIGTERM)
    snapshot = read("on_stop_counter", "o")
    assert snapshot.state == {"count": 3} and snapshot.version == 1


def test_strict_call_escalates_and_commits_all_pending_first(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an interval entity with pending changes, when a call is sent with
    durability="strict", then its reply comes after everything pending is committed."""
    workers.start(1)
    assert [call("slow_flush_counter", "e", "increment") for _ in range(3)] == [1, 2, 3]
    assert read("slow_flush_counter", "e") is None
    assert call("slow_flush_counter", "e", "get", durability="strict") == 3
    assert read("slow_flush_counter", "e").state == {"count": 3}


def test_read_only_calls_never_write(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a committed entity, when it gets only read-only calls, then its version stays."""
    workers.start(1)
    call("counter", "r", "increment")
    for _ in range(5):
        assert call("counter", "r", "get") == 1
    assert read("counter", "r").version == 1


def test_upgrade_loads_old_snapshot_and_writes_new_vsn_with_next_change(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a vsn 1 snapshot, when a vsn 2 worker loads it, then the state is upgraded, the
    stored vsn stays 1 until the next change, and that change writes vsn 2."""
    (old,) = workers.start(1)
    call("profile", "p", "set_name", "Ada")
    old.kill(signal.SIGTERM)
    assert read("profile", "p").vsn == 1
    workers.start(1, TEST_PROFILE_VSN="2")
    assert call("profile", "p", "show") == {"name": "", "full_name": "Ada", "tags": None}
    assert read("profile", "p").vsn == 1  # a read-only call writes nothing
    call("profile", "p", "set_name", "Ada Lovelace")
    snapshot = read("profile", "p")
    assert snapshot.vsn == 2
    assert snapshot.state["full_name"] == "Ada Lovelace"


def test_failing_upgrade_gives_a_clear_error_and_the_worker_keeps_serving(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a snapshot whose upgrade fails, when messages reach it, then each gets an
    UpgradeError naming the entity and both vsns, and other entities are served."""
    from entities import UpgradeError

    (old,) = workers.start(1)
    call("profile", "broken", "set_name", "x")
    old.kill(signal.SIGTERM)
    workers.start(1, TEST_PROFILE_VSN="3", TEST_PROFILE_BROKEN="1")
    for _ in range(2):
        try:
            call("profile", "broken", "show")
        except UpgradeError as exc:
            text = str(exc)
            assert "profile 'broken'" in text
            assert "stored vsn 1" in text and "class vsn 3" in text
        else:
            raise AssertionError("expected UpgradeError")
    assert call("counter", "fine", "increment") == 1
