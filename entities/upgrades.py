"""Schema versions of entity state: step-wise upgrades, and rewriting stored snapshots.

``upgrade(from_vsn, state)`` is called once per step: a snapshot stored at vsn
1 loaded by a class at vsn 3 passes through ``upgrade(1, s)`` then
``upgrade(2, s)``, so each step is written once and never has to know the
latest shape. A stored vsn newer than the class's is an error (old code must
not rewrite newer data). The upgraded state is written with the entity's next
change; :func:`rewrite_snapshots` writes every stored snapshot of a type now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from entities import registry
from entities.errors import UpgradeError
from entities.model import Entity
from entities.store import Snapshot, Store


def upgrade_state(cls: type[Entity], snapshot: Snapshot) -> dict[str, Any]:
    """Brings a stored state to the class's vsn, calling ``upgrade`` once per step (n -> n+1)."""
    target = cls.__entity_options__.vsn
    name = f"{snapshot.entity_type} {snapshot.entity_id!r}"
    if snapshot.vsn > target:
        raise UpgradeError(
            f"{name}: stored vsn {snapshot.vsn} is newer than class vsn {target}; "
            "deploy the newer code"
        )
    state = snapshot.state
    for vsn in range(snapshot.vsn, target):
        try:
            state = cls.upgrade(vsn, state)
        except Exception as exc:
            raise UpgradeError(
                f"{name}: upgrade from stored vsn {snapshot.vsn} to class vsn {target} failed "
                f"at step {vsn} -> {vsn + 1}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(state, dict):
            raise UpgradeError(f"{name}: upgrade from vsn {vsn} returned {type(state).__name__}")
    return state


Progress = Callable[[int, int], None]


def rewrite_snapshots(
    entity_type: str | type[Entity],
    store: Store | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> int:
    """Rewrites every stored snapshot of a type that is older than the class's vsn.

    Works in batches of ``batch_size`` ids. Each snapshot is replaced only if
    the stored row is still exactly the one read (:meth:`Store.rewrite_snapshot`):
    a snapshot changed meanwhile by a worker, or deleted and created again (which
    may bring its version number back), is skipped for this pass (its worker
    writes the current vsn with its change). ``progress(done, rewritten)`` is
    called after each batch. Returns how many snapshots were rewritten.
    """
    from entities.client import get_store

    cls = registry.lookup(registry.type_name(entity_type))
    store = store or get_store()
    name = cls.__entity_name__
    target = cls.__entity_options__.vsn
    done = rewritten = 0
    after: str | None = None
    while True:
        ids = store.list_ids(name, limit=batch_size, after=after)
        if not ids:
            break
        after = ids[-1]
        snapshots = store.load_many((name, i) for i in ids)
        for snapshot in snapshots.values():
            if snapshot.vsn == target:
                continue  # current; a newer vsn raises in upgrade_state
            obj = cls.from_state(snapshot.entity_id, upgrade_state(cls, snapshot))
            if store.rewrite_snapshot(snapshot, target, obj.encode_state()):
                rewritten += 1
        done += len(ids)
        if progress is not None:
            progress(done, rewritten)
    return rewritten
