"""The JSON codec for entity state: exact round trips, never pickle.

Supported values: None, bool, int, float (finite), str, datetime, date,
Decimal, UUID, and lists, tuples, dicts with str keys and dataclasses of them.
JSON-native values are stored as themselves; the others are stored as one-key
objects tagged with ``$``: ``{"$datetime": "2026-11-21T13:00:00+00:00"}``,
``{"$date": ...}``, ``{"$decimal": "1.10"}``, ``{"$uuid": ...}``. A user dict
with a key starting with ``$`` is wrapped as ``{"$map": {...}}`` so it can
never be mistaken for a tag. Dataclasses are stored as plain objects and
rebuilt from the field's type annotation, so nothing stored names a module.

Anything else is refused with a :class:`~entities.errors.StateError` that
names the field path and the value's type. So are values every backend cannot
hold exactly: strings (and keys) with a NUL character or a lone surrogate,
which Postgres refuses, and ints too long for a JSON parser to read back.

Every store keeps the encoded JSON as its exact text (see
:mod:`entities.store.schema`), so an encoded value reads back equal, in the
same key order, with ints and floats as they were. Snapshots written before
migration 0004 went through Postgres ``jsonb``, which prints large floats
without an exponent (``1e16`` came back as the int ``10000000000000000``), so
a value annotated ``float`` is still rebuilt as a float from an int.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import types
import typing
import uuid
from collections import abc
from decimal import Decimal
from typing import Any

from entities.errors import StateError

JSON = Any  # a value made only of None, bool, int, float, str, list and dict

_TAGS = ("$datetime", "$date", "$decimal", "$uuid", "$map")

#: Longest int stored, in bits (about 3,900 digits): CPython's JSON parser refuses
#: ints of more than 4,300 digits, so a longer one could be written but never read.
MAX_INT_BITS = 13_000


def check_text(value: str, path: str, what: str = "str") -> None:
    """Raises StateError unless ``value`` is text every backend stores exactly."""
    if "\x00" in value:
        raise StateError(
            f"{path}: {what} contains a NUL character (\\x00), which the state store "
            "(Postgres) cannot hold"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise StateError(
                f"{path}: {what} contains a lone surrogate and is not valid Unicode text"
            ) from None


def check_json(value: Any, path: str) -> None:
    """Raises StateError unless ``value`` is plain JSON (as messages must be) a store can hold."""
    kind = type(value)
    if value is None or kind is bool:
        return
    if kind is int or kind is float or kind is str:
        encode(value, Any, path)
    elif kind is list:
        for i, v in enumerate(value):
            check_json(v, f"{path}[{i}]")
    elif kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise StateError(f"{path}: dict key {k!r} is a {type(k).__name__}, not a str")
            check_text(k, path, "dict key")
            check_json(v, f"{path}[{k!r}]")
    else:
        raise StateError(
            f"{path}: a value of type {kind.__name__} is not plain JSON; messages carry only "
            "None, bool, int, float, str, lists and dicts"
        )


def _dataclass_types(tp: Any) -> list[type]:
    """The dataclass types an annotation admits (through Optional and unions)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        found: list[type] = []
        for arg in typing.get_args(tp):
            found.extend(_dataclass_types(arg))
        return found
    return []


def _item_type(tp: Any, index: int = 0) -> Any:
    """The element annotation of ``list[T]``/``dict[str, T]``/``tuple[T, ...]``, or Any."""
    args = typing.get_args(_strip_optional(tp))
    if not args:
        return Any
    if len(args) > index and args[index] is not Ellipsis:
        return args[index]
    return args[0]


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to no annotation
        return {f.name: Any for f in dataclasses.fields(cls)}


def encode(value: Any, tp: Any = Any, path: str = "state") -> JSON:
    """Encodes ``value`` (annotated ``tp``) into JSON-native data; raises StateError."""
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is str:
        check_text(value, path)
        return value
    if kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise StateError(
                f"{path}: int of {value.bit_length()} bits is too large to store "
                f"(the limit is {MAX_INT_BITS} bits, about 3,900 digits)"
            )
        return value
    if kind is float:
        if not math.isfinite(value):
            raise StateError(f"{path}: {value!r} is not a finite float and cannot be stored")
        return value
    if kind is dt.datetime:
        return {"$datetime": value.isoformat()}
    if kind is dt.date:
        return {"$date": value.isoformat()}
    if kind is Decimal:
        if not value.is_finite():
            raise StateError(f"{path}: Decimal {value} is not finite and cannot be stored")
        return {"$decimal": str(value)}
    if kind is uuid.UUID:
        return {"$uuid": str(value)}
    if kind is list or kind is tuple:
        item = _item_type(tp)
        return [encode(v, _tuple_item(tp, i, item), f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        item = _item_type(tp, 1)
        out: dict[str, JSON] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise StateError(
                    f"{path}: dict key {k!r} is a {type(k).__name__}; only str keys can be stored"
                )
            check_text(k, path, "dict key")
            out[k] = encode(v, item, f"{path}[{k!r}]")
        if any(k.startswith("$") for k in out):
            return {"$map": out}
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # The exact class, not a subclass: decoding rebuilds the annotated class.
        if kind not in _dataclass_types(tp):
            raise StateError(
                f"{path}: dataclass {kind.__name__} is stored only where the field's type "
                f"annotation names it (e.g. `{path.rsplit('.', 1)[-1]}: {kind.__name__}`)"
            )
        hints = _hints(kind)
        return {
            f.name: encode(getattr(value, f.name), hints.get(f.name, Any), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
        }
    raise StateError(
        f"{path}: values of type {kind.__name__} cannot be stored; supported are None, bool, "
        "int, float, str, datetime, date, Decimal, UUID, and lists, dicts and dataclasses of them"
    )


def _tuple_item(tp: Any, index: int, default: Any) -> Any:
    base = _strip_optional(tp)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if args and not (len(args) == 2 and args[1] is Ellipsis) and index < len(args):
            return args[index]
    return default


def decode(data: JSON, tp: Any = Any, path: str = "state") -> Any:
    """Rebuilds a value encoded by :func:`encode`, guided by its annotation ``tp``."""
    if type(data) is int and _strip_optional(tp) is float:
        return float(data)
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        item = _item_type(tp)
        items = [decode(v, _tuple_item(tp, i, item), f"{path}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if typing.get_origin(_strip_optional(tp)) is tuple else items
    if isinstance(data, dict):
        if len(data) == 1:
            ((tag, raw),) = data.items()
            if tag in _TAGS:
                return _decode_tag(tag, raw, tp, path)
        classes = _dataclass_types(tp)
        if classes:
            return _decode_dataclass(classes, data, path)
        item = _item_type(tp, 1)
        return {k: decode(v, item, f"{path}[{k!r}]") for k, v in data.items()}
    raise StateError(f"{path}: stored value of type {type(data).__name__} is not JSON")


def _decode_tag(tag: str, raw: Any, tp: Any, path: str) -> Any:
    try:
        if tag == "$datetime":
            return _parse_datetime(raw)
        if tag == "$date":
            return dt.date.fromisoformat(raw)
        if tag == "$decimal":
            return Decimal(raw)
        if tag == "$uuid":
            return uuid.UUID(raw)
    except (TypeError, ValueError) as exc:
        raise StateError(f"{path}: stored {tag} value {raw!r} is malformed: {exc}") from None
    item = _item_type(tp, 1)
    return {k: decode(v, item, f"{path}[{k!r}]") for k, v in raw.items()}


#: A UTC offset with microseconds, as ``isoformat`` writes it: ``+05:30:00.000001``.
_FINE_OFFSET = re.compile(r"([+-])(\d\d):(\d\d):(\d\d)\.(\d{6})$")


def _parse_datetime(raw: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(raw)
    # Python 3.11's fromisoformat drops the microseconds of a UTC offset; restore them.
    fine = _FINE_OFFSET.search(raw)
    if fine is not None:
        sign, hours, minutes, seconds, micros = fine.groups()
        offset = dt.timedelta(
            hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=int(micros)
        )
        value = value.replace(tzinfo=dt.timezone(-offset if sign == "-" else offset))
    return value


def _decode_dataclass(classes: list[type], data: dict[str, Any], path: str) -> Any:
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) <= names:
            hints = _hints(cls)
            values = {k: decode(v, hints.get(k, Any), f"{path}.{k}") for k, v in data.items()}
            try:
                return cls(**values)
            except TypeError as exc:  # e.g. a field added to the class without a default
                raise StateError(
                    f"{path}: stored object cannot be rebuilt as {cls.__name__}: {exc}"
                ) from None
    raise StateError(
        f"{path}: stored object with keys {sorted(data)} matches none of "
        f"{[c.__name__ for c in classes]}"
    )


#: Annotations of values stored as themselves or as a tag.
_SCALARS: frozenset[Any] = frozenset(
    {Any, object, type(None), bool, int, float, str, dt.datetime, dt.date, Decimal, uuid.UUID}
)
#: Generic origins whose values are stored as JSON arrays or objects.
_ARRAYS: frozenset[Any] = frozenset({list, tuple, abc.Sequence, abc.MutableSequence})
_MAPS: frozenset[Any] = frozenset({dict, abc.Mapping, abc.MutableMapping})


def check_annotation(tp: Any, path: str, _seen: frozenset[type] = frozenset()) -> None:
    """Raises StateError unless values annotated ``tp`` can be stored.

    Accepted: the supported scalars (and ``Any``), lists, tuples and sequences
    of accepted types, dicts and mappings with ``str`` keys, dataclasses whose
    fields are accepted, ``Literal`` values that are, and unions and
    ``Optional`` of them. Anything else (``set``, ``bytes``, an ordinary class,
    an ``Enum``) could never be encoded, so it is refused where it is declared.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in _SCALARS or isinstance(tp, typing.TypeVar):
        return
    if origin is typing.Annotated:
        return check_annotation(args[0], path, _seen)
    if hasattr(tp, "__supertype__"):  # typing.NewType
        return check_annotation(tp.__supertype__, path, _seen)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            check_annotation(arg, path, _seen)
        return
    if origin is typing.Literal:
        for value in args:
            if type(value) not in (type(None), bool, int, str):
                break
        else:
            return
    elif tp in _ARRAYS or origin in _ARRAYS:
        for arg in args:
            if arg is not Ellipsis:
                check_annotation(arg, f"{path}[]", _seen)
        return
    elif tp in _MAPS or origin in _MAPS:
        if args and args[0] not in (str, Any):
            raise StateError(
                f"{path}: dict keys annotated {_name(args[0])} cannot be stored; keys are str"
            )
        if args:
            check_annotation(args[1], f"{path}[]", _seen)
        return
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp not in _seen:
            hints = _hints(tp)
            for f in dataclasses.fields(tp):
                check_annotation(hints.get(f.name, Any), f"{path}.{f.name}", _seen | {tp})
        return
    raise StateError(
        f"{path}: values of type {_name(tp)} cannot be stored; supported are None, bool, int, "
        "float, str, datetime, date, Decimal, UUID, and lists, tuples, dicts with str keys and "
        "dataclasses of them"
    )


def _name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else repr(tp)
