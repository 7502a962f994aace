"""Entity-to-entity messages: sent if, and only if, the sender's state commits."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import time
import uuid
from collections import Counter as Tally

import sqlalchemy as sa

from entities import read
from entities.messages import parse_envelope
from entities.routing import partition_for, queue_name
from entities.store import CommitBatch, OutboxMessage
from entities.store import schema as t
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


def applied_order(entity_id: str) -> list[int]:
    snapshot = read("recorder", entity_id)
    return [] if snapshot is None else [entry[0] for entry in snapshot.state["log"]]


def leave_outbox(store, partition: int, target: str, seqs: range) -> list[OutboxMessage]:  # type: ignore[no-untyped-def]
    """Commits unpublished outbox rows for ``partition``, as an owner killed before
    publishing them leaves them: each records its seq at recorder ``target``."""
    rows = [
        OutboxMessage(
            uuid.uuid4().hex, partition, "recorder", target, {"op": "record", "args": [i]}
        )
        for i in seqs
    ]
    store.commit(CommitBatch(partition, None, outbox=rows))
    return rows


def test_a_backlog_larger_than_a_page_is_published_whole_and_before_newer_sends(  # type: ignore[no-untyped-def]
    workers, store
) -> None:
    """Given 1,200 unpublished outbox rows left by a previous owner of a sender's partition,
    when a new owner takes the partition and the sender then sends once more, then the
    receiver applies all 1,201 messages, in commit order."""
    from workers import send_to_entity

    sender, target = "backlog-sender", "backlog-target"
    leave_outbox(store, partition_for("sender", sender, 16), target, range(1200))
    workers.start(1)
    relay = {"op": "relay", "args": [target, 1200]}
    assert send_to_entity.delay("sender", sender, relay).get(timeout=30) == 1
    eventually(lambda: len(applied_order(target)) >= 1201, timeout_s=40)
    assert applied_order(target) == list(range(1201))


def test_an_outbox_row_older_than_half_the_dedup_retention_is_dead_lettered_not_resent(  # type: ignore[no-untyped-def]
    workers, store, redis_client
) -> None:
    """Given two unpublished outbox rows of a partition, one committed two days ago (the
    dedup retention is one day, so a copy published then may be forgotten by now), when a
    new owner takes the partition, then the recent one is delivered, the old one is
    dead-lettered with a reason naming ENTITIES_DEDUP_RETENTION, and replaying it
    delivers it."""
    target = "aged-target"
    partition = partition_for("sender", "aged-sender", 16)
    old, _recent = leave_outbox(store, partition, target, range(2))
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(t.outbox)
            .where(t.outbox.c.message_id == old.message_id)
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
        )
    workers.start(1)
    eventually(lambda: applied_order(target) == [1])
    (letter,) = eventually(lambda: store.dead_letters())
    assert "ENTITIES_DEDUP_RETENTION" in letter.reason
    assert letter.queue == queue_name(partition_for("recorder", target, 16))
    env = parse_envelope(letter.raw.encode(), 1 << 20)
    assert (env.task_id, env.entity_id, env.args) == (old.message_id, target, [0])
    redis_client.lpush(letter.queue, letter.raw.encode())  # what `dead-letters replay` does
    eventually(lambda: applied_order(target) == [1, 0])
    assert json.loads(letter.raw)["headers"]["ignore_result"] is True


def test_after_a_failed_publish_later_commits_wait_behind_the_earlier_rows(store) -> None:  # type: ignore[no-untyped-def]
    """Given an owner whose publish of a commit's rows failed, when its next commit's rows
    are published, then the earlier rows go out first and nothing is left behind."""
    import threading

    from entities.settings import get_settings
    from workers.outbox import OutboxPublisher

    published: list[str] = []
    failures = [ConnectionError("broker down")]

    def publish(rows: list[OutboxMessage]) -> None:
        if failures:
            raise failures.pop()
        published.extend(m.message_id for m in rows)

    outbox = OutboxPublisher(7, store, get_settings(), publish, threading.Event())
    outbox.publish_backlog()
    first = leave_outbox(store, 7, "x", range(2))
    outbox.publish(first)
    later = leave_outbox(store, 7, "x", range(2, 3))
    outbox.publish(later)
    assert published == [m.message_id for m in first + later]
    assert store.pending_outbox(7) == []
