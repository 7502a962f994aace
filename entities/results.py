"""The result of a send: a Celery ``AsyncResult`` that knows its entity and its reply type.

:class:`EntityResult` is what ``send_to_entity.delay/apply_async``,
``entities.client.send`` and ``Counter.ref(id).op.delay(...)`` return. It is
an ``AsyncResult`` (same task id, same result format in the backend), with
three differences:

- ``.get()`` that runs out of time raises :class:`~entities.errors.ReplyTimeout`
  (also a ``celery.exceptions.TimeoutError``) naming the entity, the op, the
  task id and what to check, instead of Celery's bare "The operation timed out.";
- a result made by a typed reference decodes the reply by the handler's return
  annotation through :mod:`entities.codec` (a ``Decimal`` is a ``Decimal``, a
  ``tuple[...]`` a tuple, a ``float`` a float); any other result gives the
  reply as Celery decodes it (kombu's JSON), as a plain
  ``AsyncResult(task_id).get()`` does;
- a result sent by the direct path waits on its thread's kept reply
  subscription (:mod:`entities.replies`) instead of Celery's result consumer,
  which saves round trips; the reply it reads is the one Celery's would.
"""

from __future__ import annotations

import functools
import typing
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celery.result import AsyncResult

from entities.errors import ReplyTimeout

if TYPE_CHECKING:
    from entities.replies import ReplyWaiter

R = TypeVar("R")

#: Marks a result whose reply is returned in its JSON form, undecoded.
RAW: Any = object()


class EntityResult(AsyncResult, Generic[R]):  # type: ignore[misc]  # celery is untyped
    """A pending reply of one entity; ``.get()`` is typed by the handler it calls."""

    _entity: tuple[str, str, str] | None = None
    _decode_as: Any = RAW
    _waiter: ReplyWaiter | None = None

    def describe(
        self, entity_type: str, entity_id: str, op: str, decode_as: Any = RAW
    ) -> EntityResult[R]:
        """Records what the result waits for (errors name it); returns the result."""
        self._entity = (entity_type, entity_id, op)
        self._decode_as = decode_as
        return self

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> R:
        """Waits up to ``timeout`` seconds (None: forever) for the reply and returns it.

        Raises the entity's error (or the handler's own exception) as Celery
        does, and :class:`~entities.errors.ReplyTimeout` when no reply came in
        time; the message itself stays sent and may still be applied.
        """
        waiter = self._waiter
        if waiter is not None and self._cache is None:
            if kwargs.get("disable_sync_subtasks", True):
                from celery.result import assert_will_not_block

                assert_will_not_block()
            try:
                payload = waiter.wait(self.id, timeout)
            except Exception as exc:
                error = _backend_error(exc, self.backend)
                if error is exc:
                    raise
                raise error from exc
            if payload is None:
                raise ReplyTimeout(self.timeout_message(timeout))
            self._waiter = None  # the waiter let go of it; a reused task id is not forgotten
            self.settle(payload)
            if propagate and not kwargs.get("callback"):
                return self.reply()
        try:
            value = super().get(timeout=timeout, propagate=propagate, **kwargs)
        except ReplyTimeout:
            raise
        except Exception as exc:
            from celery.exceptions import TimeoutError as CeleryTimeout

            if isinstance(exc, CeleryTimeout) and not self.ready():
                raise ReplyTimeout(self.timeout_message(timeout)) from None
            raise
        return self.decode(value)

    def settle(self, payload: bytes | str) -> None:
        """Fills the result from its stored reply (the backend's encoded meta)."""
        self._maybe_set_cache(self.backend.decode_result(payload))

    def reply(self) -> R:
        """The reply of a settled result, decoded; raises its error as ``get()`` does."""
        cache = self._cache if self._cache is not None else self._get_task_meta()
        if cache["status"] != "SUCCESS":
            self.maybe_throw()
        return self.decode(cache["result"])

    def decode(self, value: Any) -> R:
        """The reply as the handler's return type (typed references), else as it came.

        The reply arrives in kombu's JSON form (which already revives a few
        types, such as Decimal and datetime); it is taken through the state
        codec and rebuilt by the annotation, so tuples, floats and nested
        values come back as the handler declared them.
        """
        if self._decode_as is RAW or self._cache is None or self._cache["status"] != "SUCCESS":
            return value  # type: ignore[no-any-return]
        from entities.codec import decode, encode

        entity_type, _, op = self._entity or ("entity", "", "reply")
        path = f"reply of {entity_type}.{op}"
        return decode(encode(value, Any, path), self._decode_as, path)  # type: ignore[no-any-return]

    def timeout_message(self, timeout: float | None) -> str:
        """What a ReplyTimeout of this result says."""
        entity_type, entity_id, op = self._entity or ("?", "?", "?")
        waited = "in time" if timeout is None else f"within {timeout:g} s"
        what = "" if self._entity is None else f" from {entity_type} {entity_id!r} to {op!r}"
        return (
            f"no reply{what} {waited} (task id {self.id}). Are workers running "
            "(`celery -A workers worker`) on this broker and database? `entities stats` shows "
            "which worker owns each partition and its backlog. The message stays queued and "
            f"may still be applied; AsyncResult({self.id!r}).get() can fetch its reply later."
        )

    def __del__(self) -> None:
        waiter = self._waiter
        if waiter is not None:  # never waited for (or settled another way, e.g. ready())
            waiter.forget(self.id)


def _backend_error(exc: Exception, backend: Any) -> Exception:
    """A redis error while waiting, as what Celery's result consumer raises for it."""
    import redis
    from kombu.exceptions import OperationalError

    if not isinstance(exc, redis.RedisError):
        return exc
    url = getattr(backend, "url", None) or "the result backend"
    error: Exception = OperationalError(
        f"lost the reply subscription to {_safe(url)} while waiting: {exc}; the message "
        "was sent and may still be applied"
    )
    return error


def _safe(url: str) -> str:
    """A URL without its password."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


@functools.cache
def return_type(fn: Any) -> Any:
    """The return annotation of a handler function, resolved (``Any`` if it cannot be)."""
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:  # an unresolvable forward reference: give the JSON form
        return Any
