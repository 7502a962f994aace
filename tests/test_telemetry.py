"""Telemetry: the subscriber API, spans, and the events the runtime emits."""

from __future__ import annotations

import pytest

from entities import telemetry
from tests.fixture_entities import Counter, Fragile


@pytest.fixture
def events():  # type: ignore[no-untyped-def]
    seen: list[telemetry.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    yield seen
    unsubscribe()


def names(events: list[telemetry.Event]) -> list[str]:
    return [e.name for e in events]


@pytest.mark.no_services
def test_subscribers_get_only_what_they_asked_for_until_they_unsubscribe() -> None:
    """Given a subscriber to one event, when several are emitted, then it sees that one,
    and after unsubscribing nothing."""
    seen: list[telemetry.Event] = []
    unsubscribe = telemetry.subscribe(seen.append, events=["b"])
    telemetry.emit("a", {"x": 1.0}, k=1)
    telemetry.emit("b", {"x": 2.0}, k=2)
    unsubscribe()
    telemetry.emit("b", {"x": 3.0}, k=3)
    assert seen == [telemetry.Event("b", {"x": 2.0}, {"k": 2})]


@pytest.mark.no_services
def test_a_span_reports_its_duration_or_its_exception() -> None:
    """Given a span, when its block succeeds or raises, then stop or exception is emitted
    with a duration, and the exception still propagates."""
    seen: list[telemetry.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    with telemetry.span("work", item=1) as meta:
        meta["extra"] = True
    with pytest.raises(ValueError), telemetry.span("work", item=2):
        raise ValueError("no")
    unsubscribe()
    assert names(seen) == ["work.start", "work.stop", "work.start", "work.exception"]
    assert seen[1].metadata == {"item": 1, "extra": True}
    assert seen[1].measurements["duration_s"] >= 0
    assert "ValueError" in seen[3].metadata["error"]


@pytest.mark.no_services
def test_a_failing_subscriber_never_disturbs_the_emitter() -> None:
    """Given a subscriber that raises, when an event is emitted, then the emitter goes on."""

    def broken(_: telemetry.Event) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = telemetry.subscribe(broken)
    try:
        telemetry.emit("anything")
    finally:
        unsubscribe()


@pytest.mark.no_services
def test_the_runtime_emits_load_activate_save_and_conflict_free_commits(events) -> None:  # type: ignore[no-untyped-def]
    """Given the in-process harness, when a new entity is incremented, then the events show
    the load, the activation, and the save of one entity with one message."""
    from workers.testing import Harness

    with Harness() as h:
        assert h.call(Counter, "a", "increment", 2) == 2
        with pytest.raises(Exception, match="refusing 3"):
            h.call(Fragile, "f", "set_then_fail", 3)
    seen = names(events)
    assert seen.index("storage.load.start") < seen.index("entity.activate")
    assert seen.index("entity.activate") < seen.index("storage.save.stop")
    activate = next(e for e in events if e.name == "entity.activate")
    assert activate.metadata["entity_type"] == "counter"
    assert activate.metadata["version"] == 0
    save = next(e for e in events if e.name == "storage.save.stop")
    assert save.metadata["entities"] == 1 and save.metadata["messages"] == 1
    saves = [e for e in events if e.name == "storage.save.stop"]
    # The failed handler wrote no state, only the record of its error (so a redelivery
    # gets that error instead of running again after later messages).
    assert [(e.metadata["entities"], e.metadata["messages"]) for e in saves] == [(1, 1), (0, 1)]
