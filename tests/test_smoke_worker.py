"""Given a worker, when a counter is incremented, then the reply is the committed count."""

from __future__ import annotations

from entities import read


def test_reply_is_a_commit_receipt(workers) -> None:  # type: ignore[no-untyped-def]
    from workers import send_to_entity

    workers.start(1)
    result = send_to_entity.delay("counter", "user-123", {"op": "increment", "args": [5]})
    assert result.get(timeout=10) == 5
    snapshot = read("counter", "user-123")
    assert snapshot is not None
    assert snapshot.state == {"count": 5}
    assert snapshot.version == 1
