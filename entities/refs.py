"""References to one entity: ``Counter.ref(id).increment(5)``, ``.delay(5)``, ``.aio(5)``.

A reference is typed as its entity class (see :mod:`entities.handlers`), so
mypy checks every call; at run time it is an :class:`EntityRef` whose public
attributes are the entity's handlers, each a :class:`HandlerRef`. The three
ways to call share one path: the message is built once here, sent by
:func:`entities.client.send` (sync) or :func:`entities.aio.send` (async), and
the reply is decoded by the handler's return annotation (a ``Decimal`` reply
is a ``Decimal``; :mod:`entities.codec`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from entities import registry
from entities.errors import UnknownHandler
from entities.handlers import BoundHandler
from entities.messages import validate_id
from entities.results import EntityResult, return_type

if TYPE_CHECKING:
    from entities.model import Entity

R = TypeVar("R")


class HandlerRef(BoundHandler[..., Any]):
    """One handler of a reference: call it to send and wait, ``.delay`` for the result,
    ``.aio`` to await the reply."""

    __slots__ = ("_fn", "_op", "_ref")

    def __init__(self, ref: EntityRef, op: str, fn: Callable[..., Any]) -> None:
        self._ref = ref
        self._op = op
        self._fn = fn

    def _msg(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"op": self._op, "args": list(args), "kwargs": kwargs}

    def delay(self, *args: Any, **kwargs: Any) -> EntityResult[Any]:
        """Sends the call; its result's ``.get()`` gives the decoded reply."""
        from entities.client import send

        ref = self._ref
        result = send(ref._entity_class, ref._entity_id, self._msg(args, kwargs))
        return result.describe(
            ref._entity_class.__entity_name__, ref._entity_id, self._op, return_type(self._fn)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Sends the call and waits for the reply (a commit receipt)."""
        return self.delay(*args, **kwargs).get(timeout=self._ref._timeout)

    def aio(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Sends the call and awaits the decoded reply, with no thread per call.

        Cancelling the await does not unsend the message: it may still be applied.
        """
        from entities import aio

        ref = self._ref
        return aio.call(
            ref._entity_class,
            ref._entity_id,
            self._msg(args, kwargs),
            timeout=ref._timeout,
            decode_as=return_type(self._fn),
        )

    def __repr__(self) -> str:
        return f"<handler ref {self._ref!r}.{self._op}>"


class EntityRef:
    """A reference to one entity; every public attribute is one of its handlers.

    Its own state is kept in private attributes, so no handler name is
    shadowed. Reading anything that is not a handler raises UnknownHandler.
    """

    def __init__(
        self, entity_class: type[Entity], entity_id: str, timeout: float | None = None
    ) -> None:
        from entities.client import DEFAULT_TIMEOUT_S

        validate_id("entity id", entity_id)
        registry.ensure_modules()
        self._entity_class = entity_class
        self._entity_id = entity_id
        self._timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout

    def __getattr__(self, op: str) -> HandlerRef:
        if op.startswith("_"):
            raise AttributeError(op)
        cls = self._entity_class
        fn = cls.__entity_handlers__.get(op)
        if fn is None:
            known = ", ".join(sorted(cls.__entity_handlers__)) or "none"
            raise UnknownHandler(
                f"entity type {cls.__entity_name__!r} has no handler {op!r} (handlers: {known}); "
                "a reference reaches handlers only: read state with entities.read()"
            )
        return HandlerRef(self, op, fn)

    def __repr__(self) -> str:
        return f"<EntityRef {self._entity_class.__entity_name__} {self._entity_id!r}>"
