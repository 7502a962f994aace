"""The client helpers through a real worker: entity refs, read, list_entities and delete."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from celery.result import AsyncResult

from entities import (
    BadMessage,
    Entity,
    UnknownHandler,
    delete,
    handler,
    list_alarms,
    list_entities,
    read,
    schedule_alarm,
)
from tests.delivery import REPLY_TIMEOUT_S, call, send
from tests.fixture_entities import Counter


def test_a_ref_call_sends_and_returns_the_committed_reply(workers) -> None:  # type: ignore[no-untyped-def]
    """Given Counter.ref(id), when increment(5) is called, then it returns 5, committed."""
    workers.start(1)
    assert Counter.ref("user-1").increment(5) == 5
    assert Counter.ref("user-1").increment(amount=2) == 7
    assert Counter.ref("user-1").get() == 7
    assert read("counter", "user-1").state == {"count": 7}


def test_a_ref_delay_returns_the_async_result(workers) -> None:  # type: ignore[no-untyped-def]
    """Given Counter.ref(id), when increment.delay(5) is called, then it returns an
    AsyncResult whose reply is the new count."""
    pending = Counter.ref("user-2").increment.delay(5)
    assert isinstance(pending, AsyncResult)
    workers.start(1)
    assert pending.get(timeout=REPLY_TIMEOUT_S) == 5


def test_a_ref_refuses_unknown_handlers_and_bad_ids_before_sending() -> None:
    """Given Counter, then ref("") is BadMessage and ref(id).nope is UnknownHandler, locally."""
    with pytest.raises(BadMessage):
        Counter.ref("")
    with pytest.raises(UnknownHandler, match="nope"):
        Counter.ref("a").nope  # noqa: B018
    with pytest.raises(AttributeError):
        Counter.ref("a")._private  # noqa: B018


def test_read_gives_the_last_committed_snapshot(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a counter incremented twice, then read() gives its state, version, vsn and an
    aware update time; by type name or by class; an absent entity reads as None."""
    workers.start(1)
    started = dt.datetime.now(dt.UTC)
    call("counter", "r", "increment", 1)
    call("counter", "r", "increment", 1)
    snapshot = read("counter", "r")
    assert snapshot is not None
    assert (snapshot.state, snapshot.version, snapshot.vsn) == ({"count": 2}, 2, 1)
    assert snapshot.updated_at.tzinfo is not None
    assert snapshot.updated_at >= started - dt.timedelta(seconds=5)
    assert read(Counter, "r") == snapshot
    assert read("counter", "never") is None
    with pytest.raises(BadMessage):
        read("counter", "nul\x00")


def test_list_entities_orders_limits_and_pages(workers) -> None:  # type: ignore[no-untyped-def]
    """Given twelve counters created in random order (and a fragile), then list_entities
    gives the counters' ids sorted, at most limit, after the given id."""
    workers.start(1)
    ids = [f"id-{n:02d}" for n in range(12)]
    shuffled = random.sample(ids, len(ids))
    for pending in [send("counter", eid, "increment") for eid in shuffled]:
        pending.get(timeout=REPLY_TIMEOUT_S)
    call("fragile", "id-99", "set", 1)
    assert list_entities("counter") == ids
    assert list_entities(Counter, limit=5) == ids[:5]
    assert list_entities("counter", limit=5, after="id-04") == ids[5:10]
    assert list_entities("counter", after="id-11") == []
    pages, after = [], None
    while page := list_entities("counter", limit=5, after=after):
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [eid for page in pages for eid in page] == ids
    with pytest.raises(ValueError):
        list_entities("counter", limit=0)


def test_delete_removes_state_and_alarms_and_the_next_message_starts_fresh(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a counter at 3 with an alarm, when deleted, then its state and alarms are gone,
    it is no longer listed, and its next increment replies 1."""
    workers.start(1)
    assert Counter.ref("gone").increment(3) == 3
    schedule_alarm("counter", "gone", "reminder", dt.timedelta(hours=1))
    assert [name for name, _ in list_alarms("counter", "gone")] == ["reminder"]
    delete("counter", "gone", timeout=REPLY_TIMEOUT_S)
    assert read("counter", "gone") is None
    assert list_alarms("counter", "gone") == []
    assert "gone" not in list_entities("counter")
    assert Counter.ref("gone").increment(1) == 1
    assert read("counter", "gone").version == 1


def test_delete_is_ordered_with_the_entitys_queued_messages(workers) -> None:  # type: ignore[no-untyped-def]
    """Given increments queued before and after a delete, then the ones before see 1..3 and
    the ones after start again from the defaults."""
    before = [send("counter", "q", "increment") for _ in range(3)]
    from entities.client import send as client_send
    from entities.messages import OP_DELETE

    deletion = client_send("counter", "q", {"op": OP_DELETE})
    after = [send("counter", "q", "increment") for _ in range(2)]
    workers.start(1)
    assert [r.get(timeout=REPLY_TIMEOUT_S) for r in before] == [1, 2, 3]
    assert deletion.get(timeout=REPLY_TIMEOUT_S) is None
    assert [r.get(timeout=REPLY_TIMEOUT_S) for r in after] == [1, 2]
    assert read("counter", "q").state == {"count": 2}


def test_deleting_an_entity_that_never_existed_is_fine(workers) -> None:  # type: ignore[no-untyped-def]
    """Given no counter "nobody", when it is deleted, then nothing fails and nothing is stored."""
    workers.start(1)
    delete(Counter, "nobody", timeout=REPLY_TIMEOUT_S)
    assert read("counter", "nobody") is None


class Shadowing(Entity, name="test_client_shadowing"):
    """Handlers named like what a client object might hold for itself."""

    reads: int = 0

    @handler
    def read(self) -> int:
        self.reads += 1
        return self.reads

    @handler
    def timeout(self) -> str:
        return "handler"


@pytest.mark.no_services
def test_a_ref_exposes_every_handler_even_ones_named_like_client_attributes() -> None:
    """Given handlers named read and timeout, when a ref is made, then both are handler calls."""
    from entities.refs import HandlerRef

    ref = Shadowing.ref("x")
    assert isinstance(ref.read, HandlerRef)
    assert isinstance(ref.timeout, HandlerRef)


@pytest.mark.no_services
def test_a_client_skips_an_entity_module_it_cannot_import_with_a_warning(caplog) -> None:  # type: ignore[no-untyped-def]
    """Given ENTITIES_MODULES naming a module this client cannot import, when a client
    helper first runs, then it logs which module and why, and goes on (sending works; only
    that module's exceptions come back as classes Celery makes up)."""
    from entities import registry
    from entities.settings import configure, get_settings

    before = get_settings()
    try:
        configure(before.replace(modules=("tests.no_such_entities",)))
        with caplog.at_level("WARNING", logger="entities.registry"):
            registry.ensure_modules()
        assert "tests.no_such_entities" in caplog.text
    finally:
        configure(before)
        registry.ensure_modules()
