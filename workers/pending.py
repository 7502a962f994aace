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

At the commit, the clear is applied before the changes made after it, so a
delete removes every alarm of the entity (staged, deferred or stored) while
alarms scheduled by later messages survive. Only the latest change of each
name is kept: applying it alone leaves the store as applying all would.
"""

from __future__ import annotations

import dataclasses

from entities.store import AlarmChange, CommitBatch

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

    def into(self, key: Key, batch: CommitBatch) -> None:
        """Adds these changes to ``batch`` (its clears apply before its changes)."""
        if self.cleared:
            batch.alarm_clears.append(key)
        batch.alarms.extend(self.changes.values())
