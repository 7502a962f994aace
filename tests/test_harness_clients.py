"""Inside the test kit's harness every client helper, sync and async, runs in this process:
no connection is opened, no server started, nothing waits."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import entities
import entities.aio
from entities import Entity, handler
from entities.client import send
from entities.transports import BrokerTransport, Call, current_transport
from tests.fixture_entities import Boom, Counter
from workers import send_to_entity
from workers.inprocess import InProcessTransport
from workers.testing import Harness

pytestmark = pytest.mark.no_services

ROOT = Path(__file__).resolve().parent.parent

#: Every client helper inside a harness, in a fresh interpreter where any socket connection
#: and any process spawn is recorded (and a connection refused).
PROBE = """
import asyncio, json, os, socket, subprocess, time

connects, spawned = [], []
def refuse(self, address, *args):
    connects.append(repr(address))
    raise ConnectionRefusedError("this test allows no connection")
def refuse_ex(self, address):
    connects.append(repr(address))
    return 111
socket.socket.connect = refuse
socket.socket.connect_ex = refuse_ex
popen_init = subprocess.Popen.__init__
def record_spawn(self, args, *more, **kw):
    spawned.append(repr(args))
    popen_init(self, args, *more, **kw)
subprocess.Popen.__init__ = record_spawn

import entities
import entities.aio
from entities import Entity, handler
from entities.client import send
from entities.transports import Call, current_transport
from workers import send_to_entity
from workers.testing import Harness


class Tally(Entity, name="kit-tally"):
    count: int = 0

    @handler
    def add(self, n: int = 1) -> int:
        self.count += n
        return self.count

    @handler
    def refuse(self) -> None:
        raise ValueError("refused on purpose")


start = time.monotonic()
with Harness() as h:
    ref = Tally.ref("a")
    assert ref.add(5) == 5
    assert ref.add.delay(2).get(timeout=1) == 7
    assert send(Tally, "a", {"op": "add", "args": [1]}).get(timeout=1) == 8
    assert send_to_entity.delay("kit-tally", "a", {"op": "add"}).get(timeout=1) == 9
    assert send_to_entity.apply_async(("kit-tally", "a"), {"msg": {"op": "get"}}) is not None
    try:
        ref.refuse()
        raise AssertionError("the handler's error was not raised")
    except ValueError as exc:
        assert str(exc) == "refused on purpose"
    assert entities.read(Tally, "a").state == {"count": 9}
    assert entities.list_entities(Tally) == ["a"]
    when = entities.schedule_alarm(Tally, "a", "ping", 60)
    assert entities.list_alarms(Tally, "a") == [("ping", when)]
    entities.cancel_alarm(Tally, "a", "ping")
    assert entities.list_alarms(Tally, "a") == []
    entities.schedule_alarm(Tally, "a", "x", 5)
    entities.schedule_alarm(Tally, "a", "y", 10)
    entities.cancel_all_alarms(Tally, "a")
    assert entities.list_alarms(Tally, "a") == []
    assert entities.failed_alarms(Tally) == []
    assert entities.retry_alarm(Tally, "a", "x") is False
    entities.delete(Tally, "a")
    assert entities.read(Tally, "a") is None
    call = Call("kit-tally", "a", {"op": "add", "args": [3]})
    assert asyncio.run(current_transport().send_and_wait(call, 1.0)).reply() == 3

    async def twins():
        assert await Tally.ref("b").add.aio(2) == 2
        assert await entities.aio.send("kit-tally", "b", {"op": "add"}) == 3
        assert (await entities.aio.read(Tally, "b")).state == {"count": 3}
        assert await entities.aio.list_alarms(Tally, "b") == []
        await entities.aio.delete(Tally, "b")

    asyncio.run(twins())
print(json.dumps({
    "connects": connects,
    "spawned": spawned,
    "seconds": time.monotonic() - start,
    "home": os.path.exists(".entities"),
}))
"""


@pytest.mark.parametrize(
    "broker",
    [None, "redis://127.0.0.1:9/0"],
    ids=["the embedded default broker", "a broker on a closed port"],
)
def test_every_client_helper_runs_in_the_harness_without_a_broker(
    broker: str | None, tmp_path: Path
) -> None:
    """Given a harness and either the embedded default broker or an unreachable one, when
    every client helper is used, then each works, no connection is attempted, no
    redis-server is started, nothing is created in ./.entities, and it is quick."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTITIES_")}
    env["PYTHONPATH"] = str(ROOT)
    if broker is not None:
        env["ENTITIES_BROKER_URL"] = env["ENTITIES_RESULT_BACKEND"] = broker
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["connects"] == []
    assert seen["spawned"] == []
    assert seen["home"] is False
    assert seen["seconds"] < 5


def test_the_harness_is_the_transport_while_open_and_the_broker_after() -> None:
    """Given a harness, then the process's transport is its in-process one while it is open,
    and the broker's again once it is closed."""
    with Harness():
        assert isinstance(current_transport(), InProcessTransport)
    assert isinstance(current_transport(), BrokerTransport)


def test_in_the_plugin_fixture_helpers_open_no_socket(
    entity_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the pytest plugin's harness, when refs, send, delete and the task are used with
    every socket connection refused, then each works and errors keep their class."""

    def refuse(self: socket.socket, address: Any, *args: Any) -> None:
        raise AssertionError(f"a client helper connected to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert Counter.ref("p").increment(2) == 2
    assert Counter.ref("p").increment.delay(3).get(timeout=1) == 5
    assert send_to_entity.delay("counter", "p", {"op": "get"}).get(timeout=1) == 5
    assert send("counter", "p", {"op": "increment"}, task_id="t-1").get() == 6
    assert send("counter", "p", {"op": "increment"}, task_id="t-1").get() == 6  # a resend
    with pytest.raises(Boom):
        entity_harness.call("fragile", "f", "set_then_fail", 2)
    with pytest.raises(Boom):
        send("fragile", "f", {"op": "set_then_fail", "args": [2]}).get()
    with pytest.raises(entities.UnknownEntityType):
        send("no-such-type", "p", {"op": "get"}).get()
    with pytest.raises(entities.BadMessage):
        send("counter", "bad\x00id", {"op": "get"})
    assert entities.read(Counter, "p").state == {"count": 6}  # type: ignore[union-attr]
    entities.delete(Counter, "p")
    assert entities.read(Counter, "p") is None


def test_send_options_the_harness_cannot_honour_are_refused_by_name(
    entity_harness: Harness,
) -> None:
    """Given the harness, when a call asks for a countdown, then BadMessage names it (the
    harness applies every call when it is sent)."""
    with pytest.raises(entities.BadMessage, match="countdown"):
        send_to_entity.apply_async(("counter", "o", {"op": "get"}), countdown=5)


class KitTill(Entity, name="kit-till"):
    total: Decimal = Decimal("0")

    @handler
    def ring(self, amount: str) -> tuple[Decimal, int]:
        self.total += Decimal(amount)
        return self.total, 1


def test_a_reply_comes_back_as_json_brings_it_or_by_its_annotation(
    entity_harness: Harness,
) -> None:
    """Given the harness, then a reply is what the result backend's JSON gives a client; told
    the handler's return type (as a typed reference tells its result), it is decoded by it."""
    reply = send("counter", "j", {"op": "increment", "args": [1]}).get()
    assert reply == 1 and type(reply) is int
    settled = asyncio.run(current_transport().send_and_wait(Call("counter", "j", {"op": "get"}), 1))
    assert settled.reply() == 1
    raw = send(KitTill, "t", {"op": "ring", "args": ["1.10"]}).get()
    assert raw == [Decimal("1.10"), 1]  # kombu's JSON revives the Decimal; the tuple is a list
    typed = send(KitTill, "t", {"op": "ring", "args": ["1.10"]})
    typed = typed.describe("kit-till", "t", "ring", tuple[Decimal, int])
    assert typed.get() == (Decimal("2.20"), 1)
    assert KitTill.ref("t").ring("0.80") == (Decimal("3.00"), 1)  # a typed reference


async def _every_async_twin(aio: Any) -> None:
    ref = Counter.ref("x")
    assert await ref.increment.aio(5) == 5
    assert await aio.send("counter", "x", {"op": "increment", "args": [1]}) == 6
    snapshot = await aio.read(Counter, "x")
    assert snapshot is not None and snapshot.state["count"] == 6
    assert await aio.list_entities(Counter) == ["x"]
    when = await aio.schedule_alarm(Counter, "x", "ping", 60)
    assert await aio.list_alarms(Counter, "x") == [("ping", when)]
    await aio.cancel_alarm(Counter, "x", "ping")
    await aio.schedule_alarm(Counter, "x", "pong", 60)
    await aio.cancel_all_alarms(Counter, "x")
    assert await aio.list_alarms(Counter, "x") == []
    await aio.delete(Counter, "x")
    assert await aio.read(Counter, "x") is None


def test_every_async_twin_runs_in_the_harness(
    entity_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the harness, when every async twin of entities.aio and a reference's .aio are
    awaited with every socket connection refused, then each works in this process."""

    def refuse(self: socket.socket, address: Any, *args: Any) -> None:
        raise AssertionError(f"an async helper connected to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    asyncio.run(_every_async_twin(entities.aio))


def test_a_task_call_is_read_from_args_and_keywords_or_refused_by_name() -> None:
    """Given send_to_entity's arguments in either form, then the call is the same; given
    arguments it does not take, then BadMessage says what it takes."""
    msg = {"op": "get"}
    positional = Call.of_task(("counter", "a", msg, "strict"), None, "t", {})
    named = Call.of_task(
        ("counter",), {"entity_id": "a", "msg": msg, "durability": "strict"}, "t", {}
    )
    assert positional == named == Call("counter", "a", msg, "strict", "t", {})
    for args, kwargs in [(("counter", "a"), None), (("c", "a", msg), {"colour": "red"})]:
        with pytest.raises(entities.BadMessage, match="takes \\(entity_type, entity_id, msg"):
            Call.of_task(args, kwargs, None, {})
