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
