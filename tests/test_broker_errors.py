"""An unreachable broker at send is entities.BrokerError, after the publish retries, on every
send path, naming the broker without its password; and kombu's OperationalError still catches
it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from entities.broker_errors import (
    masked_url,
    publish_retrying,
    publish_retrying_async,
    reaching,
)
from entities.errors import BrokerError

ROOT = Path(__file__).resolve().parent.parent

#: A closed port: nothing listens on 9 (discard), so every connection is refused at once.
CLOSED = "redis://:s3cret-pw@127.0.0.1:9/0"

#: Runs each send path against the closed port with short retry policies, and reports what
#: each raised, how long it took and how many LPUSHes the direct path tried.
PROBE = """
import asyncio, json, sys, time
import kombu.exceptions, redis
import entities
import entities.aio
from entities.client import send
from entities.transport import client_app
from tests.fixture_entities import Counter
from workers import send_to_entity

attempts = []
lpush = redis.Redis.lpush
def counting_lpush(self, *args):
    attempts.append(args[0])
    return lpush(self, *args)
redis.Redis.lpush = counting_lpush

policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.05}
for app in {client_app(), send_to_entity.app}:
    app.conf.task_publish_retry_policy = policy
    app.conf.result_backend_transport_options = {"retry_policy": policy}

paths = {
    "ref() call": lambda: Counter.ref("a").increment(1),
    "ref().delay": lambda: Counter.ref("a").increment.delay(1),
    "send, direct LPUSH": lambda: send("counter", "a", {"op": "get"}, ignore_result=True),
    "send_to_entity.delay": lambda: send_to_entity.delay("counter", "a", {"op": "get"}),
    "Celery's publish": lambda: send_to_entity.apply_async(
        ("counter", "a"), {"msg": {"op": "get"}}, ignore_result=True
    ),
    "entities.delete": lambda: entities.delete("counter", "a"),
    "schedule_alarm": lambda: entities.schedule_alarm("counter", "a", "x", 60),
    "ref().aio": lambda: asyncio.run(Counter.ref("a").increment.aio(1)),
    "entities.aio.send": lambda: asyncio.run(entities.aio.send("counter", "a", {"op": "get"})),
}
report = {}
for name, fn in paths.items():
    attempts.clear()
    start = time.monotonic()
    try:
        fn()
        report[name] = {"raised": None}
    except Exception as exc:
        report[name] = {
            "raised": type(exc).__name__,
            "operational": isinstance(exc, kombu.exceptions.OperationalError),
            "entity_error": isinstance(exc, entities.EntityError),
            "message": str(exc),
        }
    report[name]["seconds"] = time.monotonic() - start
    report[name]["lpush"] = len(attempts)
print(json.dumps(report))
"""


def run_probe(backend: str = CLOSED) -> dict[str, dict[str, object]]:
    env = {
        **os.environ,
        "ENTITIES_BROKER_URL": CLOSED,
        "ENTITIES_RESULT_BACKEND": backend,
        "ENTITIES_MODULES": "tests.fixture_entities",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_every_send_path_raises_broker_error_naming_the_broker_without_its_password() -> None:
    """Given a broker on a closed port and short retry policies, when each client helper and
    both publish paths send, then each raises BrokerError (an EntityError and kombu's
    OperationalError) quickly, naming the masked URL and what to check, never the password."""
    report = run_probe()
    for path, seen in report.items():
        assert seen["raised"] == "BrokerError", (path, seen)
        assert seen["operational"] and seen["entity_error"], path
        message = str(seen["message"])
        assert "redis://:***@127.0.0.1:9/0" in message, (path, message)
        assert "s3cret" not in message, (path, message)
        assert "ENTITIES_BROKER_URL" in message and "Check that Redis is running" in message
        assert float(str(seen["seconds"])) < 5, (path, seen)


def test_the_direct_lpush_honours_the_publish_retry_policy() -> None:
    """Given task_publish_retry_policy max_retries=2, when a call takes the direct LPUSH path,
    then it is tried three times (the first try and two retries) before BrokerError."""
    seen = run_probe()["send, direct LPUSH"]
    assert seen["raised"] == "BrokerError"
    assert seen["lpush"] == 3


def test_a_separate_result_backend_is_named_too() -> None:
    """Given results on another (also closed) server, when a call waits for its reply, then
    the error names both servers and both settings, passwords masked."""
    seen = run_probe(backend="redis://user:pw-2@127.0.0.1:9/5")["ref() call"]
    assert seen["raised"] == "BrokerError"
    message = str(seen["message"])
    assert "(results at redis://user:***@127.0.0.1:9/5)" in message
    assert "ENTITIES_BROKER_URL and ENTITIES_RESULT_BACKEND name them" in message
    assert "pw-2" not in message and "s3cret" not in message


@pytest.mark.no_services
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host/1", "redis://user:***@host/1"),
        ("rediss://u:p@ss@host:1/0", "rediss://u:***@host:1/0"),  # an unescaped @ in it
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://host/0?password=secret&db=1", "redis://host/0?password=***&db=1"),
        (
            "sentinel://:a@h1:26379;sentinel://:b@h2:26379",
            "sentinel://:***@h1:26379;sentinel://:***@h2:26379",
        ),
        ("redis+socket:///tmp/redis.sock", "redis+socket:///tmp/redis.sock"),
    ],
)
def test_masked_urls_keep_everything_but_the_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


class _Conf:
    broker_url = "redis://:pw@127.0.0.1:9/0"
    result_backend = "redis://:pw@127.0.0.1:9/0"


class _App:
    conf = _Conf()


@pytest.mark.no_services
def test_only_connection_failures_become_broker_errors() -> None:
    """Given errors raised inside a send, then a connection failure (itself, or the cause of
    Celery's result-consumer RuntimeError) becomes BrokerError, and anything else passes."""
    with (
        pytest.raises(
            BrokerError, match=r"the broker at redis://:\*\*\*@127\.0\.0\.1:9/0: refused\. "
        ),
        reaching(_App()),
    ):
        raise redis.ConnectionError("refused")
    with pytest.raises(BrokerError), reaching(_App()):
        try:
            raise redis.ConnectionError("refused")
        except redis.ConnectionError as exc:
            raise RuntimeError("Retry limit exceeded") from exc
    for unrelated in (ValueError("bad"), RuntimeError("no cause"), KeyError("k")):
        with pytest.raises(type(unrelated)), reaching(_App()):
            raise unrelated


class _Policy:
    task_publish_retry = True
    task_publish_retry_policy = {
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.01,
        "interval_max": 0.01,
    }


class _PolicyApp:
    conf = _Policy()


class _Flaky:
    """A publish that fails its first ``failures`` tries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.tries = 0

    def __call__(self) -> str:
        self.tries += 1
        if self.tries <= self.failures:
            raise redis.ConnectionError("refused")
        return "sent"

    async def aio(self) -> str:
        return self()


def _publish(kind: str, flaky: _Flaky) -> str:
    if kind == "sync":
        return publish_retrying(_PolicyApp(), flaky)
    return asyncio.run(publish_retrying_async(_PolicyApp(), flaky.aio))


@pytest.mark.no_services
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sync_and_async_publishes_retry_alike(kind: str) -> None:
    """Given max_retries=2, when a publish keeps failing, then it is tried three times and its
    error raised; when it fails once, then the second try's value is returned."""
    always = _Flaky(failures=99)
    with pytest.raises(redis.ConnectionError):
        _publish(kind, always)
    assert always.tries == 3
    once = _Flaky(failures=1)
    assert _publish(kind, once) == "sent"
    assert once.tries == 2
