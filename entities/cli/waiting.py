"""Counting the messages that wait for one entity in Redis, by reading its partition's lists."""

from __future__ import annotations

from typing import TypedDict

import redis

from entities.messages import parse_envelope
from entities.redis_client import redis_from_url
from entities.routing import (
    entity_key,
    held_list_key,
    inflight_key,
    partition_for,
    queue_name,
)
from entities.settings import get_settings

#: Entries read per round trip while scanning a queue.
CHUNK = 1000


class Waiting(TypedDict):
    """Messages addressed to one entity: queued, in flight, held by a pause."""

    partition: int
    queued: int
    inflight: int
    held: int
    scanned: int  # queue and in-flight entries read
    complete: bool  # False if the scan stopped at its bound


def waiting_for(entity_type: str, entity_id: str, scan: int = 10_000) -> Waiting:
    """Counts the messages to (``entity_type``, ``entity_id``), reading at most ``scan`` entries.

    Read without a lock: messages move while it counts, so the answer is a
    snapshot (a message may be counted in the queue and again in flight).
    """
    settings = get_settings()
    partition = partition_for(entity_type, entity_id, settings.partitions)
    r = redis_from_url(settings.broker_url)
    try:
        budget = scan
        counts: dict[str, int] = {}
        complete = True
        for label, key in (
            ("inflight", inflight_key(partition)),
            ("queued", queue_name(partition)),
        ):
            found, read, done = _count(
                r, key, (entity_type, entity_id), budget, settings.max_message_bytes
            )
            counts[label] = found
            budget -= read
            complete = complete and done
        held = int(r.llen(held_list_key(partition, entity_key(entity_type, entity_id))))
    finally:
        r.close()
    return Waiting(
        partition=partition,
        queued=counts["queued"],
        inflight=counts["inflight"],
        held=held,
        scanned=scan - budget,
        complete=complete,
    )


def _count(
    r: redis.Redis, key: str, wanted: tuple[str, str], budget: int, max_bytes: int
) -> tuple[int, int, bool]:
    """(matches, entries read, whole list read) for one Redis list."""
    found = read = 0
    start = 0
    while read < budget:
        chunk = r.lrange(key, start, start + min(CHUNK, budget - read) - 1)
        if not chunk:
            return found, read, True
        for raw in chunk:
            data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
            if parse_envelope(data, max_bytes).key == wanted:
                found += 1
        read += len(chunk)
        start += len(chunk)
    return found, read, int(r.llen(key)) <= read
