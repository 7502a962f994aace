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
    assert [Counter.ref("batched").increment(1) for _ in range(150)] == list(range(1, 151))
    waiter = waiter_for(client_app().backend)
    assert len(waiter._stale) < UNSUBSCRIBE_BATCH
    assert len(waiter._watched) == 0
    msg = {"op": "increment"}
    first = send_to_entity.apply_async(("counter", "batched", msg), task_id="same-id")
    assert first.get(timeout=REPLY_TIMEOUT_S) == 151
    again = send_to_entity.apply_async(("counter", "batched", msg), task_id="same-id")
    assert again.get(timeout=REPLY_TIMEOUT_S) == 151
