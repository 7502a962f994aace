"""The delayed set: due messages move to the queue's tail once, in due order, atomically."""

from __future__ import annotations

from entities.delayed import DelayedSet, delayed_key, due_ms
from entities.routing import queue_name


def test_due_messages_move_once_in_due_order_and_the_rest_wait(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given messages due at 1, 2 and 5 s, one of them added twice, when the move runs at
    2 s, then the two due ones are appended to the queue in due order after what was
    queued, the third waits and its due time is returned; a second move moves nothing."""
    delayed = DelayedSet(redis_client)
    redis_client.lpush(queue_name(3), b"queued")
    delayed.add(3, [(b"late", 5000), (b"second", 2000), (b"first", 1000)])
    delayed.add(3, [(b"first", 1000)])  # a redelivered copy being delayed again
    assert delayed.move_due(3, 2000) == (2, 5000)
    assert redis_client.lrange(queue_name(3), 0, -1)[::-1] == [b"queued", b"first", b"second"]
    assert delayed.move_due(3, 2999) == (0, 5000)
    assert delayed.move_due(3, 5000) == (1, None)
    assert redis_client.zcard(delayed_key(3)) == 0


def test_a_due_time_is_never_rounded_early() -> None:
    """Given a due time with a fraction of a millisecond, then its score is the next ms."""
    assert due_ms(1.0001) == 1001
    assert due_ms(2.0) == 2000
