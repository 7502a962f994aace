"""The sync reply subscription (entities.replies.ReplyWaiter) against real Redis and a worker."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError

from entities.replies import waiter_for
from tests.delivery import REPLY_TIMEOUT_S
from tests.fixture_entities import Counter


def test_a_reply_subscription_dropped_while_waiting_still_gets_the_reply(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a sent call whose thread's reply connection drops before the reply exists,
    when a worker replies and .get() runs, then the subscription reconnects, and the GET on
    its confirmation finds the reply published while it was down."""
    from entities.transport import client_app

    pending = Counter.ref("dropped").increment.delay(1)
    waiter = waiter_for(client_app().backend)
    waiter._pubsub.connection.disconnect()
    workers.start(1)
    assert pending.get(timeout=REPLY_TIMEOUT_S) == 1
    assert Counter.ref("dropped").increment(1) == 2  # the thread's waiter goes on


@pytest.mark.no_services
def test_a_reply_subscription_that_cannot_reconnect_is_a_broker_error_not_a_driver_one() -> None:
    """Given a result whose reply connection points at a port nobody listens on, when it
    waits, then the error is kombu's OperationalError naming the backend (no redis-py
    exception reaches the caller) and the thread's waiter is replaced."""
    import redis

    from entities.replies import ReplyWaiter
    from entities.results import EntityResult
    from entities.transport import client_app

    app = client_app()
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    waiter = ReplyWaiter(dead, "celery-task-meta-")
    result: EntityResult[int] = EntityResult("t-1", app=app, backend=app.backend)
    result._waiter = waiter
    with pytest.raises(OperationalError, match="reply subscription"):
        result.get(timeout=1)
    assert waiter.broken


def test_a_thread_unsubscribes_finished_replies_in_batches(workers) -> None:  # type: ignore[no-untyped-def]
    """Given one thread making 150 calls in a row, then each gets its reply, and finished
    keys are unsubscribed in batches: fewer than a batch stay subscribed; the same task id
    sent again (applied once) still gets its reply."""
    from entities.replies import UNSUBSCRIBE_BATCH
    from entities.transport import client_app
    from workers import send_to_entity

    workers.start(1)
    waiter = waiter_for(client_app().backend)
    watched_before = set(waiter._watched)
    assert [Counter.ref("batched").increment(1) for _ in range(150)] == list(range(1, 151))
    assert waiter_for(client_app().backend) is waiter
    assert len(waiter._stale) < UNSUBSCRIBE_BATCH
    assert waiter._watched <= watched_before  # none of this test's 150 calls is still watched
    msg = {"op": "increment"}
    first = send_to_entity.apply_async(("counter", "batched", msg), task_id="same-id")
    assert first.get(timeout=REPLY_TIMEOUT_S) == 151
    again = send_to_entity.apply_async(("counter", "batched", msg), task_id="same-id")
    assert again.get(timeout=REPLY_TIMEOUT_S) == 151


def test_a_call_over_another_way_is_not_watched_after(workers) -> None:  # type: ignore[no-untyped-def]
    """Given calls whose replies were read another way (``ready()``) or never waited for, when
    their results are gone and the thread calls again, then none of their reply keys is still
    watched (a long-running client's subscriptions hold only the calls in flight)."""
    import gc
    import time

    from entities.transport import client_app

    workers.start(1)
    waiter = waiter_for(client_app().backend)
    polled = Counter.ref("polled").increment.delay(1)
    unread = Counter.ref("polled").increment.delay(1)
    keys = {waiter._prefix + polled.id, waiter._prefix + unread.id}
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while not polled.ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert polled.get(timeout=REPLY_TIMEOUT_S) in (1, 2)
    del polled, unread
    gc.collect()

    assert Counter.ref("polled").increment(1) == 3
    assert waiter_for(client_app().backend) is waiter
    assert not keys & waiter._watched
