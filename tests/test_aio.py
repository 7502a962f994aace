"""entities.aio and ``await ref.op.aio()``: many calls in flight on one loop, real workers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest

from entities import BadMessage, ReplyTimeout, aio, read
from tests.client_entities import Wallet
from tests.delivery import REPLY_TIMEOUT_S
from tests.fixture_entities import Counter


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Runs ``main`` on a fresh event loop, closing the loop's Redis clients after it."""

    async def wrapped() -> Any:
        try:
            return await main()
        finally:
            await aio.aclose()

    return asyncio.run(wrapped())


def test_thousands_of_calls_are_in_flight_from_one_loop_without_a_thread_each(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, when 2,000 awaited increments to 100 counters run at once on one
    event loop, then every reply arrives, each counter counts 20, and the process starts
    no thread per call."""
    workers.start(1)
    calls, counters = 2000, 100

    async def main() -> tuple[list[Any], int, int]:
        await aio.send("counter", "warm", {"op": "get"}, timeout=REPLY_TIMEOUT_S)
        before = threading.active_count()
        peak = before
        done = asyncio.Event()

        async def watch_threads() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, threading.active_count())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_threads())
        replies = await asyncio.gather(
            *(
                aio.send("counter", f"c{i % counters}", {"op": "increment"}, timeout=120)
                for i in range(calls)
            )
        )
        done.set()
        await watcher
        return replies, before, peak

    replies, before, peak = run(main)
    assert len(replies) == calls
    assert sorted(replies) == sorted(
        n for n in range(1, calls // counters + 1) for _ in range(counters)
    )
    assert peak <= before + 1, f"threads went from {before} to {peak}"
    assert read("counter", "c7").state["count"] == calls // counters


def test_an_awaited_reference_call_is_typed_and_agrees_with_async_result(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, when a reference call is awaited, then its reply is decoded by the
    handler's annotation; a send with a task id and AsyncResult(task id) see one reply; an
    entity's error is raised as itself."""
    from workers import app

    workers.start(1)
    task_id = str(uuid.uuid4())

    async def main() -> tuple[Any, Any]:
        typed = await Wallet.ref("aw").deposit.aio("2.50")
        plain = await aio.send("counter", "aw", {"op": "increment", "args": [3]}, task_id=task_id)
        with pytest.raises(BadMessage):
            await aio.send("counter", "aw", {"op": "increment", "args": [1, 2, 3]})
        return typed, plain

    typed, plain = run(main)
    assert typed == Decimal("2.50") and isinstance(typed, Decimal)
    assert plain == 3
    assert app.AsyncResult(task_id).get(timeout=REPLY_TIMEOUT_S) == 3


def test_an_awaited_call_times_out_with_reply_timeout_and_leaves_no_subscription() -> None:
    """Given no worker, when an awaited call's timeout passes, then ReplyTimeout names the
    call, and the loop's subscription no longer waits for it."""
    from entities.replies import _loops

    async def main() -> int:
        with pytest.raises(ReplyTimeout, match="counter 'idle' to 'increment'"):
            await Counter.ref("idle", timeout=0.3).increment.aio(1)
        await asyncio.sleep(0)
        return sum(len(r._futures) for r in _loops[asyncio.get_running_loop()].values())

    assert run(main) == 0


def test_cancelling_an_awaited_call_does_not_unsend_its_message(workers) -> None:  # type: ignore[no-untyped-def]
    """Given no worker, when an awaited increment is cancelled, then the message stays sent:
    a worker started afterwards applies it."""

    async def main() -> None:
        call = asyncio.create_task(aio.send("counter", "cancelled", {"op": "increment"}))
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run(main)
    workers.start(1)
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        snapshot = read("counter", "cancelled")
        if snapshot is not None:
            break
        time.sleep(0.1)
    assert snapshot is not None and snapshot.state["count"] == 1


def test_the_async_twins_of_the_module_functions(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, then aio's read, list_entities, alarms and delete do what the sync
    helpers do."""
    workers.start(1)

    async def main() -> None:
        await Counter.ref("twin").increment.aio(2)
        snapshot = await aio.read("counter", "twin")
        assert snapshot is not None and snapshot.state["count"] == 2
        assert "twin" in await aio.list_entities(Counter)
        await aio.schedule_alarm("counter", "twin", "later", 3600)
        await aio.schedule_alarm("counter", "twin", "much-later", 7200)
        assert [n for n, _ in await aio.list_alarms("counter", "twin")] == ["later", "much-later"]
        await aio.cancel_alarm("counter", "twin", "later")
        assert [n for n, _ in await aio.list_alarms("counter", "twin")] == ["much-later"]
        await aio.cancel_all_alarms("counter", "twin")
        assert await aio.list_alarms("counter", "twin") == []
        await aio.delete("counter", "twin", timeout=REPLY_TIMEOUT_S)
        assert await aio.read("counter", "twin") is None

    run(main)


def test_a_reply_stored_before_the_subscription_is_found_sync_and_async(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a reply stored (and published) before anyone subscribed, when a sync waiter and
    the loop's subscription wait for it, then both find it by the GET on confirmation."""
    from entities.replies import async_replies, waiter_for
    from entities.transport import client_app

    app = client_app()
    task_id = str(uuid.uuid4())
    meta = {"status": "SUCCESS", "result": 41, "traceback": None, "children": []}
    meta |= {"date_done": None, "task_id": task_id}
    redis_client.set(f"celery-task-meta-{task_id}", json.dumps(meta), ex=60)

    waiter = waiter_for(app.backend)
    waiter.watch(task_id)
    assert json.loads(waiter.wait(task_id, 5.0))["result"] == 41

    async def main() -> Any:
        replies = async_replies(app.conf.result_backend, "celery-task-meta-")
        return json.loads(await asyncio.wait_for(await replies.watch(task_id), 5.0))

    assert run(main)["result"] == 41


def test_a_burst_of_first_calls_on_a_new_loop_shares_one_subscription(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a new event loop, when its very first 300 calls start at once, then all are
    answered (the first subscription connects once, not once per call)."""
    workers.start(1)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(aio.send("counter", f"burst{i}", {"op": "increment"}) for i in range(300))
        )

    assert run(main) == [1] * 300


def test_a_dropped_loop_subscription_reconnects_and_still_gets_the_reply(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an awaited call whose loop subscription drops before the reply exists, when a
    worker replies, then the subscription reconnects and the call gets its reply."""
    from entities.replies import _loops

    async def main() -> Any:
        call = asyncio.create_task(aio.send("counter", "loop-drop", {"op": "increment"}))
        await asyncio.sleep(0.3)
        (replies,) = _loops[asyncio.get_running_loop()].values()
        await replies._pubsub.connection.disconnect()
        await asyncio.to_thread(workers.start, 1)
        return await call

    assert run(main) == 1
