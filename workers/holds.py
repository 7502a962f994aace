"""The owner's side of pause and resume (see :mod:`entities.control`).

Every fetch tells the runner whether its partition is paused and whether any
of its entities is paused or to be resumed; only then are their names read
(at most every ``REFRESH_S``). Messages of paused entities are held
with one script that appends them to the entity's held list unless already
there (a redelivered batch holds nothing twice). Resuming happens only
between batches, when every in-flight message is unprocessed: one script puts
the in-flight messages back at the head of the queue and the held ones ahead
of them, oldest first, so each entity's order is kept.
"""

from __future__ import annotations

import dataclasses
import time

import redis

from entities.routing import (
    held_list_key,
    held_set_key,
    inflight_key,
    lease_key,
    paused_key,
    queue_name,
    resume_set_key,
)
from workers.memory import Key

#: Seconds between reads of the control state while messages flow.
REFRESH_S = 0.25

# KEYS: held list. ARGV: raw messages, oldest first. Appends those not there yet.
_HOLD = """
for i, raw in ipairs(ARGV) do
  if not redis.call('LPOS', KEYS[1], raw) then redis.call('RPUSH', KEYS[1], raw) end
end
return 1
"""

# KEYS: queue, inflight, lease, held set, resume set, held list. ARGV: token, member.
_RESUME = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
local v = redis.call('LPOP', KEYS[2])
while v do
  redis.call('RPUSH', KEYS[1], v)
  v = redis.call('LPOP', KEYS[2])
end
v = redis.call('RPOP', KEYS[6])
while v do
  redis.call('RPUSH', KEYS[1], v)
  v = redis.call('RPOP', KEYS[6])
end
redis.call('SREM', KEYS[4], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[2])
return 1
"""


@dataclasses.dataclass
class Control:
    """A partition's pause state as the owner last read it."""

    paused: bool = False
    held: frozenset[Key] = frozenset()
    resume: tuple[str, ...] = ()
    read_at: float = 0.0


def _member_key(member: bytes | str) -> Key:
    text = member.decode() if isinstance(member, bytes) else member
    entity_type, _, entity_id = text.partition("\x00")
    return entity_type, entity_id


class Holds:
    """Reads and applies one partition's pause state."""

    def __init__(self, client: redis.Redis, partition: int) -> None:
        self.client = client
        self.partition = partition
        self.control = Control()
        self._hold = client.register_script(_HOLD)
        self._resume = client.register_script(_RESUME)

    def observe(self, paused: bool, holds: bool) -> Control:
        """The control state, given what the last fetch saw of it."""
        if not holds:
            self.control = Control(paused)  # read_at 0: names are read as soon as some appear
        elif self.refresh().paused != paused:
            self.control = dataclasses.replace(self.control, paused=paused)
        return self.control

    def refresh(self, force: bool = False) -> Control:
        """The control state, re-read if older than REFRESH_S (or ``force``)."""
        now = time.monotonic()
        if force or now - self.control.read_at >= REFRESH_S:
            p = self.partition
            with self.client.pipeline(transaction=False) as pipe:
                pipe.exists(paused_key(p))
                pipe.smembers(held_set_key(p))
                pipe.smembers(resume_set_key(p))
                paused, held, resume = pipe.execute()
            self.control = Control(
                bool(paused),
                frozenset(_member_key(m) for m in held),
                tuple(m.decode() if isinstance(m, bytes) else m for m in resume),
                now,
            )
        return self.control

    def hold(self, raws_by_entity: dict[Key, list[bytes]]) -> None:
        """Appends each paused entity's messages to its held list, in order, once."""
        for (entity_type, entity_id), raws in raws_by_entity.items():
            member = f"{entity_type}\x00{entity_id}"
            self._hold(keys=[held_list_key(self.partition, member)], args=raws)

    def resume(self, token: str) -> bool:
        """Resumes every entity asked for; call only with nothing applied-but-unacked.

        Returns False if the lease is no longer ours.
        """
        p = self.partition
        for member in self.control.resume:
            done = self._resume(
                keys=[
                    queue_name(p),
                    inflight_key(p),
                    lease_key(p),
                    held_set_key(p),
                    resume_set_key(p),
                    held_list_key(p, member),
                ],
                args=[token, member],
            )
            if int(done) < 0:
                return False
        self.refresh(force=True)
        return True
