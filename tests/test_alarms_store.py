"""Alarm dispatch below the processes: the store's claim, skip, failed and retry on SQLite
and Postgres, the dispatch loop, publishing, and the beat schedule."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from entities import ConfigurationError, clock
from entities.messages import OP_ALARM, parse_envelope
from entities.migrate import upgrade
from entities.routing import partition_for, queue_name
from entities.settings import Settings, from_env
from entities.store import Alarm, AlarmChange, AlarmOutcome, CommitBatch, SQLStore
from entities.transport import celery_config
from tests.databases import sqlite_url
from workers.alarms import dispatch, publisher

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@contextlib.contextmanager
def use_clock(now: dt.datetime) -> Iterator[None]:
    previous = clock.install(lambda: now)
    try:
        yield
    finally:
        clock.install(previous)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alarm-store") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[SQLStore]:
    """A migrated, empty store on each backend."""
    if request.param == "sqlite":
        shutil.copy(sqlite_template, tmp_path / "store.db")
        backend = SQLStore(sqlite_url(tmp_path, "store.db"))
    else:
        backend = SQLStore(os.environ["ENTITIES_DATABASE_URL"])
    yield backend
    backend.close()


def schedule(store: SQLStore, eid: str, name: str, seconds: float, payload: object = None) -> None:
    store.set_alarm(AlarmChange("t", eid, name, at(seconds), payload))


def names(alarms: list) -> list[str]:  # type: ignore[type-arg]
    return [f"{a.entity_id}/{a.name}" for a in alarms]


def test_a_claim_takes_due_alarms_earliest_first_up_to_the_limit(store: SQLStore) -> None:
    """Given alarms due at various times, when claimed at t=10 with limit 2, then the two
    earliest due ones come back, and a second claim takes the third but nothing future."""
    schedule(store, "a", "x", 5)
    schedule(store, "b", "x", 1)
    schedule(store, "a", "y", 10)
    schedule(store, "c", "x", 11)
    first = store.claim_due_alarms(at(10), limit=2, redispatch_after_s=30)
    assert names(first) == ["b/x", "a/x"]
    assert all(a.status == "scheduled" for a in first)
    assert names(store.claim_due_alarms(at(10), 2, 30)) == ["a/y"]
    assert store.claim_due_alarms(at(10), 2, 30) == []


def test_a_claimed_alarm_is_claimed_again_only_after_the_redispatch_window(
    store: SQLStore,
) -> None:
    """Given a claimed alarm that did not fire, then it is claimed again only once
    redispatch_after_s has passed since its claim, with the same scheduling."""
    schedule(store, "a", "x", 0)
    (claimed,) = store.claim_due_alarms(at(1), 10, redispatch_after_s=30)
    assert store.claim_due_alarms(at(30), 10, 30) == []
    (again,) = store.claim_due_alarms(at(31.5), 10, 30)
    assert again.scheduling_id == claimed.scheduling_id


def test_rescheduling_a_claimed_alarm_makes_it_claimable_at_its_new_time(
    store: SQLStore,
) -> None:
    """Given a claimed alarm replaced by a new scheduling, then the new one is claimed at its
    own time, without waiting for the redispatch window."""
    schedule(store, "a", "x", 0)
    (old,) = store.claim_due_alarms(at(1), 10, 30)
    schedule(store, "a", "x", 2)
    assert store.claim_due_alarms(at(1.5), 10, 30) == []
    (new,) = store.claim_due_alarms(at(2), 10, 30)
    assert new.scheduling_id != old.scheduling_id


def test_alarms_later_than_skip_before_are_kept_as_skipped(store: SQLStore) -> None:
    """Given one alarm long overdue and one just due, when claimed with skip_before, then the
    overdue one comes back skipped with its reason and is not claimed again; the other is
    claimed."""
    schedule(store, "a", "old", 0, {"n": 1})
    schedule(store, "a", "fresh", 95)
    out = store.claim_due_alarms(at(100), 10, 30, skip_before=at(40))
    assert [(a.name, a.status) for a in out] == [("old", "skipped"), ("fresh", "scheduled")]
    assert "60 s late" in (out[0].last_error or "")
    assert store.claim_due_alarms(at(110), 10, 30) == []  # "old" is not claimable any more
    (skipped,) = store.failed_alarms()
    assert (skipped.name, skipped.status, skipped.fire_at, skipped.payload) == (
        "old",
        "skipped",
        at(0),
        {"n": 1},
    )


def test_failed_alarms_lists_failed_and_skipped_by_type(store: SQLStore) -> None:
    """Given a failed alarm, a skipped one and a scheduled one, then failed_alarms lists the
    first two, oldest first, optionally of one type only."""
    schedule(store, "a", "fails", 1)
    (claimed,) = store.claim_due_alarms(at(1), 10, 30)
    store.commit(
        CommitBatch(
            0,
            None,
            alarm_outcomes=[
                AlarmOutcome("t", "a", "fails", claimed.scheduling_id, attempts=5, error="Boom: no")
            ],
        )
    )
    store.set_alarm(AlarmChange("u", "b", "late", at(0)))
    store.claim_due_alarms(at(500), 10, 30, skip_before=at(400))
    schedule(store, "c", "pending", 10_000)
    listed = store.failed_alarms()
    assert {(a.entity_type, a.name, a.status) for a in listed} == {
        ("u", "late", "skipped"),
        ("t", "fails", "failed"),
    }
    assert [a.fire_at for a in listed] == sorted(a.fire_at for a in listed)
    (failed,) = (a for a in listed if a.status == "failed")
    assert failed.last_error == "Boom: no" and failed.attempts == 5
    assert [a.name for a in store.failed_alarms("t")] == ["fails"]
    assert len(store.failed_alarms(limit=1)) == 1


def test_retry_alarm_makes_a_failed_alarm_a_new_scheduling(store: SQLStore) -> None:
    """Given a failed alarm, when retried, then it is scheduled at the given time with a new
    scheduling id, no attempts and no error, keeping its payload; a scheduled or missing
    alarm is not retried."""
    schedule(store, "a", "x", 1, {"keep": True})
    (claimed,) = store.claim_due_alarms(at(1), 10, 30)
    store.commit(
        CommitBatch(
            0,
            None,
            alarm_outcomes=[
                AlarmOutcome("t", "a", "x", claimed.scheduling_id, attempts=5, error="E: e")
            ],
        )
    )
    retried = store.retry_alarm("t", "a", "x", at(50))
    assert retried is not None
    assert (retried.status, retried.attempts, retried.last_error, retried.fire_at) == (
        "scheduled",
        0,
        None,
        at(50),
    )
    assert retried.payload == {"keep": True}
    assert retried.scheduling_id != claimed.scheduling_id
    assert store.retry_alarm("t", "a", "x", at(60)) is None  # scheduled now: nothing to retry
    assert store.retry_alarm("t", "a", "nope", at(60)) is None
    (again,) = store.claim_due_alarms(at(50), 10, 30)
    assert again.scheduling_id == retried.scheduling_id


def test_concurrent_claimers_never_share_an_alarm(store: SQLStore) -> None:
    """Given 300 due alarms and four threads claiming batches of 20 at once, then every
    alarm is claimed exactly once."""
    for i in range(300):
        store.set_alarm(AlarmChange("t", f"e{i}", "x", at(i / 100)))
    seen: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        while batch := store.claim_due_alarms(at(10), 20, 30):
            with lock:
                seen.extend(a.scheduling_id for a in batch)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(seen) == 300
    assert len(set(seen)) == 300


# -- dispatch ---------------------------------------------------------------------------


def settings(**overrides: object) -> Settings:
    base = Settings(database_url="sqlite://", broker_url="redis://x", result_backend="redis://x")
    return base.replace(**overrides)


def test_dispatch_claims_batch_after_batch_while_they_come_back_full(store: SQLStore) -> None:
    """Given 35 due alarms and batches of 10, then one dispatch publishes 10, 10, 10 and 5,
    in fire-time order, and the next publishes nothing."""
    for i in range(35):
        store.set_alarm(AlarmChange("t", f"e{i:02}", "x", at(i)))
    batches: list[list[str]] = []
    with use_clock(at(100)):
        sent = dispatch(
            store, settings(alarm_batch_size=10), lambda b: batches.append([a.entity_id for a in b])
        )
        assert sent == 35
        assert [len(b) for b in batches] == [10, 10, 10, 5]
        assert [e for b in batches for e in b] == [f"e{i:02}" for i in range(35)]
        assert dispatch(store, settings(alarm_batch_size=10), batches.append) == 0


def test_dispatch_publishes_no_skipped_alarm_and_says_so(
    store: SQLStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the skip policy, then a late alarm is not published and a warning names the
    policy; a timely one is published."""
    schedule(store, "a", "late", 0)
    schedule(store, "a", "timely", 90)
    published: list[str] = []
    with use_clock(at(100)):
        sent = dispatch(
            store,
            settings(alarm_misfire="skip", alarm_misfire_tolerance_s=60.0),
            lambda b: published.extend(a.name for a in b),
        )
    assert (sent, published) == (1, ["timely"])
    assert "ENTITIES_ALARM_MISFIRE=skip" in caplog.text


def test_alarms_are_pushed_to_their_partitions_as_send_to_entity_calls(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given two claimed alarms, then each lands in its entity's partition queue as a
    silent send_to_entity call whose task id names the scheduling and the attempt."""
    alarms = [
        Alarm("t", "a", "x", at(0), None, "sched1", attempts=0),
        Alarm("t", "b", "y", at(0), None, "sched2", attempts=3),
    ]
    publisher(redis_client, 16)(alarms)
    for alarm in alarms:
        queue = queue_name(partition_for("t", alarm.entity_id, 16))
        (raw,) = redis_client.lrange(queue, 0, -1)
        env = parse_envelope(raw, 1 << 20)
        assert (env.error, env.bad, env.silent) == (None, None, True)
        assert env.task_id == f"alarm-{alarm.scheduling_id}-{alarm.attempts}"
        assert (env.entity_type, env.entity_id, env.op, env.args) == (
            "t",
            alarm.entity_id,
            OP_ALARM,
            [alarm.name, alarm.scheduling_id, alarm.attempts],
        )


@pytest.mark.no_services
def test_beat_sends_the_dispatch_task_every_alarm_poll_seconds_with_a_short_expiry() -> None:
    """Given ENTITIES_ALARM_* settings, then they are read with their defaults, and the Celery
    config schedules the dispatch at the poll interval with an expiry of a few polls."""
    env = {"ENTITIES_BROKER_URL": "redis://h/0"}
    default = from_env(env)
    assert (default.alarm_poll_s, default.alarm_misfire, default.alarm_redispatch_s) == (
        0.25,
        "fire_once",
        30.0,
    )
    custom = from_env(
        {
            **env,
            "ENTITIES_ALARM_POLL": "2",
            "ENTITIES_ALARM_MISFIRE": "skip",
            "ENTITIES_ALARM_MISFIRE_TOLERANCE": "5",
            "ENTITIES_ALARM_BATCH": "7",
        }
    )
    assert (custom.alarm_misfire, custom.alarm_misfire_tolerance_s) == ("skip", 5.0)
    assert custom.alarm_batch_size == 7
    entry = celery_config(custom)["beat_schedule"]["entities-dispatch-alarms"]
    assert entry == {
        "task": "entities.dispatch_alarms",
        "schedule": 2.0,
        "options": {"expires": 8.0},
    }
    assert celery_config(default)["beat_schedule"]["entities-dispatch-alarms"]["options"] == {
        "expires": 1.0
    }
    with pytest.raises(ConfigurationError, match="fire_once, skip"):
        from_env({**env, "ENTITIES_ALARM_MISFIRE": "fire_all"})


@pytest.mark.no_services
def test_celery_logs_each_dispatch_run_only_at_debug() -> None:
    """Given Celery's loggers at INFO, then its per-run lines about the dispatch task are
    dropped and those about other tasks kept; at DEBUG, all are kept."""
    import logging

    import workers.alarms  # noqa: F401  (installs the filter)

    logger = logging.getLogger("celery.app.trace")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    try:
        for at_level in (logging.INFO, logging.DEBUG):
            logger.setLevel(at_level)
            for task in ("entities.dispatch_alarms", "entities.send_to_entity"):
                logger.info("Task %(name)s[%(id)s] succeeded", {"name": task, "id": "x"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert seen == [
        "Task entities.send_to_entity[x] succeeded",
        "Task entities.dispatch_alarms[x] succeeded",
        "Task entities.send_to_entity[x] succeeded",
    ]
