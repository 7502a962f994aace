"""PendingAlarms keeps only what matters of a sequence of alarm changes: committing the
merged changes (clears first, then the changes) leaves the alarms as applying every
change in order would, however the sequence is split between batches."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entities.store import AlarmChange, CommitBatch
from workers.pending import PendingAlarms

KEY = ("t", "e")
WHEN = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

# An op: ("set", name, seconds), ("cancel", name) or ("clear",).
ops = st.one_of(
    st.tuples(st.just("set"), st.sampled_from("abc"), st.integers(0, 3)),
    st.tuples(st.just("cancel"), st.sampled_from("abc")),
    st.tuples(st.just("clear")),
)


def apply_in_order(stored: dict[str, int], sequence: list[tuple]) -> dict[str, int]:  # type: ignore[type-arg]
    alarms = dict(stored)
    for op in sequence:
        if op[0] == "set":
            alarms[op[1]] = op[2]
        elif op[0] == "cancel":
            alarms.pop(op[1], None)
        else:
            alarms.clear()
    return alarms


def pending_of(sequence: list[tuple]) -> PendingAlarms:  # type: ignore[type-arg]
    pending = PendingAlarms()
    for op in sequence:
        if op[0] == "clear":
            pending.clear()
        else:
            when = WHEN + dt.timedelta(seconds=op[2]) if op[0] == "set" else None
            pending.set(AlarmChange(*KEY, op[1], when))
    return pending


def commit(stored: dict[str, int], pending: PendingAlarms) -> dict[str, int]:
    """What SQLStore.commit does with the batch's clears and changes, on a dict."""
    batch = CommitBatch(0, None)
    pending.into(KEY, batch)
    alarms = {} if KEY in batch.alarm_clears else dict(stored)
    for change in batch.alarms:
        if change.fire_at is None:
            alarms.pop(change.name, None)
        else:
            alarms[change.name] = int((change.fire_at - WHEN).total_seconds())
    return alarms


@pytest.mark.no_services
@given(
    stored=st.dictionaries(st.sampled_from("abc"), st.integers(0, 3)),
    sequence=st.lists(ops, max_size=12),
    split=st.integers(0, 12),
)
def test_merged_pending_changes_commit_as_the_sequence_applied_in_order(
    stored: dict[str, int],
    sequence: list[tuple],  # type: ignore[type-arg]
    split: int,
) -> None:
    """Given stored alarms and a sequence of changes split into deferred and staged parts,
    then the merged commit equals the sequence applied in order, and a name is
    superseded exactly when some change of the sequence touched it."""
    deferred, staged = pending_of(sequence[:split]), pending_of(sequence[split:])
    deferred.then(staged)
    assert commit(stored, deferred) == apply_in_order(stored, sequence)
    for name in "abc":
        touched = any(op[0] == "clear" or op[1] == name for op in sequence)
        assert deferred.supersedes(name) == touched
