"""Defining entities: state fields, handlers, options and hooks.

An entity class declares its state as annotated class attributes with
defaults and its handlers with :func:`handler`. Declaring a class does no I/O;
it validates the declaration and registers the class under its type name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import re
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Literal, ParamSpec, Self, TypeVar

from entities import clock, codec, registry
from entities.errors import BadMessage, DefinitionError, StateError, UnknownHandler
from entities.handlers import Handler

if TYPE_CHECKING:
    from entities.sends import SendFailure

Durability = Literal["strict", "interval", "on_stop"]
DURABILITIES: tuple[str, ...] = ("strict", "interval", "on_stop")
Delay = float | int | dt.timedelta | dt.datetime

E = TypeVar("E", bound="Entity")
P = ParamSpec("P")
R = TypeVar("R")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,255}$")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _Missing()
_RESERVED = frozenset(
    {
        "id",
        "ref",
        "send",
        "schedule_alarm",
        "cancel_alarm",
        "after_load",
        "handle_alarm",
        "handle_send_failed",
        "upgrade",
    }
)  # completed below with every public attribute of Entity, which the runtime calls


def handler(fn: Callable[Concatenate[E, P], R]) -> Handler[E, P, R]:
    """Marks a method as a message handler; its return value (JSON-able) is the reply.

    The method becomes a typed :class:`~entities.handlers.Handler`: called on the
    entity itself it runs in place; on ``Counter.ref(id)`` it sends, and mypy
    checks the arguments and knows the reply's type.
    """
    if isinstance(fn, (staticmethod, classmethod)):
        raise DefinitionError(f"{fn!r}: a handler must be a public instance method")
    return Handler(fn)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """A state field: its name, its default value or factory."""

    name: str = ""
    default: Any = _MISSING
    default_factory: Callable[[], Any] | None = None

    def make_default(self) -> Any:
        """A fresh default value for a new entity."""
        return self.default_factory() if self.default_factory is not None else self.default


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None) -> Any:
    """Declares a state field's default; use ``default_factory`` for mutable values."""
    if (default is _MISSING) == (default_factory is None):
        raise DefinitionError("field() takes exactly one of default= or default_factory=")
    if _is_mutable(default):
        raise DefinitionError(
            f"field(default={default!r}): a mutable default would be shared by every entity; "
            "use field(default_factory=...)"
        )
    return FieldSpec(default=default, default_factory=default_factory)


def seconds(value: float | int | dt.timedelta, what: str) -> float:
    """A duration in seconds from a number or a timedelta."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise DefinitionError(f"{what} must be a non-negative number of seconds or a timedelta")
    return float(value)


@dataclasses.dataclass(frozen=True)
class EntityOptions:
    """The class options of an entity type, with their defaults."""

    durability: str = "strict"
    flush_interval_s: float = 5.0
    hibernate_after_s: float = 300.0
    shutdown_after_s: float | None = 3600.0
    vsn: int = 1


@dataclasses.dataclass
class StagedAlarm:
    """An alarm change staged by a handler: schedule (fire_at set) or cancel (None)."""

    name: str
    fire_at: dt.datetime | None
    payload: Any = None


@dataclasses.dataclass
class StagedSend:
    """A message to another entity, staged by a handler for the outbox."""

    entity_type: str
    entity_id: str
    msg: dict[str, Any]


def fire_time(delay: Delay, now: dt.datetime | None = None) -> dt.datetime:
    """The aware UTC time an alarm fires, from seconds, a timedelta or an aware datetime."""
    now = now or clock.now()
    if isinstance(delay, dt.datetime):
        if delay.tzinfo is None:
            raise BadMessage("an alarm time must be an aware datetime (with tzinfo)")
        return delay.astimezone(dt.UTC)
    if isinstance(delay, dt.timedelta):
        return now + delay
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise BadMessage(
            f"alarm delay must be seconds >= 0, a timedelta or an aware datetime, got {delay!r}"
        )
    return now + dt.timedelta(seconds=delay)


class Entity:
    """The base class of entity types.

    Subclass it with class keywords for the options::

        class Counter(Entity, name="counter", durability="strict"):
            count: int = 0

            @handler
            def increment(self, amount: int = 1) -> int: ...
    """

    __entity_name__: ClassVar[str]
    __entity_options__: ClassVar[EntityOptions]
    __entity_fields__: ClassVar[dict[str, FieldSpec]]
    __entity_handlers__: ClassVar[dict[str, Callable[..., Any]]]
    __entity_types__: ClassVar[dict[str, Any] | None]

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        durability: str = "strict",
        flush_interval: float | dt.timedelta = 5.0,
        hibernate_after: float | dt.timedelta = 300.0,
        shutdown_after: float | dt.timedelta | None = 3600.0,
        vsn: int = 1,
        **kwargs: Any,
    ) -> None:
        try:
            super().__init_subclass__(**kwargs)
        except TypeError as exc:
            raise DefinitionError(
                f"{cls.__qualname__}: unknown class option(s) {sorted(kwargs)}; the options are "
                "name, durability, flush_interval, hibernate_after, shutdown_after and vsn"
            ) from exc
        type_name = cls.__name__ if name is None else name
        if not isinstance(type_name, str) or not _NAME_RE.match(type_name):
            raise DefinitionError(
                f"entity type name {type_name!r} must be 1-255 characters of letters, digits "
                "and _.:-"
            )
        if durability not in DURABILITIES:
            raise DefinitionError(
                f"{cls.__qualname__}: durability must be one of {DURABILITIES}, got {durability!r}"
            )
        if isinstance(vsn, bool) or not isinstance(vsn, int) or vsn < 1:
            raise DefinitionError(f"{cls.__qualname__}: vsn must be an int >= 1, got {vsn!r}")
        cls.__entity_name__ = type_name
        cls.__entity_options__ = EntityOptions(
            durability=durability,
            flush_interval_s=seconds(flush_interval, "flush_interval"),
            hibernate_after_s=seconds(hibernate_after, "hibernate_after"),
            shutdown_after_s=None
            if shutdown_after is None
            else seconds(shutdown_after, "shutdown_after"),
            vsn=vsn,
        )
        cls.__entity_fields__ = _collect_fields(cls)
        cls.__entity_handlers__ = _collect_handlers(cls)
        cls.__entity_types__ = None
        _check_field_types(cls)
        registry.register(cls)

    def __init__(self, id: str = "", **state: Any) -> None:
        self._entity_id = id
        self._staged_alarms: list[StagedAlarm] = []
        self._staged_sends: list[StagedSend] = []
        for fname, spec in self.__entity_fields__.items():
            setattr(self, fname, state.pop(fname) if fname in state else spec.make_default())
        if state:
            raise TypeError(f"{type(self).__qualname__} has no state fields {sorted(state)}")

    @property
    def id(self) -> str:
        """The entity id; not a state field and not stored inside the state."""
        return self._entity_id

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__entity_fields__)
        return f"<{self.__entity_name__} {self.id!r} {fields}>"

    # -- the generated client -------------------------------------------------

    @classmethod
    def ref(cls, entity_id: str, *, timeout: float | None = None) -> Self:
        """A reference to one entity: ``Counter.ref(id).increment(5)`` sends and waits.

        Typed as the class itself, so mypy checks each handler call against the
        handler's signature and knows its reply type; at run time it is an
        :class:`entities.refs.EntityRef`, which reaches handlers only (see
        :mod:`entities.handlers`). ``timeout`` (seconds) bounds each wait for a
        reply (default ``entities.client.DEFAULT_TIMEOUT_S``).
        """
        from entities.refs import EntityRef

        return EntityRef(cls, entity_id, timeout)  # type: ignore[return-value]

    # -- effects, committed with the state -------------------------------------

    def schedule_alarm(self, name: str, delay: Delay, payload: Any = None) -> None:
        """Schedules (or replaces) alarm ``name``; takes effect with the handler's commit."""
        _check_alarm_name(name)
        codec.encode(payload, Any, f"alarm {name!r} payload")
        self._staged_alarms.append(StagedAlarm(name, fire_time(delay), payload))

    def cancel_alarm(self, name: str) -> None:
        """Cancels alarm ``name``; takes effect with the handler's commit."""
        _check_alarm_name(name)
        self._staged_alarms.append(StagedAlarm(name, None))

    def send(self, entity_type: str | type[Entity], entity_id: str, msg: dict[str, Any]) -> None:
        """Sends ``msg`` to another entity if, and only if, this handler's commit succeeds.

        Raises UnknownEntityType if no class of that type is registered in this
        process, UnknownHandler or BadMessage if ``msg`` does not fit one of its
        handlers: raised in the handler, they roll its changes back. A refusal
        only the receiver can know reaches :meth:`handle_send_failed`.
        """
        from entities.messages import RUNTIME_OPS, validate_message

        target = registry.type_name(entity_type)
        op, args, kwargs = validate_message(target, entity_id, msg)
        receiver = registry.lookup(target)
        if op not in RUNTIME_OPS:
            receiver.bind_call(op, args, kwargs)
        try:  # the outbox keeps it as JSON in the store until it is published
            codec.check_json(msg, "message")
        except StateError as exc:
            raise BadMessage(str(exc)) from None
        self._staged_sends.append(StagedSend(target, entity_id, msg))

    # -- hooks (optional) -----------------------------------------------------

    def after_load(self) -> None:
        """Runs on every activation: the first ever, or a revival from the store."""

    def handle_alarm(self, name: str, payload: Any) -> None:
        """Runs when alarm ``name`` fires; override it to use alarms."""
        raise UnknownHandler(
            f"{self.__entity_name__} defines no handle_alarm(); alarm {name!r} cannot fire"
        )

    def handle_send_failed(self, failure: SendFailure) -> None:
        """Runs when an entity refused a message this one sent (see :mod:`entities.sends`).

        Override it to compensate; by default a refusal is only logged, counted
        and dead-lettered.
        """

    @classmethod
    def upgrade(cls, from_vsn: int, state: dict[str, Any]) -> dict[str, Any]:
        """Returns ``state`` (stored at ``from_vsn``) in the shape of vsn ``from_vsn + 1``.

        Called once per step, on load, for snapshots older than the class's vsn;
        override it when you raise ``vsn``. The default refuses.
        """
        from entities.errors import UpgradeError

        raise UpgradeError(
            f"{cls.__qualname__} defines no upgrade() from vsn {from_vsn} "
            f"(class vsn {cls.__entity_options__.vsn})"
        )

    # -- used by the runtime ----------------------------------------------------

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """The resolved type annotation of every state field.

        Resolved when the class is created, or on first use if an annotation
        names something defined later; a field whose annotation still cannot
        be resolved is treated as ``Any``.
        """
        if cls.__entity_types__ is None:
            try:
                hints = typing.get_type_hints(cls)
            except Exception:
                hints = {}
            types = {n: hints.get(n, Any) for n in cls.__entity_fields__}
            _check_types(cls, types)
            cls.__entity_types__ = types
        return cls.__entity_types__

    def encode_state(self) -> dict[str, Any]:
        """The state as JSON-native data; raises StateError naming the offending field."""
        types = self.field_types()
        return {
            n: codec.encode(getattr(self, n), types[n], f"{self.__entity_name__}.{n}")
            for n in self.__entity_fields__
        }

    @classmethod
    def from_state(cls: type[E], entity_id: str, data: dict[str, Any] | None) -> E:
        """An instance with ``data`` (as made by encode_state) or the defaults."""
        obj = cls.__new__(cls)
        obj._entity_id = entity_id
        obj._staged_alarms = []
        obj._staged_sends = []
        types = cls.field_types()
        for n, spec in cls.__entity_fields__.items():
            if data is not None and n in data:
                value = codec.decode(data[n], types[n], f"{cls.__entity_name__}.{n}")
            else:
                value = spec.make_default()
            setattr(obj, n, value)
        return obj

    def take_effects(self) -> tuple[list[StagedAlarm], list[StagedSend]]:
        """Returns and clears the alarms and sends staged by the last handler."""
        alarms, sends = self._staged_alarms, self._staged_sends
        self._staged_alarms, self._staged_sends = [], []
        return alarms, sends

    @classmethod
    def bind_call(cls, op: Any, args: Any, kwargs: Any) -> Callable[[Entity], Any]:
        """Checks a message against the handler's signature; returns a call to apply it."""
        if not isinstance(op, str) or op not in cls.__entity_handlers__:
            known = ", ".join(sorted(cls.__entity_handlers__)) or "none"
            raise UnknownHandler(
                f"entity type {cls.__entity_name__!r} has no handler {op!r} (handlers: {known})"
            )
        fn = cls.__entity_handlers__[op]
        try:
            _signature(fn).bind(None, *args, **kwargs)
        except TypeError as exc:
            raise BadMessage(f"{cls.__entity_name__}.{op}: {exc}") from None
        return lambda entity: fn(entity, *args, **kwargs)


_RESERVED |= {n for n in vars(Entity) if not n.startswith("_")}


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _check_field_types(cls: type[Entity]) -> None:
    """Resolves and checks the fields' annotations now, if they can be resolved yet (one
    may name a class defined later in its module: it is then checked on first use)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return
    types = {n: hints.get(n, Any) for n in cls.__entity_fields__}
    _check_types(cls, types)
    cls.__entity_types__ = types


def _check_types(cls: type[Entity], types: dict[str, Any]) -> None:
    """Refuses a field whose annotation the codec could never encode (``set[str]``)."""
    for fname, tp in types.items():
        try:
            codec.check_annotation(tp, f"{cls.__qualname__}.{fname}")
        except StateError as exc:
            raise DefinitionError(
                f"{exc}. Declare field {fname!r} of {cls.__qualname__} with a type the codec "
                "stores (a set as a list, bytes as str)"
            ) from None


def _check_alarm_name(name: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= 255:
        raise BadMessage(f"an alarm name must be a str of 1-255 characters, got {name!r}")
    try:
        codec.check_text(name, "alarm name")
    except StateError as exc:
        raise BadMessage(str(exc)) from None


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return typing.get_origin(annotation) is ClassVar or annotation is ClassVar


_MUTABLE = (list, dict, set)


def _is_mutable(default: Any) -> bool:
    return isinstance(default, _MUTABLE) or (
        dataclasses.is_dataclass(default) and not isinstance(default, type)
    )


def _collect_fields(cls: type[Entity]) -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {}
    for klass in reversed(cls.__mro__):
        if klass is Entity or not issubclass(klass, Entity):
            continue
        for fname, annotation in inspect.get_annotations(klass).items():
            if fname.startswith("_") or _is_classvar(annotation):
                continue
            if fname in _RESERVED:
                raise DefinitionError(f"{cls.__qualname__}: {fname!r} is reserved, not a field")
            default = klass.__dict__.get(fname, _MISSING)
            if isinstance(default, FieldSpec):
                spec = dataclasses.replace(default, name=fname)
            elif default is _MISSING:
                raise DefinitionError(
                    f"{cls.__qualname__}.{fname} has no default; state fields need one "
                    f"(`{fname}: ... = <default>` or entities.field(default_factory=...))"
                )
            elif _is_mutable(default):
                raise DefinitionError(
                    f"{cls.__qualname__}.{fname}: a mutable default would be shared by every "
                    f"entity; use entities.field(default_factory=...)"
                )
            else:
                spec = FieldSpec(name=fname, default=default)
            fields[fname] = spec
    return fields


def _collect_handlers(cls: type[Entity]) -> dict[str, Callable[..., Any]]:
    handlers: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in klass.__dict__.items():
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if getattr(fn, "__entity_handler__", False):
                if isinstance(value, (staticmethod, classmethod)) or attr.startswith("_"):
                    raise DefinitionError(
                        f"{cls.__qualname__}.{attr}: a handler must be a public instance method"
                    )
                if attr in _RESERVED:
                    raise DefinitionError(f"{cls.__qualname__}: {attr!r} is reserved")
                handlers[attr] = fn.fn if isinstance(fn, Handler) else fn
            elif attr in handlers:
                del handlers[attr]  # overridden by a non-handler
    return handlers
