"""Routing: which partition queue serves an entity, by a stable hash of (type, id).

The hash is BLAKE2b of the type and id, so every process, host and Python
version agrees; Python's ``hash()`` is never used. Every Redis key of one
partition carries the hash tag ``{pN}`` so a partition's keys share one Redis
Cluster slot and its scripts stay single-slot.
"""

from __future__ import annotations

import hashlib

#: The Celery task name of send_to_entity; other-language clients send by it.
TASK_NAME = "entities.send_to_entity"

#: The prefix of every Redis key this project owns besides the partition queues.
KEY_PREFIX = "entities"

#: Celery's default queue, where a client without our router publishes; one worker at
#: a time forwards it to the partitions (workers.forwarder), no Celery consumer reads it.
DEFAULT_QUEUE = "celery"

#: The queue of this app's other tasks (alarm dispatch), read by the workers' Celery
#: consumer; it is the app's ``task_default_queue``.
TASKS_QUEUE = f"{KEY_PREFIX}.tasks"

#: The Redis key whose value is the token of the worker forwarding the default queue.
FORWARDER_LEASE_KEY = f"{KEY_PREFIX}.default.lease"

#: The Redis list of default-queue messages fetched but not yet forwarded.
FORWARDER_INFLIGHT_KEY = f"{KEY_PREFIX}.default.inflight"


def partition_for(entity_type: str, entity_id: str, partitions: int) -> int:
    """The partition (0..partitions-1) that serves ``(entity_type, entity_id)``."""
    digest = hashlib.blake2b(
        entity_type.encode() + b"\x00" + entity_id.encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % partitions


def queue_name(partition: int) -> str:
    """The Celery queue (a Redis list) of ``partition``."""
    return f"{KEY_PREFIX}.{{p{partition}}}"


def inflight_key(partition: int) -> str:
    """The Redis list holding the partition's fetched but not yet acknowledged messages."""
    return f"{queue_name(partition)}.inflight"


def links_key(partition: int) -> str:
    """The Redis list of the partition's recorded callbacks not yet fired (workers.links)."""
    return f"{queue_name(partition)}.links"


def link_marker_key(partition: int, task_id: str) -> str:
    """The Redis key whose existence says a message's callbacks were recorded."""
    return f"{queue_name(partition)}.linked:{task_id}"


def lease_key(partition: int) -> str:
    """The Redis key whose value is the token of the partition's current owner."""
    return f"{queue_name(partition)}.lease"


def paused_key(partition: int) -> str:
    """The Redis flag that pauses a whole partition while it exists."""
    return f"{queue_name(partition)}.paused"


def held_set_key(partition: int) -> str:
    """The Redis set of paused entities (``entity_key`` members) of a partition."""
    return f"{queue_name(partition)}.held"


def resume_set_key(partition: int) -> str:
    """The Redis set of paused entities whose owner should resume them."""
    return f"{queue_name(partition)}.resume"


def entity_key(entity_type: str, entity_id: str) -> str:
    """One entity as a Redis set member (ids may hold any character but NUL)."""
    return f"{entity_type}\x00{entity_id}"


def held_list_key(partition: int, member: str) -> str:
    """The Redis list of a paused entity's held messages, oldest first."""
    return f"{held_set_key(partition)}:{member}"


def held_seen_key(partition: int, member: str) -> str:
    """The Redis set of the SHA-1 digests of the messages in a paused entity's held list
    (its own prefix: no member's held list can share its name)."""
    return f"{queue_name(partition)}.heldseen:{member}"
