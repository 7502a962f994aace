"""Bulk rewrite of stored snapshots to the current vsn, in fenced batches."""

from __future__ import annotations

from typing import Any

import pytest

from entities import Entity, UpgradeError, handler
from entities.store import CommitBatch, Write
from entities.upgrades import rewrite_snapshots


class Tagged(Entity, name="test_rewrite_tagged", vsn=3):
    label: str = ""
    tags: list[str] | None = None

    @classmethod
    def upgrade(cls, from_vsn: int, state: dict[str, Any]) -> dict[str, Any]:
        if from_vsn == 1:
            return {"label": state["title"]}
        if from_vsn == 2:
            return {**state, "tags": []}
        raise AssertionError(from_vsn)

    @handler
    def get(self) -> str:
        return self.label


def put(store, entity_id: str, vsn: int, state: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    store.commit(
        CommitBatch(-1, None, writes=[Write(Tagged.__entity_name__, entity_id, 0, vsn, state)])
    )


def test_every_old_snapshot_is_rewritten_step_by_step_with_progress(store) -> None:  # type: ignore[no-untyped-def]
    """Given snapshots at vsn 1, 2 and 3, when the type is rewritten in batches of 2, then
    every snapshot is at vsn 3 in the upgraded shape, and progress was reported per batch."""
    for i in range(5):
        put(store, f"v1-{i}", 1, {"title": f"t{i}"})
    put(store, "v2", 2, {"label": "two"})
    put(store, "v3", 3, {"label": "three", "tags": ["x"]})
    seen: list[tuple[int, int]] = []
    rewritten = rewrite_snapshots(Tagged, store, batch_size=2, progress=lambda *a: seen.append(a))
    assert rewritten == 6
    assert seen == [(2, 2), (4, 4), (6, 6), (7, 6)]
    for i in range(5):
        snapshot = store.load(Tagged.__entity_name__, f"v1-{i}")
        assert (snapshot.vsn, snapshot.version) == (3, 2)
        assert snapshot.state == {"label": f"t{i}", "tags": []}
    assert store.load(Tagged.__entity_name__, "v3").state == {"label": "three", "tags": ["x"]}
    assert store.load(Tagged.__entity_name__, "v3").version == 1
    assert rewrite_snapshots(Tagged, store) == 0  # idempotent


def test_a_newer_stored_vsn_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    """Given a snapshot newer than the class, when rewriting, then UpgradeError says so."""
    put(store, "future", 4, {"label": "?"})
    with pytest.raises(UpgradeError, match="stored vsn 4 is newer than class vsn 3"):
        rewrite_snapshots(Tagged, store)


class _RecreatedAfterRead:
    """The store, except that each entity read is deleted and created again (its version
    starting again at 1) as ``state`` at ``vsn`` before the reader can write it back."""

    def __init__(self, store: Any, vsn: int, state: dict[str, Any]) -> None:
        self._store, self._vsn, self._state = store, vsn, state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def load_many(self, keys: Any) -> Any:
        found = self._store.load_many(keys)
        for (entity_type, entity_id), old in found.items():
            gone = Write(entity_type, entity_id, old.version, old.vsn, None)
            again = Write(entity_type, entity_id, 0, self._vsn, self._state)
            self._store.commit(CommitBatch(-1, None, writes=[gone]))
            self._store.commit(CommitBatch(-1, None, writes=[again]))
        return found


@pytest.mark.parametrize("vsn", [1, 3], ids=["recreated-by-old-code", "recreated-by-new-code"])
def test_a_delete_and_re_create_between_read_and_write_is_not_overwritten(
    store,  # type: ignore[no-untyped-def]
    vsn: int,
) -> None:
    """Given an old snapshot, when it is deleted and created again (at version 1 once
    more) after the rewrite read it, then the rewrite leaves the new entity as it is."""
    put(store, "e", 1, {"title": "old"})
    new = {"title": "new"} if vsn == 1 else {"label": "new", "tags": ["n"]}
    assert rewrite_snapshots(Tagged, _RecreatedAfterRead(store, vsn, new)) == 0
    snapshot = store.load(Tagged.__entity_name__, "e")
    assert (snapshot.version, snapshot.vsn, snapshot.state) == (1, vsn, new)
