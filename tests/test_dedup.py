"""Deduplication: a task id is applied at most once, and every send of it gets the first reply.

Two sources of duplicates: a client that sends again with the same task id
(an idempotency key), and the broker delivering a message again after it was
applied (simulated by pushing the same raw message onto the partition queue).
"""

from __future__ import annotations

import json

from entities import read
from tests.delivery import REPLY_TIMEOUT_S, call, queue_of, result, send


def test_a_resend_with_the_same_task_id_is_applied_once(workers) -> None:  # type: ignore[no-untyped-def]
    """Given an increment applied under task id K, when it is sent again with K, then the
    counter is not incremented again and both results give the first reply."""
    workers.start(1)
    first = send("counter", "d", "increment", 10, task_id="dedup-key-1")
    assert first.get(timeout=REPLY_TIMEOUT_S) == 10
    second = send("counter", "d", "increment", 10, task_id="dedup-key-1")
    assert call("counter", "d", "increment", 1) == 11  # queued behind the resend
    assert second.get(timeout=REPLY_TIMEOUT_S) == 10
    assert result("dedup-key-1").get(timeout=REPLY_TIMEOUT_S) == 10
    assert read("counter", "d").state == {"count": 11}


def test_duplicates_in_one_batch_are_applied_once(workers) -> None:  # type: ignore[no-untyped-def]
    """Given the same task id queued three times before any worker runs, when one batch
    takes them all, then the increment is applied once and every send gets its reply."""
    sends = [send("counter", "b", "increment", 5, task_id="dedup-key-2") for _ in range(3)]
    marker = send("counter", "b", "increment", 1)
    workers.start(1)
    assert marker.get(timeout=REPLY_TIMEOUT_S) == 6
    assert [s.get(timeout=REPLY_TIMEOUT_S) for s in sends] == [5, 5, 5]
    assert read("counter", "b").state == {"count": 6}


def test_a_redelivered_message_is_not_applied_again(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a message applied and acknowledged, when the broker delivers the very same raw
    message again, then it is not applied again and its result stays the first reply."""
    queue = queue_of("counter", "r")
    original = send("counter", "r", "increment", 7)
    [raw] = redis_client.lrange(queue, 0, -1)  # exactly what the producer wrote
    workers.start(1)
    assert original.get(timeout=REPLY_TIMEOUT_S) == 7

    redis_client.lpush(queue, raw)  # a redelivery of the same message
    redis_client.lpush(queue, raw)  # and another one
    assert call("counter", "r", "increment", 1) == 8
    assert read("counter", "r").state == {"count": 8}
    assert result(original.id).get(timeout=REPLY_TIMEOUT_S) == 7


def test_a_redelivery_after_a_worker_restart_is_not_applied_again(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a message applied by a worker that then stops, when it is delivered again to a
    new worker (which has nothing in memory), then the stored record prevents a second apply."""
    queue = queue_of("counter", "s")
    original = send("counter", "s", "increment", 3)
    [raw] = redis_client.lrange(queue, 0, -1)
    [first] = workers.start(1)
    assert original.get(timeout=REPLY_TIMEOUT_S) == 3
    first.stop()

    redis_client.lpush(queue, raw)
    workers.start(1)
    assert call("counter", "s", "increment", 1) == 4
    assert read("counter", "s").state == {"count": 4}


def test_a_resend_of_a_read_only_call_gets_the_first_reply(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a read-only call answered under task id K, when the state changes and K is sent
    again, then the resend is not applied again: its result is still the first reply."""
    workers.start(1)
    assert send("counter", "ro", "get", task_id="dedup-key-3").get(timeout=REPLY_TIMEOUT_S) == 0
    assert call("counter", "ro", "increment", 1) == 1
    resend = send("counter", "ro", "get", task_id="dedup-key-3")
    assert call("counter", "ro", "increment", 1) == 2  # queued behind the resend
    assert resend.get(timeout=REPLY_TIMEOUT_S) == 0
    assert result("dedup-key-3").get(timeout=REPLY_TIMEOUT_S) == 0


def test_a_redelivered_withdraw_whose_reply_was_lost_gets_the_recorded_success(  # type: ignore[no-untyped-def]
    workers, redis_client
) -> None:
    """Given a withdrawal of the whole balance applied and committed, when its reply is
    lost (as when the worker dies before storing it) and the broker delivers the message
    again, then the caller gets the recorded success, not the refusal that applying it
    to the now empty wallet would give."""
    from workers import app

    queue = queue_of("wallet", "w")
    send("wallet", "w", "deposit", 5)
    withdrawal = send("wallet", "w", "withdraw", 5)
    [raw] = [r for r in redis_client.lrange(queue, 0, -1) if withdrawal.id.encode() in r]
    workers.start(1)
    assert withdrawal.get(timeout=REPLY_TIMEOUT_S) == 0
    key = app.backend.get_key_for_task(withdrawal.id)

    redis_client.delete(key)  # the reply is lost
    redis_client.lpush(queue, raw)  # and the message delivered again
    assert call("wallet", "w", "get") == 0  # queued behind the redelivery
    meta = json.loads(redis_client.get(key))
    assert (meta["status"], meta["result"]) == ("SUCCESS", 0)
    assert read("wallet", "w").state == {"balance": 0}
