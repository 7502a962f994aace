"""Given a cluster on the test servers, when an operator runs the `entities` commands, then
they show and change what their help says."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from click.testing import CliRunner, Result

from entities import Entity, handler, read, schedule_alarm
from entities.cli import main
from entities.routing import partition_for, queue_name
from entities.store import AlarmOutcome, CommitBatch, DeadLetter, Write
from entities.testing import celery_message


class CliTagged(Entity, name="test_cli_tagged", vsn=2):
    """vsn 1 stored ``tag``; vsn 2 stores ``tags``."""

    tags: list[str] | None = None

    @classmethod
    def upgrade(cls, from_vsn: int, state: dict[str, Any]) -> dict[str, Any]:
        return {"tags": [state["tag"]]}

    @handler
    def show(self) -> list[str] | None:
        return self.tags


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def send(entity_id: str, op: str = "increment") -> Any:
    from workers import send_to_entity

    return send_to_entity.delay("counter", entity_id, {"op": op})


def test_inspect_shows_state_alarms_and_the_messages_waiting(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a committed counter with an alarm, when it is paused and sent two messages,
    then inspect shows its state, version, alarm, and the two messages held for it."""
    workers.start(1)
    assert send("c1").get(timeout=30) == 1
    schedule_alarm("counter", "c1", "tick", 3600, {"n": 1})
    assert run("pause", "counter", "c1").exit_code == 0
    time.sleep(0.6)  # the owner reads the pause at its next step
    pending = [send("c1") for _ in range(2)]
    time.sleep(0.6)

    shown = run_json("inspect", "counter", "c1")
    assert shown["state"] == {"count": 1}
    assert (shown["version"], shown["vsn"], shown["exists"]) == (1, 1, True)
    assert [(a["name"], a["payload"]) for a in shown["alarms"]] == [("tick", {"n": 1})]
    waiting = shown["waiting"]
    assert waiting["held"] + waiting["queued"] + waiting["inflight"] == 2
    assert waiting["complete"] is True

    table = run("inspect", "counter", "c1")
    assert "version 1" in table.output and "tick" in table.output
    listed = run_json("pause", "--list")
    assert listed["entities"] == [{"entity_type": "counter", "entity_id": "c1", "held": 2}]

    assert run("resume", "counter", "c1").exit_code == 0
    assert [r.get(timeout=30) for r in pending] == [2, 3]


def test_inspect_counts_queued_messages_of_one_entity_only() -> None:
    """Given messages queued for two entities and no worker, then inspect counts only its own."""
    for _ in range(3):
        send("q1")
    send("q2")
    shown = run_json("inspect", "counter", "q1")
    assert shown["exists"] is False and shown["state"] is None
    assert (shown["waiting"]["queued"], shown["waiting"]["inflight"]) == (3, 0)
    bounded = run_json("inspect", "counter", "q1", "--scan", "1")
    assert bounded["waiting"]["complete"] is False or bounded["waiting"]["queued"] <= 1


def test_inspect_shows_the_state_exactly_as_stored(store) -> None:  # type: ignore[no-untyped-def]
    """Given a state whose keys are out of alphabetical order and whose floats are whole,
    then inspect --json prints it as stored: keys in their order, 1.0 as 1.0, -0.0 signed."""
    state = {"count": 2, "pear": 1.0, "apple": {"z": -0.0, "a": 10**30}}
    store.commit(CommitBatch(-1, None, writes=[Write("counter", "ordered", 0, 1, state)]))
    result = run("inspect", "counter", "ordered", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["state"]
    assert json.dumps(shown) == json.dumps(state)


def test_ls_pages_through_the_stored_ids(store) -> None:  # type: ignore[no-untyped-def]
    """Given five stored counters, then ls lists them in pages that follow each other."""
    for i in range(5):
        store.commit(CommitBatch(-1, None, writes=[Write("counter", f"id{i}", 0, 1, {"count": i})]))
    first = run_json("ls", "counter", "--limit", "2")
    assert first == {"entity_type": "counter", "ids": ["id0", "id1"], "next_after": "id1"}
    second = run_json("ls", "counter", "--limit", "2", "--after", "id1")
    assert second["ids"] == ["id2", "id3"]
    plain = run("ls", "counter", "--after", "id3")
    assert plain.output.split() == ["id4"]


def test_alarms_lists_an_entity_and_the_failed_ones_and_retries_one(store) -> None:  # type: ignore[no-untyped-def]
    """Given a scheduled alarm and a failed one, then alarms lists each, and --retry
    schedules the failed one again."""
    schedule_alarm("counter", "a1", "soon", 60)
    schedule_alarm("counter", "a2", "broken", 0)
    broken = store.get_alarm("counter", "a2", "broken")
    store.commit(
        CommitBatch(
            -1,
            None,
            alarm_outcomes=[
                AlarmOutcome("counter", "a2", "broken", broken.scheduling_id, 5, "RuntimeError")
            ],
        )
    )
    assert [a["name"] for a in run_json("alarms", "counter", "a1")] == ["soon"]
    failed = run_json("alarms", "--failed")
    assert [(a["entity_id"], a["status"], a["last_error"]) for a in failed] == [
        ("a2", "failed", "RuntimeError")
    ]
    assert "broken" in run("alarms", "--failed", "counter").output

    assert run_json("alarms", "counter", "a2", "--retry", "broken") == {"retried": True}
    assert store.get_alarm("counter", "a2", "broken").status == "scheduled"
    again = run("alarms", "counter", "a2", "--retry", "broken")
    assert again.exit_code == 1 and "no failed or skipped alarm 'broken'" in again.output
    assert run("alarms").exit_code == 2  # neither an entity nor --failed


def test_dead_letters_are_listed_replayed_onto_their_partition_and_dropped(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a dead-lettered entity message and a garbage one, then list shows both, replay
    puts the message back on its partition queue, garbage is refused, and drop removes it."""
    message = celery_message("counter", "d1", {"op": "increment"}).decode()
    store.commit(
        CommitBatch(
            -1,
            None,
            dead_letters=[
                DeadLetter("celery", "was too large", message),
                DeadLetter("celery", "not JSON", "garbage\ufffd"),
            ],
        )
    )
    letters = run_json("dead-letters", "list")
    garbage, good = letters[0]["id"], letters[1]["id"]
    assert [d["reason"] for d in letters] == ["not JSON", "was too large"]
    assert "was too large" in run("dead-letters", "list").output

    replayed = run_json("dead-letters", "replay", str(good))
    partition = partition_for("counter", "d1", int(os.environ["ENTITIES_PARTITIONS"]))
    assert replayed == {"replayed": good, "queue": queue_name(partition)}
    assert redis_client.lrange(queue_name(partition), 0, -1) == [message.encode()]

    refused = run("dead-letters", "replay", str(garbage))
    assert refused.exit_code == 1 and "cannot be replayed, only dropped" in refused.output
    assert run("dead-letters", "drop", str(garbage)).exit_code == 0
    assert run("dead-letters", "list").output.strip() == "no dead letters"
    missing = run("dead-letters", "drop", str(garbage))
    assert missing.exit_code == 1 and f"no dead letter {garbage}" in missing.output


def test_stats_shows_the_partitions_and_pause_holds_one(workers) -> None:  # type: ignore[no-untyped-def]
    """Given one worker that applied three messages, then stats shows all partitions owned
    by it, with epochs, no lag, and its applied count; when a partition is paused, its
    messages wait (and show as lag) until `entities resume --partition`."""
    workers.start(1)
    for _ in range(3):
        send("s1").get(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # workers publish their stats every second
        stats = run_json("stats")
        live = [w for w in stats["workers"] if w["alive"]]
        if (live and live[0]["stats"].get("applied", 0) >= 3) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    partitions = stats["partitions"]
    assert len(partitions) == int(os.environ["ENTITIES_PARTITIONS"])
    assert {p["owner"] for p in partitions} == {live[0]["worker"]}
    assert all(p["epoch"] >= 1 and p["lag"] == 0 for p in partitions)
    assert live[0]["stats"]["applied"] >= 3
    assert stats["totals"]["resident"] >= 1
    table = run("stats")
    assert "Partitions" in table.output and "1 live workers" in table.output

    partition = partition_for("counter", "pp", int(os.environ["ENTITIES_PARTITIONS"]))
    assert run("pause", "--partition", str(partition)).exit_code == 0
    time.sleep(0.6)  # the owner reads the pause at its next step
    results = [send("pp") for _ in range(2)]
    time.sleep(0.8)
    assert not any(r.ready() for r in results)
    assert run_json("pause", "--list")["partitions"] == [partition]
    assert run_json("stats")["partitions"][partition]["lag"] == 2
    assert run("resume", "--partition", str(partition)).exit_code == 0
    assert [r.get(timeout=30) for r in results] == [1, 2]
    assert run("pause").exit_code == 2  # neither a partition nor an entity


def test_upgrade_rewrites_old_snapshots_with_a_progress_bar(store) -> None:  # type: ignore[no-untyped-def]
    """Given three snapshots stored at vsn 1, when the type is upgraded, then each is stored
    at vsn 2 in the new shape, and a second run rewrites nothing."""
    name = CliTagged.__entity_name__
    for i in range(3):
        store.commit(CommitBatch(-1, None, writes=[Write(name, f"t{i}", 0, 1, {"tag": str(i)})]))
    done = run("upgrade", name, "--batch-size", "2")
    assert done.exit_code == 0, done.output
    assert "3 test_cli_tagged snapshots rewritten at vsn 2" in done.output
    snapshot = read(name, "t1")
    assert snapshot is not None and (snapshot.vsn, snapshot.state) == (2, {"tags": ["1"]})
    assert run_json("upgrade", name) == {"entity_type": name, "vsn": 2, "rewritten": 0}
    unknown = run("upgrade", "no-such-type")
    assert unknown.exit_code == 1 and "unknown entity type 'no-such-type'" in unknown.output
