"""Handlers as typed descriptors: what ``@handler`` makes of a method.

``@handler`` turns ``def increment(self, amount: int = 1) -> int`` into a
:class:`Handler` ``[Counter, (amount: int = 1), int]``. Read on an entity
instance (the entity's own code: ``self.increment(5)``) it is a
:class:`BoundHandler` that runs the method in place. Read on a reference
(``Counter.ref(id).increment``, see :mod:`entities.refs`) it is a
:class:`BoundHandler` that sends. Both have one type, so plain
``mypy --strict`` checks a call against the handler's parameters and gives it
the handler's return type, with no plugin:

- ``ref.increment(5)`` is ``int``; ``ref.increment.delay(5)`` is
  ``EntityResult[int]``; ``await ref.increment.aio(5)`` is ``int``;
- ``ref.incremnt(5)`` and ``ref.increment("five")`` are type errors.

:meth:`entities.Entity.ref` is typed as returning the entity class itself, so
mypy looks handlers up where they are declared. The price: mypy also accepts a
state field or an ``Entity`` method on a reference (``ref.count``), which
raises at run time (:class:`~entities.errors.UnknownHandler`), as a misspelled
handler does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    from entities.model import Entity
    from entities.results import EntityResult

S = TypeVar("S", bound="Entity")
P = ParamSpec("P")
R = TypeVar("R")


class BoundHandler(Generic[P, R]):
    """A handler bound to one entity: call it for the reply, ``.delay`` for a result,
    ``.aio`` for an awaitable of the reply."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The reply (through a reference: sends and waits for the committed reply)."""
        raise NotImplementedError

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> EntityResult[R]:
        """Sends the call; the result's ``.get()`` waits for the reply."""
        raise NotImplementedError

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Sends the call and awaits the reply on the running event loop."""
        raise NotImplementedError


class Handler(Generic[S, P, R]):
    """A method marked ``@handler``: a descriptor that binds to an entity or a reference."""

    __entity_handler__ = True

    def __init__(self, fn: Callable[Concatenate[S, P], R]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Handler[S, P, R]: ...
    @overload
    def __get__(self, obj: S, owner: type[Any]) -> BoundHandler[P, R]: ...
    def __get__(self, obj: S | None, owner: type[Any]) -> Handler[S, P, R] | BoundHandler[P, R]:
        if obj is None:
            return self
        return _InPlace(obj, self.fn)

    def __call__(self, entity: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the method on ``entity`` in place (``Counter.increment(obj, 5)``)."""
        return self.fn(entity, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<handler {getattr(self, '__qualname__', self.fn)}>"


class _InPlace(BoundHandler[P, R]):
    """A handler read on an entity instance: the entity's own code calls it in place."""

    __slots__ = ("_fn", "_obj")

    def __init__(self, obj: Any, fn: Callable[..., R]) -> None:
        self._obj = obj
        self._fn = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._fn(self._obj, *args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> EntityResult[R]:
        raise TypeError(self._elsewhere("delay"))

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        raise TypeError(self._elsewhere("aio"))

    def _elsewhere(self, how: str) -> str:
        name = getattr(self._fn, "__name__", "handler")
        return (
            f"{name}.{how}() sends through a reference (Counter.ref(id).{name}.{how}(...)); "
            f"on an entity instance call self.{name}(...) in place, or send to another "
            "entity with self.send(type, id, msg)"
        )
