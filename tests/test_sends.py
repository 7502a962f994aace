"""Entity-to-entity sends that fail are visible: at send time in the sender, or as a refusal
at the receiver that is logged, counted, dead-lettered and told to the sender.

Real Redis, Postgres and worker processes, but for the redelivery test, which drives the
worker's Processor on the real store as a redelivery after a kill -9 would.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from click.testing import CliRunner

from entities import BadMessage, UnknownEntityType, UnknownHandler, read
from entities.cli import main
from entities.routing import partition_for
from entities.settings import get_settings
from entities.transport import celery_message
from tests.delivery import call
from tests.lifecycle import eventually, worker_stats


def state(entity_type: str, entity_id: str) -> dict[str, Any] | None:
    snapshot = read(entity_type, entity_id)
    return None if snapshot is None else snapshot.state


@pytest.mark.parametrize(
    ("target", "msg", "error", "says"),
    [
        ("no-such-type", {"op": "reserve"}, UnknownEntityType, "no-such-type"),
        ("sends-inventory", {"op": "reserv"}, UnknownHandler, "reserv"),
        ("sends-inventory", {"op": "_helper"}, UnknownHandler, "_helper"),
        ("sends-inventory", {"op": "reserve", "args": [1, 2, 3]}, BadMessage, "too many"),
        ("sends-inventory", {"op": "restock", "kwargs": {"by": 1}}, BadMessage, "amount"),
    ],
    ids=["unknown type", "unknown handler", "private op", "too many args", "unknown kwarg"],
)
def test_a_send_that_cannot_be_applied_raises_in_the_sender_and_rolls_it_back(  # type: ignore[no-untyped-def]
    workers, target: str, msg: dict[str, Any], error: type[Exception], says: str
) -> None:
    """Given a sender whose handler changes its state and then sends a message whose type
    or handler does not exist, or whose arguments do not fit, then the handler raises that
    error to its caller, the sender's state is unchanged and nothing is sent."""
    workers.start(1)
    with pytest.raises(error, match=says):
        call("sends-checkout", "c", "send_any", target, msg)
    assert state("sends-checkout", "c") is None
    assert call("sends-checkout", "c", "get") == "new"


def test_a_refusal_is_logged_counted_dead_lettered_and_told_to_the_sender(  # type: ignore[no-untyped-def]
    workers, store, redis_client
) -> None:
    """Given an inventory with 1 in stock, when a checkout reserves 5 by message, then the
    checkout's commit stands, the inventory refuses, and: the checkout's hook learns it
    (receiver, op, error class and message) exactly once; one dead letter names both
    entities; the worker logs both and counts it in its stats; replaying the dead letter
    once the stock is there applies the reservation."""
    (worker,) = workers.start(1)
    assert call("sends-inventory", "sku", "restock", 1) == 1
    assert call("sends-checkout", "c1", "checkout", "sku", 5) == "pending"
    checkout = eventually(
        lambda: (s := state("sends-checkout", "c1")) and s["status"] == "failed" and s
    )
    assert checkout["refusals"] == [
        "sends-inventory:sku:reserve:tests.sends_entities.OutOfStock:5 wanted, 1 left"
    ]
    [letter] = store.dead_letters()
    assert "sends-checkout 'c1'" in letter.reason and "sends-inventory 'sku'" in letter.reason
    assert "OutOfStock: 5 wanted, 1 left" in letter.reason
    assert eventually(lambda: "sends-checkout 'c1' sent 'reserve'" in worker.output())
    assert eventually(lambda: [s.get("sends_refused") for s in worker_stats(redis_client)] == [1])
    stats = CliRunner().invoke(main, ["stats", "--json"])
    assert json.loads(stats.output)["totals"]["sends_refused"] == 1
    assert call("sends-inventory", "sku", "restock", 10) == 11
    replayed = CliRunner().invoke(main, ["dead-letters", "replay", str(letter.id)])
    assert replayed.exit_code == 0, replayed.output
    eventually(lambda: state("sends-inventory", "sku") == {"stock": 6, "reserved": {"c1": 5}})
    assert store.dead_letters() == []
    assert state("sends-checkout", "c1")["refusals"] == checkout["refusals"]


def test_a_sender_without_the_hook_still_gets_its_refusal_recorded(workers, store) -> None:  # type: ignore[no-untyped-def]
    """Given a sender that defines no handle_send_failed, when its message is refused, then
    the refusal is dead-lettered naming both, and the sender's own commit stands."""
    workers.start(1)
    assert call("sends-blind", "b", "checkout", "empty", 2) == 1
    [letter] = eventually(store.dead_letters)
    assert "sends-blind 'b'" in letter.reason and "sends-inventory 'empty'" in letter.reason
    assert state("sends-blind", "b") == {"sent": 1}


@pytest.mark.parametrize(
    ("receiver", "msg", "error"),
    [
        ("sends-inventory", {"op": "reserve", "args": ["c1", 5]}, "OutOfStock: 5 wanted, 0 left"),
        ("fragile", {"op": "set_then_fail", "args": [7]}, "Boom: refusing 7"),
    ],
    ids=["relaxed receiver", "strict receiver"],
)
def test_a_redelivered_refusal_is_recorded_and_told_once(  # type: ignore[no-untyped-def]
    store, receiver: str, msg: dict[str, Any], error: str
) -> None:
    """Given a refused message whose batch committed, when it is delivered again (the worker
    was killed before its acknowledgement) and again in a later batch, then it is refused
    from its record: still one dead letter and one notice to the sender."""
    from workers.processor import Processor

    partition = partition_for(receiver, "r", get_settings().partitions)
    epoch = store.claim_partition(partition, "test")
    raw = celery_message(
        receiver,
        "r",
        msg,
        task_id="sent-by-c1",
        ignore_result=True,
        sender=("sends-checkout", "c1"),
    )
    first = Processor(partition, store, get_settings()).process([raw], epoch)
    again = Processor(partition, store, get_settings()).process([raw, raw], epoch)
    replies = [f"{type(o.error).__name__}: {o.error}" for o in first.outcomes + again.outcomes]
    assert replies == [error] * 3
    assert len(store.dead_letters()) == 1
    [notice] = store.pending_outbox(partition)
    assert (notice.entity_type, notice.entity_id) == ("sends-checkout", "c1")
    assert notice.msg["op"] == "__send_failed__"
    assert notice.msg["args"][0]["error"] == error.split(": ", 1)[1]
    # The stored row also knows when it was committed; the staged one does not yet.
    assert first.outbox == [dataclasses.replace(notice, created_at=None)] and again.outbox == []


@pytest.mark.no_services
def test_the_test_kit_tells_the_sender_of_a_refusal_too() -> None:
    """Given the in-process harness, when a checkout's reservation is refused, then its
    handle_send_failed runs after the call, as in production."""
    from workers.testing import Harness

    with Harness() as h:
        assert h.call("sends-checkout", "c", "checkout", "sku", 3) == "pending"
        assert h.read("sends-checkout", "c").state["status"] == "failed"
        assert h.read("sends-inventory", "sku") is None
        [letter] = h.store.dead_letters()
        assert "sends-checkout 'c'" in letter.reason
