"""Exact round trips on every store: what the codec encodes comes back equal and in order.

A hypothesis property over the codec's whole value space (None, bools, ints
beyond 64 bits, floats such as -0.0 and 1e300, text, datetimes with odd
offsets, dates, Decimals, UUIDs, lists, tuples, dicts in any key order,
``$`` keys, nested dataclasses), through each of the stores' write paths
(Postgres: the one-statement commit and the general one; SQLite), into every
JSON column: snapshots, processed-record replies, alarm payloads and outbox
messages. "Same" means the same types, the same key order, the same float
sign and the same Decimal digits, not just ``==``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entities import codec
from entities.migrate import upgrade
from entities.store import AlarmChange, CommitBatch, OutboxMessage, Processed, SQLStore, Write
from tests.databases import sqlite_url

pytestmark = pytest.mark.no_services  # each example writes its own fresh ids


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str | None = None


@dataclasses.dataclass
class Shape:
    corner: Point
    points: list[Point]
    span: tuple[int, float, str]
    extra: dict[str, Any]
    when: dt.datetime | None = None


@dataclasses.dataclass
class State:
    """The annotations a value is encoded and decoded under, like an entity's fields."""

    anything: Any
    ratio: float
    shape: Shape | None
    table: dict[str, Any]


# -- the codec's value space ------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e300, -1e300, 1e16, 5e-324, 0.1, 2.0**53 + 2]),
)
ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**100, -(10**300)]),
)
offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23)),
)
datetimes = st.one_of(st.datetimes(), st.datetimes(timezones=offsets))
decimals = st.decimals(allow_nan=False, allow_infinity=False)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    text,
    datetimes,
    st.dates(),
    decimals,
    st.uuids(),
)
keys = st.one_of(text, st.sampled_from(["$", "$map", "$datetime", "$decimal", "a", "b", "z"]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=12,
)
points = st.builds(Point, floats, floats, st.none() | text)
shapes = st.builds(
    Shape,
    points,
    st.lists(points, max_size=3),
    st.tuples(ints, floats, text),
    st.dictionaries(keys, values, max_size=3),
    st.none() | datetimes,
)
states = st.builds(
    State, values, floats, st.none() | shapes, st.dictionaries(keys, values, max_size=5)
)


def same(a: Any, b: Any, path: str = "value") -> None:
    """Asserts ``b`` is exactly ``a``: types, key order, float sign, Decimal digits, offsets."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} became {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} came back as {list(b)}"
        for k in a:
            same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} became {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, float | Decimal):
        assert repr(a) == repr(b), f"{path}: {a!r} became {b!r}"
    elif isinstance(a, dt.datetime):
        assert (a, a.utcoffset()) == (b, b.utcoffset()), f"{path}: {a!r} became {b!r}"
    else:
        assert a == b, f"{path}: {a!r} became {b!r}"


def dump(data: Any) -> str:
    return json.dumps(data)


# -- the stores ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SQLStore]:
    """A migrated store of each kind, shared by the module's examples (ids never repeat)."""
    if request.param == "sqlite":
        directory = tmp_path_factory.mktemp("exact")
        upgrade(sqlite_url(directory))
        store = SQLStore(sqlite_url(directory))
    else:
        store = SQLStore(os.environ["ENTITIES_DATABASE_URL"])
    store.ensure_partitions(16)
    yield store
    store.close()


def round_trip(store: SQLStore, first: State, second: State, general: bool) -> None:
    """Commits ``first`` as a new entity and ``second`` as its update, with a reply, an
    alarm payload and an outbox message made of the same values; all come back exactly.

    ``general``: the batches carry an alarm and an outbox message, which on Postgres
    takes the general commit path instead of the one-statement one.
    """
    eid = uuid.uuid4().hex
    for version, value in enumerate((first, second)):
        encoded = codec.encode(value, State)
        reply = codec.encode(value.anything)
        mid = uuid.uuid4().hex
        batch = CommitBatch(
            0,
            None,
            writes=[Write("exact", eid, version, 1, encoded)],
            processed=[Processed(mid, "exact", eid, 0, True, reply)],
        )
        if general:
            batch.alarms.append(AlarmChange("exact", eid, "a", dt.datetime.now(dt.UTC), reply))
            batch.outbox.append(
                OutboxMessage(mid, 9, "exact", eid, {"op": "x", "args": [encoded, reply]})
            )
        store.commit(batch)

        snapshot = store.load("exact", eid)
        assert snapshot is not None and snapshot.version == version + 1
        assert dump(snapshot.state) == dump(encoded)
        same(value, codec.decode(snapshot.state, State))
        record = store.processed([mid])[mid]
        assert dump(record.reply) == dump(reply)
        same(value.anything, codec.decode(record.reply))
        if general:
            alarm = store.get_alarm("exact", eid, "a")
            assert alarm is not None and dump(alarm.payload) == dump(reply)
            sent = [m for m in store.pending_outbox(9) if m.message_id == mid]
            assert [dump(m.msg) for m in sent] == [dump({"op": "x", "args": [encoded, reply]})]
            store.forget_outbox([mid])


QUICK = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LONG = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("general", [False, True], ids=["one-statement", "general"])
@QUICK
@given(first=states, second=states)
def test_every_codec_value_round_trips_exactly(
    backend: SQLStore, general: bool, first: State, second: State
) -> None:
    """Given any state the codec accepts, when committed (created, then updated) and loaded,
    then state, reply, alarm payload and outbox message come back exactly, keys in order."""
    round_trip(backend, first, second, general)


@pytest.mark.slow
@pytest.mark.parametrize("general", [False, True], ids=["one-statement", "general"])
@LONG
@given(first=states, second=states)
def test_every_codec_value_round_trips_exactly_long(
    backend: SQLStore, general: bool, first: State, second: State
) -> None:
    """The same property, over many more examples."""
    round_trip(backend, first, second, general)


@pytest.mark.parametrize("general", [False, True], ids=["one-statement", "general"])
@pytest.mark.parametrize(
    "anything",
    [
        {"apple": 2, "pear": 1},
        {"z": {"b": 1, "a": [{"y": 1, "x": 2}]}, "a": None},
        1.0,
        -0.0,
        1e300,
        1e16,
        2**70,
        -(2**64) - 1,
        "12",
        Decimal("1.10"),
        [1.0, 2, -0.0],
    ],
    ids=repr,
)
def test_known_losses_of_jsonb_and_sqlite_numeric_do_not_happen(
    backend: SQLStore, general: bool, anything: Any
) -> None:
    """Given values Postgres jsonb reorders or renumbers, or SQLite's numeric column
    affinity turns into other numbers (a reply of 1.0 read back as 1, 2**70 as a float),
    then each comes back exactly in the state, the reply and the alarm payload."""
    value = State(anything, 1e16, None, {"pear": -0.0, "apple": 2**65})
    round_trip(backend, value, dataclasses.replace(value, ratio=-0.0), general)
