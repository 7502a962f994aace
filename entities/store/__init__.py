"""State storage: one interface (:class:`Store`) and its SQL implementation."""

from entities.store.base import (
    Alarm,
    AlarmChange,
    AlarmOutcome,
    CommitBatch,
    DeadLetter,
    OutboxMessage,
    Processed,
    Snapshot,
    Store,
    Write,
)
from entities.store.sql import SQLStore, make_engine

__all__ = [
    "Alarm",
    "AlarmChange",
    "AlarmOutcome",
    "CommitBatch",
    "DeadLetter",
    "OutboxMessage",
    "Processed",
    "SQLStore",
    "Snapshot",
    "Store",
    "Write",
    "make_engine",
]
