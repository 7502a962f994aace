"""Alarm changes an entity made that are not committed yet, and what they mean for a firing.

A batch stages alarm changes per entity; a relaxed (``interval``/``on_stop``)
entity keeps them in its partition's deferred set until its flush. Invariant:
what a batch stages is what later messages see, so before the store is asked
whether an alarm scheduling is still current, the pending changes of its
entity are asked, newest first (this batch's, then the deferred ones):

- a pending schedule or cancel of the name means the stored scheduling is
  replaced or cancelled (each schedule becomes a new scheduling at its commit);
- a pending clear (a delete) means every stored alarm of the entity is gone;
- only when neither applies does the stored row decide.

A pending schedule that names its scheduling (an external change, see
:mod:`entities.alarm_ops`) is that scheduling, current with attempt 0, so a
firing of it dispatched from the direct write is not mistaken for a replaced one.

At the commit, the clear is applied before the changes made after it, so a
delete removes every alarm of the entity (staged, deferred or stored) while
alarms scheduled by later messages survive. Only the latest change of each
name is kept: applying it alone leaves the store as applying all would.
"""

from __future__ import annotations

import dataclasses

from entities.store import Alarm, AlarmChange, CommitBatch

Key = tuple[str, str]


@dataclasses.dataclass
class PendingAlarms:
    """One entity's uncommitted alarm changes: an optional clear, then the latest per name."""

    cleared: bool = False
    changes: dict[str, AlarmChange] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.cleared or bool(self.changes)

    def set(self, change: AlarmChange) -> None:
        """Records a schedule (``fire_at`` set) or cancel of one name, replacing an older one."""
        self.changes.pop(change.name, None)
        self.changes[change.name] = change

    def clear(self) -> None:
        """Records that every alarm of the entity is removed (a delete)."""
        self.cleared = True
        self.changes.clear()

    def then(self, later: PendingAlarms) -> None:
        """Appends ``later`` (changes made after these)."""
        if later.cleared:
            self.clear()
        for change in later.changes.values():
            self.set(change)

    def supersedes(self, name: str) -> bool:
        """True if the stored scheduling of ``name`` is no longer current once these commit."""
        return self.cleared or name in self.changes

    def current(self, name: str) -> Alarm | None:
        """The scheduling of ``name`` these leave (only meaningful if they supersede it):
        the latest schedule if it names its scheduling; None if cancelled, cleared or new."""
        change = self.changes.get(name)
        if change is None or change.fire_at is None or change.scheduling_id is None:
            return None
        return Alarm(
            change.entity_type,
            change.entity_id,
            name,
            change.fire_at,
            change.payload,
            change.scheduling_id,
        )

    def into(self, key: Key, batch: CommitBatch) -> None:
        """Adds these changes to ``batch`` (its clears apply before its changes)."""
        if self.cleared:
            batch.alarm_clears.append(key)
        batch.alarms.extend(self.changes.values())
