"""Pausing and resuming an entity or a whole partition.

A paused partition is not read: its messages wait in its queue. A paused
entity's messages are taken out of the partition in order and held in a list
of their own, so the rest of the partition keeps flowing. Resuming puts the
held messages back at the head of the queue, oldest first, ahead of anything
newer for that entity, so per-entity order is kept. Nothing is lost either
way: held messages live in Redis like queued ones.

Pausing takes effect at the owner's next batch (well under a second); the
owner carries out an entity's resume between batches, so ``resume_entity``
waits for it (``wait_s``) unless told not to. The last call wins: a pause
takes the entity out of the set of entities to resume in the same atomic step
that marks it paused, and the owner resumes only what is still in that set, so
pause, resume, pause in quick succession leaves the entity paused.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from entities import registry
from entities.errors import ConfigurationError, EntityError
from entities.messages import validate_id
from entities.redis_client import redis_from_url
from entities.routing import (
    entity_key,
    held_list_key,
    held_set_key,
    partition_for,
    paused_key,
    resume_set_key,
)
from entities.settings import get_settings

if TYPE_CHECKING:
    import redis

    from entities.model import Entity


# KEYS: held set, resume set. ARGV: member. Asks for a resume only if the entity is paused.
_ASK_RESUME = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


@dataclasses.dataclass(frozen=True)
class Paused:
    """What is paused now: partitions, and entities with how many messages they hold."""

    partitions: list[int]
    entities: dict[tuple[str, str], int]


def _redis() -> redis.Redis:
    from entities.transport import ensure_broker

    settings = get_settings()
    ensure_broker(settings)  # the embedded default may not be running yet
    return redis_from_url(settings.broker_url)


def _partition(partition: int) -> int:
    count = get_settings().partitions
    if not 0 <= partition < count:
        raise ConfigurationError(f"partition must be 0..{count - 1}, got {partition}")
    return partition


def _where(entity_type: str | type[Entity], entity_id: str) -> tuple[int, str]:
    name = registry.type_name(entity_type)
    validate_id("entity id", entity_id)
    return partition_for(name, entity_id, get_settings().partitions), entity_key(name, entity_id)


def pause_partition(partition: int) -> None:
    """Stops the owner from reading ``partition`` until it is resumed."""
    _redis().set(paused_key(_partition(partition)), "1")


def resume_partition(partition: int) -> None:
    """Lets the owner read ``partition`` again, from where it stopped."""
    _redis().delete(paused_key(_partition(partition)))


def pause_entity(entity_type: str | type[Entity], entity_id: str) -> None:
    """Holds every message to one entity, in order, until it is resumed."""
    partition, member = _where(entity_type, entity_id)
    r = _redis()
    with r.pipeline() as pipe:
        pipe.srem(resume_set_key(partition), member)
        pipe.sadd(held_set_key(partition), member)
        pipe.execute()


def resume_entity(
    entity_type: str | type[Entity], entity_id: str, wait_s: float | None = 10.0
) -> None:
    """Lets an entity's held messages flow again, oldest first, then new ones.

    A pause of the same entity made after this call wins over it. Waits up to
    ``wait_s`` seconds for the partition's owner to carry it out (``None``: don't
    wait); raises EntityError if no owner did in time.
    """
    partition, member = _where(entity_type, entity_id)
    r = _redis()
    if not r.eval(_ASK_RESUME, 2, held_set_key(partition), resume_set_key(partition), member):
        return  # not paused
    if wait_s is None:
        return
    deadline = time.monotonic() + wait_s
    # Done when the owner resumed it, or a later pause withdrew the request.
    while r.sismember(resume_set_key(partition), member):
        if time.monotonic() > deadline:
            raise EntityError(
                f"no worker resumed {registry.type_name(entity_type)} {entity_id!r} within "
                f"{wait_s}s; it will resume when partition {partition} has an owner"
            )
        time.sleep(0.05)


def paused() -> Paused:
    """The paused partitions and entities (with their held message counts)."""
    r = _redis()
    count = get_settings().partitions
    with r.pipeline() as pipe:
        for p in range(count):
            pipe.exists(paused_key(p))
            pipe.smembers(held_set_key(p))
        flags = pipe.execute()
    partitions = [p for p in range(count) if flags[2 * p]]
    entities: dict[tuple[str, str], int] = {}
    for p in range(count):
        for raw in flags[2 * p + 1]:
            member = raw.decode() if isinstance(raw, bytes) else raw
            entity_type, _, entity_id = member.partition("\x00")
            entities[(entity_type, entity_id)] = int(r.llen(held_list_key(p, member)))
    return Paused(partitions, entities)
