"""Entity-to-entity messages: sent if, and only if, the sender's state commits."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter as Tally

from entities import read
from tests.lifecycle import eventually


def forward(sender: str, target: str, amount: int = 1):  # type: ignore[no-untyped-def]
    from workers import send_to_entity

    return send_to_entity.delay("sender", sender, {"op": "forward", "args": [target, amount]})


def count_of(entity_id: str) -> int:
    snapshot = read("counter", entity_id)
    return 0 if snapshot is None else snapshot.state["count"]


def test_a_sent_message_arrives_once(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a handler that sends to another entity, when it commits, then the target
    applies the message exactly once."""
    workers.start(1)
    assert forward("s", "t", 5).get(timeout=30) == 1
    eventually(lambda: count_of("t") == 5)
    time.sleep(1)
    assert count_of("t") == 5


def test_a_handler_that_raises_sends_nothing(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a handler that sends and then raises, then nothing is sent."""
    from workers import send_to_entity

    workers.start(1)
    result = send_to_entity.delay("sender", "s", {"op": "forward_then_fail", "args": ["t2"]})
    try:
        result.get(timeout=30)
    except RuntimeError as exc:
        assert "changed my mind" in str(exc)
    else:
        raise AssertionError("expected the handler's RuntimeError")
    assert forward("s", "marker").get(timeout=30) == 1  # later traffic flows past it
    eventually(lambda: count_of("marker") == 1)
    assert read("counter", "t2") is None


def test_sends_survive_kill_9_right_after_commit_exactly_once(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a stream of forwards, when the worker is killed -9 at random points and
    restarted, then every target ends with exactly the sum of what was forwarded to it."""
    rng = random.Random(7)
    expected: Tally[str] = Tally()
    results = []
    (worker,) = workers.start(1)
    for _ in range(3):
        for i in range(150):
            target = f"t{rng.randrange(10)}"
            expected[target] += 1
            results.append(forward(f"s{i % 7}", target))
        time.sleep(rng.uniform(0.05, 0.4))
        worker.kill(signal.SIGKILL)
        (worker,) = workers.start(1)
    for r in results:
        r.get(timeout=60)
    eventually(lambda: all(count_of(t) == n for t, n in expected.items()), timeout_s=30)
    time.sleep(1.5)  # nothing arrives twice later either
    assert {t: count_of(t) for t in expected} == dict(expected)
    senders = sum(read("sender", f"s{i}").state["sent"] for i in range(7))
    assert senders == sum(expected.values())
