"""Durable entities for Python, on Celery, Redis and Postgres.

Define an entity by subclassing :class:`Entity`; send it messages with
``workers.send_to_entity.delay(type, id, msg)`` or ``MyEntity.ref(id).op(...)``.
"""

from entities import aio as aio  # the async twins (entities.aio.send ...), not in __all__
from entities.client import (
    cancel_alarm,
    cancel_all_alarms,
    delete,
    failed_alarms,
    list_alarms,
    list_entities,
    read,
    retry_alarm,
    schedule_alarm,
)
from entities.errors import (
    BadMessage,
    BrokerError,
    ConfigurationError,
    DefinitionError,
    EntityError,
    FenceError,
    MessageError,
    MessageExpired,
    ReplyTimeout,
    SchemaError,
    StateError,
    StoreError,
    UnknownEntityType,
    UnknownHandler,
    UpgradeError,
)
from entities.inspect import ClusterStatus, PartitionStatus, WorkerStatus, cluster_status
from entities.model import Entity, field, handler
from entities.results import EntityResult
from entities.sends import SendFailure
from entities.settings import Settings, configure, get_settings
from entities.store import Alarm, Snapshot

__all__ = [
    # defining entities
    "Entity",
    "field",
    "handler",
    "SendFailure",
    # sending and replies (async twins: entities.aio)
    "EntityResult",
    # outside the queue
    "cancel_alarm",
    "cancel_all_alarms",
    "delete",
    "list_alarms",
    "list_entities",
    "read",
    "schedule_alarm",
    "failed_alarms",
    "retry_alarm",
    "Alarm",
    "Snapshot",
    # operating the cluster
    "cluster_status",
    "ClusterStatus",
    "PartitionStatus",
    "WorkerStatus",
    # settings
    "Settings",
    "configure",
    "get_settings",
    # errors
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
