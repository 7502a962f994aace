"""The Store contract: one test class, run against SQLStore on SQLite and on Postgres.

Every guarantee in entities/store/base.py is exercised here against both
backends; a backend that passes this class can serve workers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from entities import ConfigurationError, Entity, FenceError, SchemaError, StoreError, clock, field
from entities.migrate import upgrade
from entities.store import (
    AlarmChange,
    CommitBatch,
    DeadLetter,
    OutboxMessage,
    Processed,
    SQLStore,
    Write,
)
from tests.databases import scratch_postgres, sqlite_url

PARTITIONS = 16
UTC = dt.UTC


class Gauge(Entity, name="store-gauge"):
    """An entity whose float field must survive the store as a float."""

    reading: float = 0.0
    samples: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated to head once per module, copied for every test."""
    path = tmp_path_factory.mktemp("store") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[SQLStore]:
    """A migrated store with the deployment's partitions recorded; empty of entities."""
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        shutil.copy(sqlite_template, path)
        store = SQLStore(sqlite_url(tmp_path, "store.db"))
    else:
        store = SQLStore(os.environ["ENTITIES_DATABASE_URL"])
    store.ensure_partitions(PARTITIONS)
    yield store
    store.close()


def put(store: SQLStore, etype: str, eid: str, expected: int, state: dict[str, Any] | None) -> None:
    """Commits one fenced write with no owner fence."""
    store.commit(CommitBatch(0, None, writes=[Write(etype, eid, expected, 1, state)]))


def processed(message_id: str, reply: Any = None, eid: str = "a") -> Processed:
    return Processed(message_id, "t", eid, 0, True, reply)


def at(seconds: float) -> dt.datetime:
    return dt.datetime(2030, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=seconds)


class TestStoreContract:
    """Given a Store (SQLite or Postgres), its documented guarantees hold."""

    # -- schema and partitions --------------------------------------------------

    def test_rewrite_snapshot_replaces_only_the_row_that_was_read(self, backend: SQLStore) -> None:
        """Given a snapshot read, then it is rewritten (next version) only while the stored
        row is exactly that one: not after a change, nor after a delete and re-create."""
        put(backend, "t", "a", 0, {"n": 1})
        read = backend.load("t", "a")
        assert backend.rewrite_snapshot(read, 2, {"n": 10})
        assert (backend.load("t", "a").version, backend.load("t", "a").vsn) == (2, 2)
        assert not backend.rewrite_snapshot(read, 2, {"n": 11})  # changed since
        put(backend, "t", "b", 0, {"n": 1})
        old = backend.load("t", "b")
        put(backend, "t", "b", 1, None)
        put(backend, "t", "b", 0, {"n": 2})  # version 1 again
        assert not backend.rewrite_snapshot(old, 2, {"n": 10})
        assert backend.load("t", "b").state == {"n": 2}
        put(backend, "t", "b", 1, None)
        assert not backend.rewrite_snapshot(old, 2, {"n": 10})  # gone
        assert backend.load("t", "b") is None

    def test_check_schema_passes_on_a_migrated_database(self, backend: SQLStore) -> None:
        """Given a migrated database, when the schema is checked, then nothing is raised."""
        backend.check_schema()

    def test_ensure_partitions_records_the_count_and_refuses_another(
        self, backend: SQLStore
    ) -> None:
        """Given a recorded count, then the same count is accepted and another is refused."""
        backend.ensure_partitions(PARTITIONS)
        assert sorted(backend.partition_owners()) == list(range(PARTITIONS))
        with pytest.raises(ConfigurationError) as err:
            backend.ensure_partitions(PARTITIONS + 1)
        assert f"ENTITIES_PARTITIONS={PARTITIONS}" in str(err.value)
        assert sorted(backend.partition_owners()) == list(range(PARTITIONS))

    def test_claim_partition_bumps_the_epoch_and_records_the_owner(self, backend: SQLStore) -> None:
        """Given a partition, when claimed twice, then each claim returns a higher epoch."""
        first = backend.claim_partition(3, "worker-a")
        second = backend.claim_partition(3, "worker-b")
        assert second == first + 1
        assert backend.partition_owners()[3] == (second, "worker-b")

    @pytest.mark.parametrize("letters", [[], [DeadLetter("q", "r", "raw")]], ids=["fast", "full"])
    def test_a_commit_with_a_stale_epoch_writes_nothing(
        self, backend: SQLStore, letters: list[DeadLetter]
    ) -> None:
        """Given an owner whose partition was claimed again, then its commit is fenced off
        (a batch of writes and records only takes Postgres's one-statement commit)."""
        old = backend.claim_partition(5, "old-owner")
        new = backend.claim_partition(5, "new-owner")
        put(backend, "t", "b", 0, {"n": 1})
        batch = CommitBatch(
            5,
            old,
            writes=[Write("t", "a", 0, 1, {"n": 1}), Write("t", "b", 1, 1, {"n": 2})],
            processed=[processed("m1")],
            dead_letters=letters,
        )
        with pytest.raises(FenceError) as err:
            backend.commit(batch)
        assert err.value.stale_epoch is True
        assert f"epoch {new}" in str(err.value)
        assert backend.load("t", "a") is None
        assert backend.load("t", "b").state == {"n": 1}
        assert backend.processed(["m1"]) == {}
        assert backend.dead_letters() == []
        backend.commit(CommitBatch(5, new, writes=[Write("t", "a", 0, 1, {"n": 1})]))
        assert backend.load("t", "a").state == {"n": 1}

    def test_check_schema_on_an_empty_sqlite_database_says_to_migrate(self, tmp_path: Path) -> None:
        """Given an SQLite file with no tables, then SchemaError says to run `entities migrate`."""
        store = SQLStore(sqlite_url(tmp_path, "empty.db"))
        try:
            with pytest.raises(SchemaError, match="entities migrate"):
                store.check_schema()
        finally:
            store.close()

    # -- snapshots and the version fence ------------------------------------------

    def test_loading_an_absent_entity_gives_none(self, backend: SQLStore) -> None:
        """Given no snapshot, then load is None and load_many omits it."""
        assert backend.load("t", "nobody") is None
        assert backend.load_many([("t", "nobody")]) == {}
        assert backend.load_many([]) == {}

    def test_insert_if_absent_creates_version_one_once(self, backend: SQLStore) -> None:
        """Given a new entity, when inserted twice from version 0, then the second is fenced."""
        put(backend, "t", "a", 0, {"n": 1})
        snap = backend.load("t", "a")
        assert (snap.version, snap.vsn, snap.state) == (1, 1, {"n": 1})
        assert snap.updated_at.tzinfo is not None
        with pytest.raises(FenceError):
            put(backend, "t", "a", 0, {"n": 99})
        assert backend.load("t", "a").state == {"n": 1}

    def test_an_update_applies_only_at_the_expected_version(self, backend: SQLStore) -> None:
        """Given version 2 stored, then an update from 2 wins and an update from 1 is fenced."""
        put(backend, "t", "a", 0, {"n": 1})
        put(backend, "t", "a", 1, {"n": 2})
        with pytest.raises(FenceError):
            put(backend, "t", "a", 1, {"n": 666})
        put(backend, "t", "a", 2, {"n": 3})
        snap = backend.load("t", "a")
        assert (snap.version, snap.state) == (3, {"n": 3})

    def test_a_fenced_batch_writes_nothing_at_all(self, backend: SQLStore) -> None:
        """Given a batch with one stale write among good ones, then none of it is committed."""
        put(backend, "t", "old", 0, {"n": 1})
        put(backend, "t", "old", 1, {"n": 2})
        batch = CommitBatch(
            0,
            None,
            writes=[
                Write("t", "new", 0, 1, {"n": 1}),
                Write("t", "old", 1, 1, {"n": 666}),  # stale: stored version is 2
            ],
            processed=[processed("m1", 1, "new")],
            alarms=[AlarmChange("t", "new", "al", at(1))],
            outbox=[OutboxMessage("o1", 0, "t", "x", {"op": "ping"})],
            dead_letters=[DeadLetter("q", "r", "raw")],
        )
        with pytest.raises(FenceError):
            backend.commit(batch)
        assert backend.load("t", "new") is None
        assert backend.load("t", "old").state == {"n": 2}
        assert backend.processed(["m1"]) == {}
        assert backend.list_alarms("t", "new") == []
        assert backend.pending_outbox(0) == []
        assert backend.dead_letters() == []

    def test_a_stale_write_among_writes_and_records_commits_nothing(
        self, backend: SQLStore
    ) -> None:
        """Given a batch of writes and records (Postgres: the one-statement commit) with one
        stale update, then none of it is committed and the error is a version fence."""
        put(backend, "t", "old", 0, {"n": 1})
        put(backend, "t", "old", 1, {"n": 2})
        put(backend, "t", "fresh", 0, {"n": 1})
        batch = CommitBatch(
            0,
            backend.claim_partition(0, "owner"),
            writes=[
                Write("t", "new", 0, 1, {"n": 1}),
                Write("t", "fresh", 1, 1, {"n": 2}),
                Write("t", "old", 1, 1, {"n": 666}),  # stale: stored version is 2
            ],
            processed=[processed("m1", 1, "new"), processed("m2", 2, "fresh")],
        )
        with pytest.raises(FenceError) as err:
            backend.commit(batch)
        assert not (err.value.stale_epoch or err.value.duplicate)
        assert backend.load("t", "new") is None
        assert backend.load("t", "fresh").state == {"n": 1}
        assert backend.load("t", "old").state == {"n": 2}
        assert backend.processed(["m1", "m2"]) == {}

    def test_a_recorded_message_id_fences_the_whole_batch(self, backend: SQLStore) -> None:
        """Given message m1 recorded, when a batch records m1 again, then nothing is written
        and the error says the batch held a duplicate."""
        backend.commit(CommitBatch(0, None, processed=[processed("m1", 1)]))
        with pytest.raises(FenceError) as err:
            backend.commit(
                CommitBatch(
                    0,
                    None,
                    writes=[Write("t", "b", 0, 1, {"n": 1})],
                    processed=[processed("m1", 2)],
                )
            )
        assert err.value.duplicate is True
        assert backend.load("t", "b") is None
        assert backend.processed(["m1"])["m1"].reply == 1

    def test_concurrent_writers_from_one_version_let_exactly_one_win(
        self, backend: SQLStore
    ) -> None:
        """Given eight writers updating from the same version at once, then exactly one commits."""
        put(backend, "t", "hot", 0, {"n": 0})
        results: list[str] = []
        barrier = threading.Barrier(8)

        def writer(i: int) -> None:
            barrier.wait()
            try:
                put(backend, "t", "hot", 1, {"n": i})
                results.append("won")
            except FenceError:
                results.append("fenced")

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert sorted(results) == ["fenced"] * 7 + ["won"]
        assert backend.load("t", "hot").version == 2

    def test_a_delete_is_fenced_and_removes_state_and_alarms(self, backend: SQLStore) -> None:
        """Given version 2 with alarms, then a delete at 1 is fenced; one at 2 removes all."""
        put(backend, "t", "a", 0, {"n": 1})
        put(backend, "t", "a", 1, {"n": 2})
        backend.set_alarm(AlarmChange("t", "a", "x", at(5)))
        with pytest.raises(FenceError):
            put(backend, "t", "a", 1, None)
        assert backend.load("t", "a").version == 2
        assert len(backend.list_alarms("t", "a")) == 1
        put(backend, "t", "a", 2, None)
        assert backend.load("t", "a") is None
        assert backend.list_alarms("t", "a") == []
        put(backend, "t", "a", 0, {"n": 1})  # starts again from version 1
        assert backend.load("t", "a").version == 1

    def test_deleting_a_never_stored_entity_removes_its_alarms(self, backend: SQLStore) -> None:
        """Given alarms but no snapshot, when deleted from version 0, then the alarms go."""
        backend.set_alarm(AlarmChange("t", "ghost", "x", at(5)))
        put(backend, "t", "ghost", 0, None)
        assert backend.list_alarms("t", "ghost") == []

    def test_state_json_round_trips(self, backend: SQLStore) -> None:
        """Given state with big ints, unicode, nesting and tags, then load gives it back."""
        state = {
            "big": 2**100,
            "neg": -(2**70),
            "f": 0.1,
            "tiny": 5e-324,
            "text": "ünïcødé ✓ 😀 \\ \" '",
            "nested": {"$map": {"$k": [1, [2, [3]]], "z": None}},
            "when": {"$datetime": "2026-01-01T00:00:00.000001+05:30"},
            "empty": [{}, []],
            "flags": [True, False],
        }
        put(backend, "t", "a", 0, state)
        assert backend.load("t", "a").state == state

    def test_a_float_field_comes_back_a_float(self, backend: SQLStore) -> None:
        """Given a float field holding 1e16 (Postgres prints it as an int), it loads as float."""
        gauge = Gauge.from_state("g", None)
        gauge.reading = 1e16
        gauge.samples = [1e20, 2.5]
        put(backend, "store-gauge", "g", 0, gauge.encode_state())
        back = Gauge.from_state("g", backend.load("store-gauge", "g").state)
        assert type(back.reading) is float and back.reading == 1e16
        assert [type(v) for v in back.samples] == [float, float]

    def test_ids_are_listed_in_order_and_paged_with_after(self, backend: SQLStore) -> None:
        """Given ids in mixed order and two types, then list_ids sorts, limits and pages."""
        ids = ["b", "a", "a10", "a2", "B", "_x", "é", "c-1", "c"]
        for eid in ids:
            put(backend, "t", eid, 0, {})
        put(backend, "other", "a0", 0, {})
        expected = sorted(ids)
        assert backend.list_ids("t") == expected
        assert backend.list_ids("t", limit=3) == expected[:3]
        assert backend.list_ids("t", limit=3, after=expected[2]) == expected[3:6]
        assert backend.list_ids("t", after=expected[-1]) == []
        assert backend.list_ids("t", after="a1") == [i for i in expected if i > "a1"]
        assert backend.list_ids("nobody") == []

    # -- processed messages ----------------------------------------------------------

    def test_processed_records_are_looked_up_by_id(self, backend: SQLStore) -> None:
        """Given recorded messages with replies, then processed() finds exactly those asked for."""
        backend.commit(
            CommitBatch(3, None, processed=[processed("m1", {"a": [1, 2]}), processed("m2", None)])
        )
        found = backend.processed(["m1", "m2", "m3"])
        assert sorted(found) == ["m1", "m2"]
        assert found["m1"] == Processed("m1", "t", "a", 0, True, {"a": [1, 2]})
        assert found["m2"].reply is None
        assert backend.processed([]) == {}

    @pytest.mark.parametrize("letters", [[], [DeadLetter("q", "r", "raw")]], ids=["fast", "full"])
    def test_a_commit_returns_the_records_of_its_lookups(
        self, backend: SQLStore, letters: list[DeadLetter]
    ) -> None:
        """Given m1 recorded, when a batch looks up m1 and m9 (messages it records nothing
        for), then the commit returns m1's record with its reply, and so does a batch
        that writes nothing."""
        epoch = backend.claim_partition(0, "owner")
        reply = {"paid": 5, "left": 0.0, "at": [1, -0.0]}  # read back exactly, in order
        backend.commit(CommitBatch(0, epoch, processed=[processed("m1", reply)]))
        found = backend.commit(
            CommitBatch(
                0,
                epoch,
                writes=[Write("t", "b", 0, 1, {"n": 1})],
                processed=[processed("m2", 2)],
                dead_letters=letters,
                lookups=["m1", "m9"],
            )
        )
        assert found == {"m1": Processed("m1", "t", "a", 0, True, reply)}
        assert json.dumps(found["m1"].reply) == json.dumps(reply)
        assert backend.load("t", "b").state == {"n": 1}
        assert sorted(backend.processed(["m1", "m2"])) == ["m1", "m2"]
        assert backend.commit(CommitBatch(0, epoch, lookups=["m2", "m9"])) == {
            "m2": Processed("m2", "t", "a", 0, True, 2)
        }
        assert backend.commit(CommitBatch(0, epoch)) == {}

    def test_a_partition_with_no_watermark_purges_nothing(self, backend: SQLStore) -> None:
        """Given records however old, when no acknowledgement watermark was noted, then a
        purge with no retention at all keeps every one."""
        backend.commit(CommitBatch(0, None, processed=[processed("m1")]))
        assert backend.purge_processed(0) == 0
        assert sorted(backend.processed(["m1"])) == ["m1"]

    def test_records_go_only_once_a_watermark_after_them_is_the_retention_old(
        self, backend: SQLStore
    ) -> None:
        """Given m1 committed, a watermark W1, then m2 and (later) a watermark W2, then a
        purge deletes the records committed before the latest watermark at least the
        retention old, in that watermark's partition only: nothing while W1 is young,
        m1 once W1 is old enough but W2 is not, m2 once W2 is."""
        epoch = backend.claim_partition(0, "owner")
        other = backend.claim_partition(1, "owner")
        backend.commit(CommitBatch(0, epoch, processed=[processed("m1")]))
        backend.commit(CommitBatch(1, other, processed=[Processed("o1", "t", "o", 1, True, 1)]))
        backend.note_acked(0, epoch)
        backend.commit(CommitBatch(0, epoch, processed=[processed("m2")]))
        assert backend.purge_processed(3600) == 0
        time.sleep(0.5)
        backend.note_acked(0, epoch)
        assert backend.purge_processed(0.3) == 1
        assert sorted(backend.processed(["m1", "m2", "o1"])) == ["m2", "o1"]
        assert backend.purge_processed(0) == 1
        assert sorted(backend.processed(["m1", "m2", "o1"])) == ["o1"]

    def test_a_watermark_is_fenced_by_the_epoch(self, backend: SQLStore) -> None:
        """Given an owner whose partition was claimed again, when it notes a watermark,
        then it is refused as a stale epoch and nothing becomes purgeable."""
        old = backend.claim_partition(0, "old-owner")
        backend.claim_partition(0, "new-owner")
        backend.commit(CommitBatch(0, None, processed=[processed("m1")]))
        with pytest.raises(FenceError) as err:
            backend.note_acked(0, old)
        assert err.value.stale_epoch is True
        assert backend.purge_processed(0) == 0

    @pytest.mark.parametrize("letters", [[], [DeadLetter("q", "r", "raw")]], ids=["fast", "full"])
    def test_records_and_watermarks_take_one_clock(
        self, backend: SQLStore, letters: list[DeadLetter]
    ) -> None:
        """Given the runtime's clock an hour ahead of the database's, when a record is
        committed and then a watermark noted, then the record is before the watermark
        (both on the store's clock) and a purge removes it."""
        epoch = backend.claim_partition(0, "owner")
        ahead = clock.VirtualClock(dt.datetime.now(UTC) + dt.timedelta(hours=1))
        previous = clock.install(ahead)
        try:
            backend.commit(CommitBatch(0, epoch, processed=[processed("m1")], dead_letters=letters))
            ahead.advance(0.001)
            backend.note_acked(0, epoch)
            ahead.advance(0.001)
            assert backend.purge_processed(0) == 1
        finally:
            clock.install(previous)
        assert backend.processed(["m1"]) == {}

    # -- alarms ------------------------------------------------------------------------

    def test_alarms_are_set_replaced_cancelled_and_listed_by_fire_time(
        self, backend: SQLStore
    ) -> None:
        """Given alarms scheduled out of order, then the list is by fire time, one per name."""
        backend.set_alarm(AlarmChange("t", "a", "late", at(30), {"n": 1}))
        backend.set_alarm(AlarmChange("t", "a", "early", at(10)))
        backend.set_alarm(AlarmChange("t", "b", "other", at(1)))
        assert [a.name for a in backend.list_alarms("t", "a")] == ["early", "late"]
        late = backend.list_alarms("t", "a")[1]
        assert (late.fire_at, late.payload) == (at(30), {"n": 1})

        backend.set_alarm(AlarmChange("t", "a", "late", at(5), {"n": 2}))  # replaces
        alarms = backend.list_alarms("t", "a")
        assert [(a.name, a.fire_at, a.payload) for a in alarms] == [
            ("late", at(5), {"n": 2}),
            ("early", at(10), None),
        ]
        assert alarms[0].scheduling_id != late.scheduling_id

        backend.set_alarm(AlarmChange("t", "a", "early", None))  # cancels
        assert [a.name for a in backend.list_alarms("t", "a")] == ["late"]
        backend.set_alarm(AlarmChange("t", "a", "never-set", None))  # cancelling nothing is fine
        assert backend.cancel_all_alarms("t", "a") == 1
        assert backend.list_alarms("t", "a") == []
        assert [a.name for a in backend.list_alarms("t", "b")] == ["other"]

    def test_alarm_times_keep_their_instant_whatever_the_offset(self, backend: SQLStore) -> None:
        """Given fire times at +05:00 and -03:00, then they load as the same instants, in order."""
        east = (at(100)).astimezone(dt.timezone(dt.timedelta(hours=5)))
        west = (at(50)).astimezone(dt.timezone(dt.timedelta(hours=-3)))
        backend.set_alarm(AlarmChange("t", "a", "east", east))
        backend.set_alarm(AlarmChange("t", "a", "west", west))
        alarms = backend.list_alarms("t", "a")
        assert [(a.name, a.fire_at) for a in alarms] == [("west", at(50)), ("east", at(100))]
        assert all(a.fire_at.utcoffset() == dt.timedelta(0) for a in alarms)

    def test_alarm_changes_commit_with_the_batch(self, backend: SQLStore) -> None:
        """Given a batch with alarm changes, then they apply with it (schedule, then cancel)."""
        backend.commit(CommitBatch(0, None, alarms=[AlarmChange("t", "a", "x", at(1))]))
        assert [a.name for a in backend.list_alarms("t", "a")] == ["x"]
        backend.commit(CommitBatch(0, None, alarms=[AlarmChange("t", "a", "x", None)]))
        assert backend.list_alarms("t", "a") == []

    # -- outbox and dead letters --------------------------------------------------------

    def test_outbox_is_pending_per_partition_in_order_until_forgotten(
        self, backend: SQLStore
    ) -> None:
        """Given outbox messages of two partitions, then each sees its own, in commit order."""
        backend.commit(
            CommitBatch(
                3,
                None,
                outbox=[
                    OutboxMessage("o1", 3, "t", "x", {"op": "a"}),
                    OutboxMessage("o2", 3, "t", "y", {"op": "b", "args": [1]}),
                    OutboxMessage("o9", 4, "t", "z", {"op": "c"}),
                ],
            )
        )
        backend.commit(CommitBatch(3, None, outbox=[OutboxMessage("o3", 3, "t", "x", {"op": "d"})]))
        assert [m.message_id for m in backend.pending_outbox(3)] == ["o1", "o2", "o3"]
        assert backend.pending_outbox(3)[1].msg == {"op": "b", "args": [1]}
        committed_at = backend.pending_outbox(3)[0].created_at
        assert committed_at is not None and committed_at.utcoffset() == dt.timedelta(0)
        assert [m.message_id for m in backend.pending_outbox(3, limit=2)] == ["o1", "o2"]
        assert [m.message_id for m in backend.pending_outbox(4)] == ["o9"]
        backend.forget_outbox(["o1", "o3"])
        backend.forget_outbox([])
        assert [m.message_id for m in backend.pending_outbox(3)] == ["o2"]

    def test_an_outbox_message_keeps_its_sender(self, backend: SQLStore) -> None:
        """Given outbox messages with and without a sender, then each comes back as written."""
        sent = OutboxMessage("o1", 3, "t", "x", {"op": "a"}, sender=("shop", "s-1"))
        anonymous = OutboxMessage("o2", 3, "t", "x", {"op": "b"})
        backend.commit(CommitBatch(3, None, outbox=[sent, anonymous]))
        read = [dataclasses.replace(m, created_at=None) for m in backend.pending_outbox(3)]
        assert read == [sent, anonymous]

    @pytest.mark.parametrize("skew_s", [0.0, -30.0], ids=["clock stands still", "clock behind"])
    def test_a_later_commits_outbox_comes_after_whatever_the_clock(
        self, backend: SQLStore, skew_s: float
    ) -> None:
        """Given a commit of three outbox messages, when the next commit's clock stands still or
        runs behind (another host), then its messages still come after the first three."""
        start = dt.datetime(2030, 1, 1, tzinfo=UTC)
        times = iter([start, start + dt.timedelta(seconds=skew_s)])
        previous = clock.install(lambda: current)
        try:
            current = next(times)
            backend.commit(
                CommitBatch(
                    2,
                    None,
                    outbox=[OutboxMessage(f"a{i}", 2, "t", "x", {"op": "a"}) for i in range(3)],
                )
            )
            current = next(times)
            backend.commit(
                CommitBatch(2, None, outbox=[OutboxMessage("b0", 2, "t", "x", {"op": "b"})])
            )
        finally:
            clock.install(previous)
        assert [m.message_id for m in backend.pending_outbox(2)] == ["a0", "a1", "a2", "b0"]

    def test_dead_letters_are_kept_newest_first_with_their_reason(self, backend: SQLStore) -> None:
        """Given dead letters (one with NUL bytes), then they are listed newest first."""
        backend.commit(CommitBatch(0, None, dead_letters=[DeadLetter("q0", "not json", "garbage")]))
        backend.commit(
            CommitBatch(1, None, dead_letters=[DeadLetter("q1", "bad\x00reason", "a\x00b\x00c")])
        )
        letters = backend.dead_letters()
        assert [(d.queue, d.raw) for d in letters] == [("q1", "a\ufffdb\ufffdc"), ("q0", "garbage")]
        assert letters[0].reason == "bad\ufffdreason"
        assert letters[1].reason == "not json"
        assert letters[0].id > letters[1].id
        assert all(d.created_at is not None and d.created_at.tzinfo is not None for d in letters)
        assert len(backend.dead_letters(limit=1)) == 1

    def test_a_dead_letter_is_read_by_id_and_dropped_once(self, backend: SQLStore) -> None:
        """Given two dead letters, when one is dropped, then only the other is left, and a
        second drop of the same id reports that nothing was there."""
        backend.commit(
            CommitBatch(
                0, None, dead_letters=[DeadLetter("q0", "r0", "x"), DeadLetter("q1", "r1", "y")]
            )
        )
        first, second = sorted(backend.dead_letters(), key=lambda d: d.id)
        got = backend.get_dead_letter(first.id)
        assert got is not None and (got.queue, got.reason, got.raw) == ("q0", "r0", "x")
        assert backend.delete_dead_letter(first.id) is True
        assert backend.delete_dead_letter(first.id) is False
        assert backend.get_dead_letter(first.id) is None
        assert [d.id for d in backend.dead_letters()] == [second.id]

    # -- the error boundary ---------------------------------------------------------------

    def test_data_a_driver_refuses_is_a_store_error(self, backend: SQLStore) -> None:
        """Given values no backend can hold, then StoreError, never a driver exception."""
        with pytest.raises(StoreError):
            put(backend, "t", "a", 0, {"when": dt.datetime(2026, 1, 1)})  # not JSON
        with pytest.raises(StoreError):
            backend.load("t", "lone \ud800")
        assert backend.load("t", "a") is None


def test_check_schema_on_an_empty_postgres_database_says_to_migrate() -> None:
    """Given an empty Postgres database, then SchemaError says to run `entities migrate`."""
    with scratch_postgres() as url:
        store = SQLStore(url)
        try:
            with pytest.raises(SchemaError) as err:
                store.check_schema()
        finally:
            store.close()
    assert "entities migrate" in str(err.value)
    assert "has no entity schema" in str(err.value)


def test_check_schema_on_an_older_revision_says_to_migrate(tmp_path: Path) -> None:
    """Given a database stamped with another revision, then SchemaError names both revisions."""
    url = sqlite_url(tmp_path)
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000_older'"))
    engine.dispose()
    store = SQLStore(url)
    try:
        with pytest.raises(SchemaError, match=r"0000_older.*entities migrate"):
            store.check_schema()
    finally:
        store.close()


def test_an_unreachable_database_is_a_store_error() -> None:
    """Given a Postgres URL where nothing listens, then a read raises StoreError."""
    store = SQLStore("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2")
    try:
        with pytest.raises(StoreError):
            store.load("t", "a")
    finally:
        store.close()


def test_ids_are_listed_in_code_point_order_whatever_the_database_collation() -> None:
    """Given a Postgres database created with a linguistic (ICU en-US) collation, then
    list_ids still orders and pages ids by code point, as SQLite and Python do."""
    with scratch_postgres("entities_collation", collation="en-US") as url:
        upgrade(url)
        store = SQLStore(url)
        try:
            ids = ["B", "a", "_x", "a-1", "a1", "ab", "A", "é", "Z", "a b"]
            for eid in ids:
                put(store, "t", eid, 0, {})
            assert store.list_ids("t") == sorted(ids)
            assert store.list_ids("t", limit=3, after="_x") == sorted(ids)[4:7]
        finally:
            store.close()
