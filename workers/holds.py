"""The owner's side of pause and resume (see :mod:`entities.control`).

Every fetch tells the runner whether its partition is paused and whether any
of its entities is paused or to be resumed; only then are their names read
(at most every ``REFRESH_S``). Messages of paused entities are held with one
script per entity that appends them, in order, to the entity's held list.

Invariants, each kept inside one script so no interleaving breaks it:

- holding is O(1) per message and holds nothing twice: the SHA-1 of every
  held message is kept in a set beside the list, so a redelivered batch (its
  owner died between the hold and the acknowledgement) finds its messages
  there and appends none of them again;
- only the lease holder holds or resumes: both scripts check the lease token,
  so a stale owner cannot re-hold a message another owner already released;
- a resume never undoes a later pause: the owner resumes an entity only if it
  is still in the resume set, which every pause empties of it atomically;
- resuming keeps each entity's order and loses nothing: it happens only
  between batches, when every in-flight message is unprocessed; the in-flight
  messages go back at the head of the queue and the held ones ahead of them,
  oldest first, each once (a held message still in flight goes back once, from
  the held list).
"""

from __future__ import annotations

import dataclasses
import time

import redis

from entities.routing import (
    entity_key,
    held_list_key,
    held_seen_key,
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

# KEYS: lease, held list, seen set. ARGV: token, raw messages oldest first. Appends those
# not held yet; returns how many, or -1 if the lease is not ours. A held list left by a
# version without the seen set gets its set built once.
_HOLD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('LLEN', KEYS[2]) > 0 then
  for _, raw in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    redis.call('SADD', KEYS[3], redis.sha1hex(raw))
  end
end
local added = 0
for i = 2, #ARGV do
  if redis.call('SADD', KEYS[3], redis.sha1hex(ARGV[i])) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    added = added + 1
  end
end
return added
"""

# KEYS: queue, inflight, lease, held set, resume set, then per member its held list and
# seen set. ARGV: token, members. -1 if the lease is not ours. Else resumes each member
# still in the resume set (one a later pause took out of it stays paused) and returns how
# many: the in-flight messages go back to the head of the queue, except those held by a
# member being resumed, then each such member's held messages ahead of them.
_RESUME = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
local members = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[5], ARGV[i]) == 1 then
    members[#members + 1] = {ARGV[i], KEYS[4 + 2 * (i - 1)], KEYS[5 + 2 * (i - 1)]}
  end
end
if #members == 0 then return 0 end
local v = redis.call('LPOP', KEYS[2])
while v do
  local digest = redis.sha1hex(v)
  local held = false
  for _, m in ipairs(members) do
    if redis.call('SISMEMBER', m[3], digest) == 1 then held = true end
  end
  if not held then redis.call('RPUSH', KEYS[1], v) end
  v = redis.call('LPOP', KEYS[2])
end
for _, m in ipairs(members) do
  v = redis.call('RPOP', m[2])
  while v do
    redis.call('RPUSH', KEYS[1], v)
    v = redis.call('RPOP', m[2])
  end
  redis.call('DEL', m[3])
  redis.call('SREM', KEYS[4], m[1])
  redis.call('SREM', KEYS[5], m[1])
end
return #members
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

    def hold(self, raws_by_entity: dict[Key, list[bytes]], token: str) -> bool:
        """Appends each paused entity's messages to its held list, in order, once.

        Returns False (holding nothing more) if the lease is no longer ``token``'s.
        """
        p = self.partition
        for (entity_type, entity_id), raws in raws_by_entity.items():
            member = entity_key(entity_type, entity_id)
            added = self._hold(
                keys=[lease_key(p), held_list_key(p, member), held_seen_key(p, member)],
                args=[token, *raws],
            )
            if int(added) < 0:
                return False
        return True

    def resume(self, token: str) -> bool:
        """Resumes every entity asked for that no later pause kept paused; call only with
        nothing applied-but-unacked.

        Returns False if the lease is no longer ours.
        """
        p = self.partition
        members = self.control.resume
        if members:
            lists = [k for m in members for k in (held_list_key(p, m), held_seen_key(p, m))]
            done = self._resume(
                keys=[
                    queue_name(p),
                    inflight_key(p),
                    lease_key(p),
                    held_set_key(p),
                    resume_set_key(p),
                    *lists,
                ],
                args=[token, *members],
            )
            if int(done) < 0:
                return False
        self.refresh(force=True)
        return True
