"""Processed records and the replies they carry, on real Postgres and Redis.

- A redelivered message whose effect was committed gets the reply recorded with
  that commit, even when applying it again would raise or change nothing.
- A record outlives its message's acknowledgement by the retention: it is never
  purged while its message is unacknowledged (an ``on_stop`` entity holding the
  partition's acknowledgements), so a redelivery after a crash is not applied twice.
- An owner that lost its lease stores no reply it computed from memory; a reply
  recorded with a commit it still stores.

Runners are driven step by step in this process; a crash is simulated by
dropping the runner and its processor and leaving Redis and Postgres as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any

import pytest

from entities.routing import inflight_key, lease_key, partition_for, queue_name
from entities.settings import Settings, get_settings
from entities.store import SQLStore
from entities.store.sql import make_engine
from entities.transport import celery_message
from workers.broker import PartitionQueues
from workers.processor import Processor
from workers.replies import ReplyWriter
from workers.runner import PartitionRunner

PARTITION = 3


def ids_in_partition(entity_type: str, count: int) -> list[str]:
    """``count`` entity ids of ``entity_type`` that live in PARTITION."""
    partitions = get_settings().partitions
    found = (
        f"r{i}"
        for i in itertools.count()
        if partition_for(entity_type, f"r{i}", partitions) == PARTITION
    )
    return list(itertools.islice(found, count))


def replies(result: Any) -> list[Any]:
    return [o.value if o.ok else type(o.error).__name__ for o in result.outcomes]


def msg(entity_type: str, entity_id: str, op: str, *args: Any, task_id: str | None = None) -> bytes:
    return celery_message(entity_type, entity_id, {"op": op, "args": list(args)}, task_id=task_id)


def runner(store, redis_client, settings: Settings, owner: str) -> PartitionRunner:  # type: ignore[no-untyped-def]
    """A runner of PARTITION that owns its lease and a new epoch, as after a claim."""
    from workers import app

    queues = PartitionQueues(redis_client)
    redis_client.set(lease_key(PARTITION), owner, px=60_000)
    epoch = store.claim_partition(PARTITION, owner)
    return PartitionRunner(
        PARTITION,
        owner,
        epoch,
        queues,
        Processor(PARTITION, store, settings),
        ReplyWriter(app.backend),
        lambda outbox: None,
        200,
        lambda r, reason: None,
    )


def stored_reply(redis_client, task_id: str) -> Any:  # type: ignore[no-untyped-def]
    """The reply meta stored for ``task_id`` (None if none is)."""
    from workers import app

    raw = redis_client.get(app.backend.get_key_for_task(task_id))
    return None if raw is None else json.loads(raw)


# -- a redelivery gets its recorded reply ------------------------------------------------


@pytest.mark.parametrize(
    "op, args, companion",
    [
        ("withdraw", [5], None),  # raises now; the batch commits nothing
        ("withdraw", [5], "counter"),  # raises now; the batch commits another message
        ("withdraw", [5], "alarmed"),  # the same, through the general commit
        ("withdraw_all", [], None),  # changes nothing now
        ("withdraw_all", [], "counter"),
    ],
)
def test_a_redelivered_message_gets_the_reply_recorded_with_its_commit(  # type: ignore[no-untyped-def]
    store, op: str, args: list[Any], companion: str | None
) -> None:
    """Given a withdrawal of the whole balance committed and its reply lost (the worker
    died before storing it), when a new owner gets the message again, with or without
    another message that commits, then the caller gets the recorded reply, not the
    error or the nothing that applying it again on the empty wallet would give."""
    [wid] = ids_in_partition("wallet", 1)
    epoch = store.claim_partition(PARTITION, "first")
    first = Processor(PARTITION, store, get_settings())
    assert replies(first.process([msg("wallet", wid, "deposit", 5)], epoch)) == [5]
    withdrawal = msg("wallet", wid, op, *args, task_id="withdrawal")
    expected = 0 if op == "withdraw" else 5
    assert replies(first.process([withdrawal], epoch)) == [expected]

    epoch = store.claim_partition(PARTITION, "second")
    batch = [withdrawal]
    if companion == "counter":
        batch.append(msg("counter", ids_in_partition("counter", 1)[0], "increment"))
    elif companion == "alarmed":
        batch.append(msg("alarmed", ids_in_partition("alarmed", 1)[0], "schedule", "a", 60))
    result = Processor(PARTITION, store, get_settings()).process(batch, epoch)
    assert replies(result)[0] == expected
    assert result.outcomes[0].committed
    assert store.load("wallet", wid).state == {"balance": 0}


def test_a_redelivered_withdraw_with_its_reply_lost_gets_the_recorded_success(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a withdrawal committed by a runner that dies before storing its reply,
    when the next owner's runner takes the message from the in-flight list, then the
    reply it stores is the recorded success."""
    [wid] = ids_in_partition("wallet", 1)
    queue = queue_name(PARTITION)
    redis_client.lpush(queue, msg("wallet", wid, "deposit", 5, task_id="deposit"))
    redis_client.lpush(queue, msg("wallet", wid, "withdraw", 5, task_id="withdraw"))
    dying = runner(store, redis_client, get_settings(), "dying")
    dying._step()  # applies and commits both; their replies are not stored yet
    assert store.load("wallet", wid).state == {"balance": 0}
    assert stored_reply(redis_client, "withdraw") is None

    taker = runner(store, redis_client, get_settings(), "taker")
    taker._step()  # the in-flight messages again
    taker._step()  # their replies and acknowledgement
    assert stored_reply(redis_client, "withdraw")["result"] == 0
    assert stored_reply(redis_client, "withdraw")["status"] == "SUCCESS"
    assert store.load("wallet", wid).state == {"balance": 0}


# -- a lost lease stores no reply computed from memory ------------------------------------


def test_an_owner_that_lost_its_lease_stores_no_reply_it_computed(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a runner that applied a read alone (nothing committed), when its lease is
    taken before it settles, then the read's reply (computed from its memory) is not
    stored and nothing is acknowledged; given a read and an increment applied in one
    batch, both replies are recorded with its commit and stored despite the loss."""
    [cid] = ids_in_partition("counter", 1)
    queue = queue_name(PARTITION)
    redis_client.lpush(queue, msg("counter", cid, "get", task_id="read"))
    stale = runner(store, redis_client, get_settings(), "stale")
    stale._step()
    redis_client.set(lease_key(PARTITION), "new-owner", px=60_000)
    assert stale._step() is False  # the lease is lost
    assert stored_reply(redis_client, "read") is None
    assert PartitionQueues(redis_client).depth(PARTITION) == (0, 1)

    redis_client.delete(lease_key(PARTITION), inflight_key(PARTITION))
    redis_client.lpush(queue, msg("counter", cid, "get", task_id="read-2"))
    redis_client.lpush(queue, msg("counter", cid, "increment", task_id="write"))
    stale = runner(store, redis_client, get_settings(), "stale-2")
    stale._step()
    redis_client.set(lease_key(PARTITION), "new-owner", px=60_000)
    assert stale._step() is False
    assert stored_reply(redis_client, "read-2")["result"] == 0
    assert stored_reply(redis_client, "write")["result"] == 1
    assert PartitionQueues(redis_client).depth(PARTITION) == (0, 2)


# -- records outlive their messages' acknowledgement ----------------------------------------


def short_retention() -> Settings:
    return dataclasses.replace(get_settings(), dedup_retention_s=0.2)


def test_a_record_held_unacknowledged_is_not_purged_and_a_redelivery_applies_nothing(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a strict increment committed behind an on_stop entity's unflushed change
    (which holds the partition's acknowledgement), when the retention passes and the
    records are purged, then the increment's record stays; after a crash its
    redelivery to the next owner is recognised and not applied again."""
    [oid] = ids_in_partition("on_stop_counter", 1)
    [cid] = ids_in_partition("counter", 1)
    queue = queue_name(PARTITION)
    redis_client.lpush(queue, msg("on_stop_counter", oid, "increment", task_id="relaxed"))
    redis_client.lpush(queue, msg("counter", cid, "increment", task_id="strict"))
    holder = runner(store, redis_client, short_retention(), "holder")
    holder._step()  # the increment commits; the on_stop change waits in memory
    holder._step()  # replies stored; nothing acknowledged
    assert holder.pending == 2
    assert stored_reply(redis_client, "strict")["result"] == 1
    time.sleep(0.3)
    store.purge_processed(0.2)
    assert sorted(store.processed(["strict"])) == ["strict"]

    # kill -9: the holder is gone; its messages are still in flight.
    taker = runner(store, redis_client, short_retention(), "taker")
    taker._step()
    assert store.load("counter", cid).state == {"count": 1}


def test_a_record_is_purged_once_its_acknowledgement_is_the_retention_old(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a strict increment committed and acknowledged, then its runner notes a
    watermark, and a purge the retention later removes the record."""
    [cid] = ids_in_partition("counter", 1)
    redis_client.lpush(queue_name(PARTITION), msg("counter", cid, "increment", task_id="inc"))
    owner = runner(store, redis_client, short_retention(), "owner")
    owner._step()  # applied and committed
    assert store.purge_processed(0) == 0  # not acknowledged yet
    owner._step()  # acknowledged; the watermark is noted
    assert owner.pending == 0
    assert store.purge_processed(0.2) == 0  # acknowledged less than the retention ago
    time.sleep(0.3)
    assert store.purge_processed(0.2) == 1
    assert store.processed(["inc"]) == {}


def test_watermarks_add_no_statement_per_batch(redis_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Given a runner applying many strict batches in a row, then each batch costs one
    Postgres statement (its commit), and watermarks at most one per interval."""
    import psycopg

    # As a worker makes it: no ping before each use of a pooled connection.
    store = SQLStore(make_engine(os.environ["ENTITIES_DATABASE_URL"], pre_ping=False))
    [cid] = ids_in_partition("counter", 1)
    owner = runner(store, redis_client, get_settings(), "owner")
    redis_client.lpush(queue_name(PARTITION), msg("counter", cid, "increment"))
    owner._step()  # loads the counter
    notes = 0
    note_acked = store.note_acked

    def counted_note(*a: Any) -> None:
        nonlocal notes
        notes += 1
        note_acked(*a)

    monkeypatch.setattr(store, "note_acked", counted_note)
    statements = 0
    execute = psycopg.Cursor.execute

    def counted_execute(self: Any, *a: Any, **k: Any) -> Any:
        nonlocal statements
        statements += 1
        return execute(self, *a, **k)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
    started = time.monotonic()
    for _ in range(50):
        redis_client.lpush(queue_name(PARTITION), msg("counter", cid, "increment"))
        owner._step()
    elapsed = time.monotonic() - started
    monkeypatch.undo()
    assert store.load("counter", cid).state == {"count": 51}
    assert 1 <= notes <= 1 + elapsed / owner._mark_every_s
    assert statements == 50 + notes
    store.close()


def test_a_committed_message_held_for_a_paused_entity_keeps_its_record(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a strict increment committed by an owner that died before acknowledging it,
    when the next owner holds it for a paused entity (acknowledging it from the in-flight
    list) and the retention passes, then the purge keeps its record, and once resumed the
    message is recognised and not applied again."""
    from entities import control

    [cid] = ids_in_partition("counter", 1)
    redis_client.lpush(queue_name(PARTITION), msg("counter", cid, "increment", task_id="inc"))
    runner(store, redis_client, short_retention(), "dying")._step()  # committed, then killed
    control.pause_entity("counter", cid)

    taker = runner(store, redis_client, short_retention(), "taker")
    taker._step()  # holds it
    taker._step()  # acknowledges it from the in-flight list
    assert taker.pending == 0
    assert PartitionQueues(redis_client).depth(PARTITION) == (0, 0)
    time.sleep(0.3)
    taker._step()
    store.purge_processed(0.2)
    assert sorted(store.processed(["inc"])) == ["inc"]

    control.resume_entity("counter", cid, wait_s=None)
    time.sleep(0.3)  # the owner reads the control state at most every 0.25 s
    for _ in range(4):
        taker._step()
    assert PartitionQueues(redis_client).depth(PARTITION) == (0, 0)
    assert store.load("counter", cid).state == {"count": 1}


def test_a_new_owner_notes_no_watermark_before_applying_what_it_took_over(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a strict increment committed by an owner that died before acknowledging it,
    when the next owner fetches it (nothing of its own unacknowledged yet) and dies in
    turn, then no watermark covers the increment: its record survives the retention and
    a third owner does not apply it again."""
    [cid] = ids_in_partition("counter", 1)
    redis_client.lpush(queue_name(PARTITION), msg("counter", cid, "increment", task_id="inc"))
    runner(store, redis_client, short_retention(), "first")._step()  # committed, then killed
    runner(store, redis_client, short_retention(), "second")._step()  # fetched, then killed
    time.sleep(0.3)
    store.purge_processed(0.2)
    assert sorted(store.processed(["inc"])) == ["inc"]
    third = runner(store, redis_client, short_retention(), "third")
    third._step()
    third._step()
    assert store.load("counter", cid).state == {"count": 1}
    assert PartitionQueues(redis_client).depth(PARTITION) == (0, 0)
