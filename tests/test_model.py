"""Defining entities: fields and defaults, type names, options, handlers, reserved names, calls.

Every class here gets a type name starting with "model-" so it never collides
with the entity classes of other tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any, ClassVar, Literal

import pytest

from entities import (
    BadMessage,
    DefinitionError,
    Entity,
    StateError,
    UnknownEntityType,
    UnknownHandler,
    UpgradeError,
    field,
    handler,
    registry,
)

pytestmark = pytest.mark.no_services


class Account(Entity, name="model-account"):
    balance: int = 0
    owner: str | None = None
    history: list[int] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=lambda: {"daily": 100})
    currency: str = field(default="EUR")
    rate: ClassVar[float] = 1.5
    _cache: int = 0

    @handler
    def deposit(self, amount: int, note: str = "") -> int:
        self.balance += amount
        self.history.append(amount)
        return self.balance

    @handler
    def get(self) -> int:
        return self.balance

    def helper(self) -> None:
        """A plain method, not a handler."""


# -- fields -----------------------------------------------------------------------


def test_fields_are_the_annotated_attributes_with_their_defaults() -> None:
    """Given annotated attributes, then they are the fields, and ClassVar/private ones are not."""
    assert list(Account.__entity_fields__) == ["balance", "owner", "history", "limits", "currency"]
    account = Account("a")
    assert (account.balance, account.owner, account.currency) == (0, None, "EUR")
    assert account.encode_state() == {
        "balance": 0,
        "owner": None,
        "history": [],
        "limits": {"daily": 100},
        "currency": "EUR",
    }


def test_a_default_factory_gives_every_entity_its_own_value() -> None:
    """Given default_factory fields, when two entities are made, then they share nothing."""
    a, b = Account("a"), Account.from_state("b", None)
    a.history.append(1)
    a.limits["daily"] = 5
    assert b.history == [] and b.limits == {"daily": 100}


def test_state_can_be_given_by_keyword_and_unknown_fields_are_refused() -> None:
    """Given Account(id, balance=5), then balance is 5; an unknown field is a TypeError."""
    assert Account("a", balance=5).balance == 5
    with pytest.raises(TypeError, match="nope"):
        Account("a", nope=1)


def test_from_state_fills_missing_fields_with_defaults() -> None:
    """Given a stored state without some fields, when loaded, then they take their defaults."""
    account = Account.from_state("a", {"balance": 7})
    assert account.balance == 7
    assert account.history == [] and account.currency == "EUR"


@pytest.mark.parametrize("default", [[], {}, set(), [1, 2]], ids=repr)
def test_a_mutable_default_is_refused(default: Any) -> None:
    """Given a list, dict or set default, then DefinitionError points to default_factory."""
    with pytest.raises(DefinitionError, match="default_factory"):
        type("Bad", (Entity,), {"__annotations__": {"items": "list"}, "items": default})


@pytest.mark.parametrize("default", [[], {"a": 1}, {1}], ids=repr)
def test_a_mutable_default_through_field_is_refused(default: Any) -> None:
    """Given field(default=<list, dict or set>), then DefinitionError points to default_factory."""
    with pytest.raises(DefinitionError, match="default_factory"):
        field(default=default)


def test_a_dataclass_instance_default_is_refused() -> None:
    """Given a dataclass instance as a default, then the class is refused (it would be shared)."""
    import dataclasses

    @dataclasses.dataclass
    class Box:
        n: int = 0

    with pytest.raises(DefinitionError, match="default_factory"):

        class Bad(Entity, name="model-bad-dc"):
            box: Box = Box()


def test_a_field_without_default_is_refused_naming_it() -> None:
    """Given `count: int` with no default, then DefinitionError names the field."""
    with pytest.raises(DefinitionError, match="count"):

        class Bad(Entity, name="model-no-default"):
            count: int


@pytest.mark.parametrize("kwargs", [{}, {"default": 1, "default_factory": list}], ids=str)
def test_field_takes_exactly_one_of_default_and_factory(kwargs: dict[str, Any]) -> None:
    """Given field() with neither or both, then DefinitionError."""
    with pytest.raises(DefinitionError, match="exactly one"):
        field(**kwargs)


def test_id_is_not_a_state_field() -> None:
    """Given an entity, then self.id is its id and is neither a field nor in the encoded state."""
    account = Account.from_state("acc-1", {"balance": 1})
    assert account.id == "acc-1"
    assert "id" not in Account.__entity_fields__
    assert "id" not in account.encode_state()


def test_encode_state_names_the_field_of_an_unsupported_value() -> None:
    """Given a field holding a set, when the state is encoded, then StateError names the field."""
    account = Account("a")
    account.owner = {"x"}  # type: ignore[assignment]
    with pytest.raises(StateError, match=r"model-account\.owner.*set"):
        account.encode_state()


@pytest.mark.parametrize(
    ("annotation", "named"),
    [
        ("set[str]", "set[str]"),
        ("frozenset[int]", "frozenset[int]"),
        ("bytes", "bytes"),
        ("complex", "complex"),
        ("dict[int, str]", "keys annotated int"),
        ("list[set[int]]", "set[int]"),
        ("Optional[set[str]]", "set[str]"),
        ("Literal[b'x']", "Literal"),
        ("Plain", "Plain"),
    ],
)
def test_a_field_type_the_codec_cannot_store_is_refused_at_definition(
    annotation: str, named: str
) -> None:
    """Given a field annotated with a type no value of which could be stored, when the class
    is created, then DefinitionError names the class, the field and the type (not the
    first commit, long after)."""
    namespace: dict[str, Any] = {}
    code = (
        "from typing import Literal, Optional\n"
        "from entities import Entity\n"
        "class Plain:\n"
        "    pass\n"
        "class Tags(Entity, name='model-tags'):\n"
        f"    tags: {annotation} = None\n"
    )
    with pytest.raises(DefinitionError) as caught:  # compiled without this module's __future__
        exec(compile(code, "<tags>", "exec", dont_inherit=True), namespace)
    message = str(caught.value)
    assert "Tags" in message and "tags" in message
    assert named in message


def test_every_storable_field_type_is_accepted_at_definition() -> None:
    """Given fields of every type the codec stores, nested and optional, and an annotation
    naming a class defined later, then the class is created and its state round-trips."""

    class Everything(Entity, name="model-everything"):
        a: list[dict[str, Node]] | None = None
        b: Literal["x", "y"] = "x"
        c: tuple[int, ...] = ()
        d: dt.datetime | dt.date | None = None
        e: decimal.Decimal = decimal.Decimal("1.5")
        f: uuid.UUID | None = None
        g: Any = None
        h: Later | None = None

    obj = Everything("e", a=[{"n": Node("n", [Node("m")])}], c=(1, 2))
    back = Everything.from_state("e", obj.encode_state())
    assert back.a == obj.a and back.c == (1, 2)


@dataclasses.dataclass
class Node:
    """A recursive dataclass."""

    name: str = ""
    children: list[Node] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Later:
    """Defined after the entity class that names it."""

    n: int = 0


# -- type names -------------------------------------------------------------------


def test_the_type_name_defaults_to_the_class_name() -> None:
    """Given no name=, then the type name is the class name and the class is registered."""

    class ModelDefaultNamed(Entity):
        n: int = 0

    assert ModelDefaultNamed.__entity_name__ == "ModelDefaultNamed"
    assert registry.lookup("ModelDefaultNamed") is ModelDefaultNamed


def test_a_second_class_with_a_used_name_is_refused() -> None:
    """Given a type name already taken by another class, then DefinitionError says who has it."""
    with pytest.raises(DefinitionError, match="model-account"):

        class Impostor(Entity, name="model-account"):
            n: int = 0

    assert registry.lookup("model-account") is Account


@pytest.mark.parametrize("name", ["", "has space", "x" * 256, "naïve", "a/b"], ids=repr)
def test_a_malformed_type_name_is_refused(name: str) -> None:
    """Given an empty, too long or oddly spelled name, then DefinitionError."""
    with pytest.raises(DefinitionError, match="type name"):
        type("Bad", (Entity,), {}, name=name)


# -- options ----------------------------------------------------------------------


def test_options_have_the_documented_defaults() -> None:
    """Given no options, then strict, 5 s flush, 300 s hibernate, 3600 s shutdown, vsn 1."""
    opts = Account.__entity_options__
    assert (opts.durability, opts.flush_interval_s, opts.hibernate_after_s) == (
        "strict",
        5.0,
        300.0,
    )
    assert (opts.shutdown_after_s, opts.vsn) == (3600.0, 1)


def test_durations_accept_timedeltas_and_shutdown_after_none() -> None:
    """Given timedelta durations and shutdown_after=None, then they are stored as seconds/None."""

    class Relaxed(
        Entity,
        name="model-relaxed",
        durability="interval",
        flush_interval=dt.timedelta(milliseconds=250),
        hibernate_after=dt.timedelta(minutes=2),
        shutdown_after=None,
        vsn=3,
    ):
        n: int = 0

    opts = Relaxed.__entity_options__
    assert opts.durability == "interval"
    assert (opts.flush_interval_s, opts.hibernate_after_s, opts.shutdown_after_s) == (
        0.25,
        120.0,
        None,
    )
    assert opts.vsn == 3


@pytest.mark.parametrize(
    "options",
    [
        {"durability": "sometimes"},
        {"flush_interval": -1},
        {"flush_interval": float("nan")},
        {"hibernate_after": "5"},
        {"shutdown_after": dt.timedelta(seconds=-1)},
        {"hibernate_after": True},
        {"vsn": 0},
        {"vsn": "2"},
        {"vsn": True},
        {"durabilty": "strict"},
    ],
    ids=str,
)
def test_bad_options_are_refused_at_definition(options: dict[str, Any]) -> None:
    """Given a bad or misspelled class option, then DefinitionError when the class is created."""
    with pytest.raises(DefinitionError):
        type("Bad", (Entity,), {}, name="model-bad-option", **options)
    with pytest.raises(UnknownEntityType):  # nothing was registered
        registry.lookup("model-bad-option")


# -- handlers ---------------------------------------------------------------------


def test_handlers_are_the_marked_methods() -> None:
    """Given @handler methods and a plain one, then only the marked ones are handlers."""
    assert sorted(Account.__entity_handlers__) == ["deposit", "get"]


def test_handlers_are_inherited_and_overridable() -> None:
    """Given a subclass, then it inherits handlers, overrides them, and can unmark them."""

    class Base(Entity, name="model-base"):
        n: int = 0

        @handler
        def a(self) -> str:
            return "base a"

        @handler
        def b(self) -> str:
            return "base b"

        @handler
        def c(self) -> str:
            return "base c"

    class Child(Base, name="model-child"):
        extra: int = 1

        @handler
        def a(self) -> str:
            return "child a"

        def b(self) -> str:  # no longer a handler
            return "child b"

        @handler
        def d(self) -> str:
            return "child d"

    assert sorted(Child.__entity_handlers__) == ["a", "c", "d"]
    assert list(Child.__entity_fields__) == ["n", "extra"]
    child = Child("x")
    assert Child.bind_call("a", [], {})(child) == "child a"
    assert Child.bind_call("c", [], {})(child) == "base c"
    with pytest.raises(UnknownHandler):
        Child.bind_call("b", [], {})


def test_private_and_static_handlers_are_refused() -> None:
    """Given @handler on a _private method or a staticmethod, then DefinitionError."""
    with pytest.raises(DefinitionError, match="public instance method"):

        class Private(Entity, name="model-private"):
            @handler
            def _hidden(self) -> None: ...

    with pytest.raises(DefinitionError, match="public instance method"):

        class Static(Entity, name="model-static"):
            @staticmethod
            @handler
            def s() -> None: ...


@pytest.mark.parametrize(
    "name",
    [
        "id",
        "ref",
        "send",
        "schedule_alarm",
        "cancel_alarm",
        "after_load",
        "handle_alarm",
        "upgrade",
        "encode_state",
        "from_state",
        "bind_call",
        "take_effects",
        "field_types",
    ],
)
def test_reserved_names_are_neither_fields_nor_handlers(name: str) -> None:
    """Given a field or handler named like something the runtime calls, then DefinitionError."""
    with pytest.raises(DefinitionError, match="reserved"):
        type("Bad", (Entity,), {"__annotations__": {name: "int"}, name: 0}, name="model-rsv-f")

    def fn(self: Any) -> None: ...

    with pytest.raises(DefinitionError, match="reserved"):
        type("Bad", (Entity,), {name: handler(fn)}, name="model-rsv-h")


# -- bind_call --------------------------------------------------------------------


def test_bind_call_returns_a_call_that_applies_the_handler() -> None:
    """Given a well-formed call, when bound and applied, then the handler runs on the entity."""
    account = Account("a")
    call = Account.bind_call("deposit", [5], {"note": "gift"})
    assert call(account) == 5
    assert account.history == [5]


@pytest.mark.parametrize("op", ["withdraw", "helper", "__init__", "_cache", 7, None])
def test_an_unknown_op_is_unknown_handler_naming_type_op_and_handlers(op: Any) -> None:
    """Given an op that is not a handler, then UnknownHandler names the type, op and handlers."""
    with pytest.raises(UnknownHandler) as err:
        Account.bind_call(op, [], {})
    message = str(err.value)
    assert "model-account" in message and repr(op) in message
    assert "deposit" in message and "get" in message


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        ([], {}, "missing a required argument: 'amount'"),
        ([1, "note", 3], {}, "too many positional arguments"),
        ([1], {"colour": "red"}, "unexpected keyword argument 'colour'"),
        ([1], {"amount": 2}, "multiple values for argument 'amount'"),
        ([], {"self": 1, "amount": 1}, "multiple values for argument 'self'"),
    ],
)
def test_arguments_that_do_not_fit_are_bad_message_naming_the_problem(
    args: list[Any], kwargs: dict[str, Any], problem: str
) -> None:
    """Given arguments that do not fit the signature, then BadMessage names handler and problem."""
    with pytest.raises(BadMessage) as err:
        Account.bind_call("deposit", args, kwargs)
    assert "model-account.deposit" in str(err.value)
    assert problem in str(err.value)


# -- hooks and effects ------------------------------------------------------------


def test_upgrade_is_refused_unless_the_class_defines_it() -> None:
    """Given no upgrade() override, when an older vsn must be upgraded, then UpgradeError."""
    with pytest.raises(UpgradeError, match="no upgrade"):
        Account.upgrade(0, {})


def test_effects_are_staged_until_taken() -> None:
    """Given a handler that schedules, cancels and sends, then the effects wait in take_effects."""
    account = Account("a")
    before = dt.datetime.now(dt.UTC)
    account.schedule_alarm("soon", 10, payload={"n": 1})
    account.schedule_alarm("later", dt.timedelta(hours=1))
    account.schedule_alarm("at", dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    account.cancel_alarm("old")
    account.send("model-account", "b", {"op": "deposit", "args": [1]})
    alarms, sends = account.take_effects()
    assert [a.name for a in alarms] == ["soon", "later", "at", "old"]
    assert dt.timedelta(seconds=9) < alarms[0].fire_at - before < dt.timedelta(seconds=60)
    assert alarms[0].payload == {"n": 1}
    assert alarms[2].fire_at == dt.datetime(2029, 12, 31, 22, tzinfo=dt.UTC)
    assert alarms[2].fire_at.utcoffset() == dt.timedelta(0)
    assert alarms[3].fire_at is None
    assert [(s.entity_type, s.entity_id, s.msg["op"]) for s in sends] == [
        ("model-account", "b", "deposit")
    ]
    assert account.take_effects() == ([], [])


@pytest.mark.parametrize(
    ("name", "delay"),
    [
        ("", 1),
        ("x" * 256, 1),
        ("nul\x00", 1),
        (7, 1),
        ("ok", -1),
        ("ok", dt.datetime(2030, 1, 1)),
        ("ok", "5"),
    ],
    ids=repr,
)
def test_bad_alarms_are_bad_message(name: Any, delay: Any) -> None:
    """Given a bad alarm name or delay (naive datetime, negative, str), then BadMessage."""
    with pytest.raises(BadMessage):
        Account("a").schedule_alarm(name, delay)


def test_an_alarm_payload_that_cannot_be_stored_is_refused() -> None:
    """Given a payload holding a set, when scheduled, then StateError and nothing is staged."""
    account = Account("a")
    with pytest.raises(StateError):
        account.schedule_alarm("x", 1, payload={1, 2})
    assert account.take_effects() == ([], [])


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "deposit", "args": [dt.datetime(2026, 1, 1)]},
        {"op": "deposit", "args": ["nul\x00"]},
        {"op": "deposit", "kwargs": {"amount": float("nan")}},
        {"op": "deposit", "args": [{1, 2}]},
        {"op": "deposit", "extra": 1},
        {"args": [1]},
    ],
    ids=repr,
)
def test_a_message_to_another_entity_must_be_plain_json(msg: dict[str, Any]) -> None:
    """Given a send whose message is not plain, storable JSON, then BadMessage, nothing staged."""
    account = Account("a")
    with pytest.raises(BadMessage):
        account.send("model-account", "b", msg)
    assert account.take_effects() == ([], [])
