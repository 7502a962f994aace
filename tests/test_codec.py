"""The JSON codec: every supported value round-trips exactly; everything else is refused.

A round trip here is encode, then JSON text and back, then decode with the same
annotation; "exactly" means the same types, the same Decimal exponent, the same
UTC offset, not merely values that compare equal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entities import StateError
from entities.codec import decode, encode

pytestmark = pytest.mark.no_services


def round_trip(value: Any, tp: Any = Any) -> Any:
    """Encodes ``value``, passes it through JSON text and decodes it again."""
    text = json.dumps(encode(value, tp, "state.f"), allow_nan=False)
    return decode(json.loads(text), tp, "state.f")


def assert_same(a: Any, b: Any) -> None:
    """Asserts ``a`` and ``b`` are equal and of the same types all the way down."""
    assert type(a) is type(b), f"{a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, float):
        assert a == b and math.copysign(1, a) == math.copysign(1, b), (a, b)
    elif isinstance(a, Decimal):
        assert a.as_tuple() == b.as_tuple(), (a, b)
    elif isinstance(a, dt.datetime):
        assert (a, a.utcoffset(), a.tzinfo is None) == (b, b.utcoffset(), b.tzinfo is None)
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), (a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b), (a, b)
        for k in a:
            assert_same(a[k], b[k])
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    else:
        assert a == b, (a, b)


@dataclasses.dataclass
class Point:
    x: int
    y: float
    label: str = ""


@dataclasses.dataclass
class Shape:
    name: str
    corners: list[Point]
    center: Point | None = None
    tags: dict[str, Point] = dataclasses.field(default_factory=dict)
    created: dt.datetime | None = None
    price: Decimal = Decimal("0")
    span: tuple[int, int] = (0, 0)


@dataclasses.dataclass
class ColoredPoint(Point):
    color: str = "red"


class Color(enum.Enum):
    RED = "red"


SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    -(2**200),
    10**1000,
    0.0,
    -0.0,
    0.1,
    1.5e-300,
    "",
    "plain",
    "ünïcødé ✓ 😀",
    "$datetime",
    dt.date(2026, 11, 21),
    dt.datetime(2026, 11, 21, 13, 0, 0, 123456),
    dt.datetime(2026, 11, 21, 13, 0, 0, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 11, 21, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=dt.timezone(-dt.timedelta(hours=11))),
    Decimal("1.10"),
    Decimal("1E+2"),
    Decimal("-0.000"),
    Decimal("123456789012345678901234567890.123456789"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalars_round_trip_exactly(value: Any) -> None:
    """Given a supported scalar, when it round-trips without annotation, then it is identical."""
    assert_same(round_trip(value), value)


def test_a_decimal_keeps_its_exponent() -> None:
    """Given Decimal("1.10"), when it round-trips, then it is still "1.10", not "1.1"."""
    assert str(round_trip(Decimal("1.10"))) == "1.10"


def test_an_aware_datetime_keeps_its_offset_and_microseconds() -> None:
    """Given an aware datetime at +05:30 with microseconds, then both survive the round trip."""
    value = dt.datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))
    back = round_trip(value)
    assert back.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert back.microsecond == 89
    assert back == value


def test_a_naive_datetime_stays_naive() -> None:
    """Given a naive datetime, when it round-trips, then it has no tzinfo."""
    assert round_trip(dt.datetime(2026, 1, 1, 12)).tzinfo is None


def test_containers_round_trip() -> None:
    """Given nested lists and dicts of tagged values, when they round-trip, they are identical."""
    value = {
        "when": [dt.date(2026, 1, 1), {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}],
        "money": [Decimal("0.01"), Decimal("10")],
        "ids": {"a": uuid.UUID(int=7)},
        "empty": [[], {}],
    }
    assert_same(round_trip(value), value)


def test_dict_keys_starting_with_dollar_are_not_mistaken_for_tags() -> None:
    """Given user dicts whose keys look like tags, when they round-trip, they stay dicts."""
    for value in [
        {"$datetime": "2026-01-01T00:00:00"},
        {"$decimal": "1.1"},
        {"$map": {"a": 1}},
        {"$map": 5, "$": None},
        {"$a": {"$map": {"$map": 1}}},
        {"": 1, "$uuid": "not a uuid"},
    ]:
        assert_same(round_trip(value), value)


def test_tuples_come_back_as_tuples_through_their_annotation() -> None:
    """Given tuples annotated as such, when they round-trip, they are tuples again."""
    assert_same(round_trip((1, "a", 2.5), tuple[int, str, float]), (1, "a", 2.5))
    assert_same(round_trip((1, 2, 3), tuple[int, ...]), (1, 2, 3))
    assert_same(round_trip((1, 2), tuple[int, int] | None), (1, 2))
    assert_same(round_trip([(1, 2), (3, 4)], list[tuple[int, int]]), [(1, 2), (3, 4)])
    assert_same(
        round_trip((dt.date(2026, 1, 1), Decimal("1.0")), tuple[dt.date, Decimal]),
        (dt.date(2026, 1, 1), Decimal("1.0")),
    )


def test_a_tuple_without_annotation_becomes_a_list() -> None:
    """Given a tuple under an Any annotation, when it round-trips, it is a list (documented)."""
    assert_same(round_trip((1, 2)), [1, 2])


def test_nested_dataclasses_round_trip() -> None:
    """Given a dataclass holding dataclasses in lists, dicts and Optionals, it round-trips."""
    shape = Shape(
        name="tri",
        corners=[Point(0, 0.0), Point(1, 0.5, "b"), Point(2, 1.0)],
        center=Point(1, 0.5, "c"),
        tags={"$origin": Point(0, 0.0), "top": Point(2, 1.0)},
        created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        price=Decimal("9.90"),
        span=(1, 3),
    )
    assert_same(round_trip(shape, Shape), shape)


def test_optional_dataclasses_round_trip_as_value_or_none() -> None:
    """Given an Optional[dataclass] annotation, both a value and None round-trip."""
    assert_same(round_trip(Point(1, 2.0), Point | None), Point(1, 2.0))
    assert round_trip(None, Point | None) is None


def test_lists_and_dicts_of_dataclasses_round_trip() -> None:
    """Given list[dataclass] and dict[str, dataclass], when they round-trip, they are rebuilt."""
    points = [Point(1, 1.0), Point(2, 2.0)]
    assert_same(round_trip(points, list[Point]), points)
    by_name = {"a": Point(1, 1.0), "$b": Point(2, 2.0)}
    assert_same(round_trip(by_name, dict[str, Point]), by_name)
    assert_same(round_trip({"a": [Point(3, 3.0)]}, dict[str, list[Point]]), {"a": [Point(3, 3.0)]})


def test_a_float_annotation_survives_postgres_printing_large_floats_as_ints() -> None:
    """Given a float annotation, when Postgres hands 1e16 back as an int, then it is a float."""
    assert_same(decode(10**16, float), 1e16)
    assert_same(decode([10**20, 2], list[float]), [1e20, 2.0])
    assert_same(decode({"y": 3, "x": 1}, Point), Point(1, 3.0))
    assert_same(decode(10**16, float | None), 1e16)
    assert_same(decode(True, float), True)  # a bool is never turned into a float


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (frozenset({1}), "frozenset"),
        (b"bytes", "bytes"),
        (bytearray(b"x"), "bytearray"),
        (object(), "object"),
        (Color.RED, "Color"),
        (1 + 2j, "complex"),
    ],
    ids=repr,
)
def test_unsupported_types_are_refused_naming_the_path_and_the_type(
    value: Any, type_name: str
) -> None:
    """Given an unsupported value deep in a field, then StateError names its path and type."""
    with pytest.raises(StateError) as err:
        encode({"items": [1, value]}, Any, "counter.data")
    assert "counter.data['items'][1]" in str(err.value)
    assert type_name in str(err.value)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("Infinity")], ids=repr
)
def test_non_finite_numbers_are_refused(value: Any) -> None:
    """Given NaN or infinity, when encoded, then StateError names the field and the kind."""
    with pytest.raises(StateError) as err:
        encode([value], Any, "e.ratio")
    assert "e.ratio[0]" in str(err.value)
    assert ("float" in str(err.value)) or ("Decimal" in str(err.value))


def test_non_str_dict_keys_are_refused() -> None:
    """Given a dict with an int key, when encoded, then StateError names the path and key type."""
    with pytest.raises(StateError) as err:
        encode({"inner": {1: "one"}}, Any, "e.index")
    assert "e.index['inner']" in str(err.value)
    assert "int" in str(err.value)


def test_a_dataclass_without_an_annotation_naming_it_is_refused() -> None:
    """Given a dataclass under an Any annotation, then StateError names the path and class."""
    with pytest.raises(StateError) as err:
        encode({"p": Point(1, 1.0)}, dict[str, Any], "e.points")
    assert "e.points['p']" in str(err.value)
    assert "Point" in str(err.value)


def test_a_dataclass_subclass_is_refused_where_the_base_is_annotated() -> None:
    """Given a subclass instance under its base's annotation, it is refused (it could not load)."""
    with pytest.raises(StateError) as err:
        encode(ColoredPoint(1, 1.0), Point, "e.p")
    assert "ColoredPoint" in str(err.value)


@pytest.mark.parametrize("text", ["a\x00b", "\x00", "lone \ud800 surrogate"], ids=repr)
def test_text_a_store_cannot_hold_is_refused(text: str) -> None:
    """Given a str (value or key) with NUL or a lone surrogate, then StateError."""
    with pytest.raises(StateError) as err:
        encode({"k": text}, Any, "e.s")
    assert "e.s['k']" in str(err.value)
    with pytest.raises(StateError) as err:
        encode({text: 1}, Any, "e.s")
    assert "e.s" in str(err.value)


def test_an_int_too_long_to_read_back_is_refused() -> None:
    """Given an int of 5,000 digits (beyond what JSON parsers read), then StateError."""
    with pytest.raises(StateError) as err:
        encode(10**5000, Any, "e.n")
    assert "e.n" in str(err.value)
    assert "int" in str(err.value)


def test_a_stored_object_missing_a_required_field_is_a_state_error() -> None:
    """Given a stored Point without its required y, when decoded, then StateError names it."""
    with pytest.raises(StateError) as err:
        decode({"x": 1}, Point, "e.p")
    assert "e.p" in str(err.value)
    assert "Point" in str(err.value)


def test_a_malformed_stored_tag_is_a_state_error() -> None:
    """Given a stored tag with a malformed value, when decoded, then StateError names the path."""
    with pytest.raises(StateError) as err:
        decode({"$datetime": "yesterday"}, Any, "e.when")
    assert "e.when" in str(err.value)


# -- property: nested JSON-ish values round-trip exactly ------------------------

offsets = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
)
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.uuids(),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(text, text.map(lambda s: "$" + s)), children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_property_nested_values_round_trip_exactly(value: Any) -> None:
    """For any nested value of supported types, encode → JSON → decode gives it back exactly."""
    assert_same(round_trip(value), value)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5))
def test_property_float_lists_survive_numbers_printed_as_ints(floats: list[float]) -> None:
    """For any floats printed as ints where integral, list[float] decodes them as floats."""
    printed = [int(f) if f.is_integer() else f for f in floats]
    assert_same(decode(printed, list[float]), [float(p) for p in printed])
    assert decode(printed, list[float]) == floats


def test_a_utc_offset_with_microseconds_round_trips() -> None:
    """Python 3.11's fromisoformat drops an offset's microseconds; the codec keeps them."""
    for offset in (dt.timedelta(microseconds=1), -dt.timedelta(hours=5, microseconds=7)):
        value = dt.datetime(2000, 1, 1, tzinfo=dt.timezone(offset))
        assert_same(round_trip(value), value)
