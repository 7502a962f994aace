"""The one error tree of the project.

Every error a caller can see derives from :class:`EntityError`::

    EntityError
    ├── ConfigurationError        settings are missing, malformed or disagree with the store
    │   └── SchemaError           the database schema is missing or older: run `entities migrate`
    ├── DefinitionError           an entity class is declared wrongly (raised at class creation)
    ├── StateError                state cannot be encoded (unsupported type, too large, not JSON)
    ├── MessageError              a message was refused before any handler ran
    │   ├── UnknownEntityType     no entity class has that type name
    │   ├── UnknownHandler        the entity has no handler of that name
    │   ├── BadMessage            malformed message, bad arguments, a hostile id or a refused option
    │   └── MessageExpired        the message's ``expires`` time passed before it was applied
    ├── UpgradeError              a stored snapshot could not be brought to the class's vsn
    ├── ReplyTimeout              no reply in time (also celery.exceptions.TimeoutError)
    ├── BrokerError               the broker (or the result backend) cannot be reached at send;
    │                             also a kombu.exceptions.OperationalError
    └── StoreError                the state store failed (infrastructure; retried by workers)
        ├── FenceError            a version or epoch fence rejected a commit
        └── DataRefused           the store refused a value the data carried (not retried)

Errors cross the broker as Celery failure results, so each class takes exactly
one positional argument, its message, and is rebuilt from it on the client.
Driver exceptions (SQLAlchemy, psycopg, redis) never reach callers: the store
translates them into :class:`StoreError` at its one boundary, and a client's
send translates broker failures into :class:`BrokerError` at its one boundary
(:mod:`entities.broker_errors`), still catchable as kombu's OperationalError.
"""

from __future__ import annotations

from celery.exceptions import TimeoutError as _CeleryTimeoutError
from kombu.exceptions import OperationalError


class EntityError(Exception):
    """The base of every error this project raises on purpose."""


class ConfigurationError(EntityError):
    """Settings are missing, malformed, or disagree with what the store recorded."""


class SchemaError(ConfigurationError):
    """The database schema is missing or older than this code: run `entities migrate`."""


class DefinitionError(EntityError):
    """An entity class is declared wrongly; raised when the class is created."""


class StateError(EntityError):
    """Entity state cannot be encoded: an unsupported type, a non-JSON value, or too large."""


class MessageError(EntityError):
    """A message was refused before any handler ran; state is unchanged."""


class UnknownEntityType(MessageError):
    """No entity class is registered under that type name."""


class UnknownHandler(MessageError):
    """The entity class has no handler with that name."""


class BadMessage(MessageError):
    """The message is malformed, its arguments do not fit the handler, or an id is invalid."""


class MessageExpired(MessageError):
    """The message's expiry time (Celery's ``expires``) passed before it could be applied;
    nothing of it was applied."""


class UpgradeError(EntityError):
    """A stored snapshot's vsn could not be brought to the class's vsn."""


class ReplyTimeout(EntityError, _CeleryTimeoutError):  # type: ignore[misc]  # celery is untyped
    """No reply arrived in time; the message may still be queued and applied later.

    It is also a ``celery.exceptions.TimeoutError``, so callers that catch
    Celery's timeout keep working. The message names the entity, the op, the
    task id (``AsyncResult(task_id)`` can still fetch the reply) and what to check.
    """


class BrokerError(EntityError, OperationalError):  # type: ignore[misc]  # kombu is untyped
    """The broker (or the result backend) could not be reached when a call was sent.

    Raised once the send's retries are spent (Celery's ``task_publish_retry_policy``;
    for the reply's subscription, the result backend's retry policy). The message
    names the URL, with its password masked, and what to check. A kombu
    ``OperationalError`` too, so callers that caught Celery's error still catch it.
    """


class StoreError(EntityError):
    """The state store failed; workers keep the message and retry with backoff."""


class DataRefused(StoreError):
    """The state store refused a value the data carried (text with NUL, invalid Unicode, a
    number out of range): retrying cannot help, so a worker counts it against the message
    that carried it and, if it persists, sets that message aside as poison."""


class FenceError(StoreError):
    """A commit was rejected by a version fence (stale entity) or an epoch fence (stale owner).

    ``duplicate``: the batch held a message whose id was already recorded as
    processed (a redelivery or a resend); nothing of the batch was committed.
    """

    def __init__(self, message: str, *, stale_epoch: bool = False, duplicate: bool = False) -> None:
        super().__init__(message)
        self.stale_epoch = stale_epoch
        self.duplicate = duplicate


__all__ = [
    "BadMessage",
    "BrokerError",
    "ConfigurationError",
    "DefinitionError",
    "EntityError",
    "FenceError",
    "MessageError",
    "MessageExpired",
    "ReplyTimeout",
    "SchemaError",
    "StateError",
    "StoreError",
    "UnknownEntityType",
    "UnknownHandler",
    "UpgradeError",
]
