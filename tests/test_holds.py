"""Holding a paused entity's messages: linear in the messages, once each, only by the
lease holder, and never undone by a resume that a later pause superseded."""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

from entities import control
from entities.routing import (
    entity_key,
    held_list_key,
    held_set_key,
    inflight_key,
    partition_for,
    queue_name,
)
from workers.broker import PartitionQueues
from workers.holds import Holds

TYPE, ID = "counter", "held-one"
PARTITION = partition_for(TYPE, ID, int(os.environ.get("ENTITIES_PARTITIONS", "16")))
MEMBER = entity_key(TYPE, ID)
END = "entities-test-holds-end"


def _owner(redis_client: Any) -> tuple[Holds, str]:
    token = f"test-holds-{os.getpid()}"
    assert PartitionQueues(redis_client).acquire(PARTITION, token, 60_000)
    return Holds(redis_client, PARTITION), token


def _held(redis_client: Any) -> list[bytes]:
    return list(redis_client.lrange(held_list_key(PARTITION, MEMBER), 0, -1))


class ScriptCommands:
    """Counts the commands scripts run in this test's Redis database (MONITOR)."""

    def __init__(self, redis_client: Any) -> None:
        self.db = redis_client.connection_pool.connection_kwargs.get("db", 0)
        self.client = redis_client
        self.counts: Counter[str] = Counter()
        self._monitor = redis_client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while True:
            cmd = self._monitor.next_command()
            if cmd["command"] == f"ECHO {END}":
                return
            if cmd["client_type"] == "lua" and int(cmd["db"]) == self.db:
                self.counts[cmd["command"].split(" ", 1)[0].upper()] += 1

    def stop(self) -> Counter[str]:
        self.client.echo(END)
        self._thread.join(60)
        self._monitor.__exit__(None, None, None)
        return self.counts


def test_holding_many_messages_does_linear_work_and_holds_none_twice(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a paused entity, when 20,000 of its messages are held in batches of 200 and a
    batch is delivered again, then each is held once, in order, and the scripts ran a
    bounded number of O(1) commands per message (no search of the held list)."""
    holds, token = _owner(redis_client)
    raws = [f"message {i:05d}".encode() for i in range(20_000)]
    commands = ScriptCommands(redis_client)
    try:
        for start in range(0, len(raws), 200):
            assert holds.hold({(TYPE, ID): raws[start : start + 200]}, token)
        assert holds.hold({(TYPE, ID): raws[-200:]}, token)  # a redelivered batch
    finally:
        counts = commands.stop()
    assert _held(redis_client) == raws
    assert sum(counts.values()) >= len(raws)  # the monitor saw the scripts' work
    assert counts["LPOS"] == counts["LRANGE"] == 0
    assert sum(counts.values()) <= 3 * len(raws) + 1000, counts


def test_a_stale_owner_cannot_hold(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a partition whose lease another worker holds, when a former owner holds a
    message, then it is refused and nothing is held."""
    holds, _token = _owner(redis_client)
    assert not holds.hold({(TYPE, ID): [b"released already"]}, "a-former-owners-token")
    assert _held(redis_client) == []


def test_a_resume_never_undoes_a_later_pause(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a paused entity with held messages, when it is resumed and paused again before
    the owner acts on the resume it already read, then the owner leaves it paused with its
    messages held."""
    holds, token = _owner(redis_client)
    control.pause_entity(TYPE, ID)
    assert holds.hold({(TYPE, ID): [b"m1", b"m2"]}, token)
    control.resume_entity(TYPE, ID, wait_s=None)
    assert holds.refresh(force=True).resume == (MEMBER,)
    control.pause_entity(TYPE, ID)  # the owner still has the resume in its cached control
    assert holds.resume(token)
    assert redis_client.sismember(held_set_key(PARTITION), MEMBER)
    assert _held(redis_client) == [b"m1", b"m2"]
    assert redis_client.llen(queue_name(PARTITION)) == 0
    assert control.paused().entities == {(TYPE, ID): 2}


def test_a_held_message_still_in_flight_goes_back_once(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a held message its owner died before acknowledging (so it is also in flight),
    when the entity is resumed, then the queue gets it once, held messages first."""
    holds, token = _owner(redis_client)
    control.pause_entity(TYPE, ID)
    assert holds.hold({(TYPE, ID): [b"m1", b"m2"]}, token)
    redis_client.lpush(inflight_key(PARTITION), b"m2", b"other")  # m2 then a newer one
    control.resume_entity(TYPE, ID, wait_s=None)
    holds.refresh(force=True)
    assert holds.resume(token)
    oldest_first = list(reversed(redis_client.lrange(queue_name(PARTITION), 0, -1)))
    assert oldest_first == [b"m1", b"m2", b"other"]
    assert control.paused().entities == {}
    assert holds.hold({(TYPE, ID): [b"m1"]}, token)  # a later pause starts afresh
