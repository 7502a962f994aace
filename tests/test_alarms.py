"""Alarms end to end: real Redis, Postgres, worker processes and `celery -A workers beat`."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import entities
from entities import read
from tests.conftest import ROOT
from tests.lifecycle import eventually

#: Worker settings for these tests: fast retries, so failures play out in seconds.
FAST = {"ENTITIES_ALARM_RETRY": "0.1"}


class BeatProcess:
    """A real `celery -A workers beat` process with its own schedule file."""

    def __init__(self, env: dict[str, str], directory: Path, n: int) -> None:
        self.log_path = directory / f"beat-{n}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "beat",
                "-l",
                "debug",
                "-s",
                str(directory / f"beat-schedule-{n}"),
                "--pidfile",
                str(directory / f"beat-{n}.pid"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Beats:
    """Starts beat processes for one test and stops them all at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[BeatProcess] = []

    def start(self, n: int = 1, **env_overrides: str) -> list[BeatProcess]:
        env = {**os.environ, **env_overrides}
        started = [BeatProcess(env, self.directory, len(self.procs) + i) for i in range(n)]
        self.procs.extend(started)
        return started

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def beat(tmp_path: Path) -> Iterator[Beats]:
    beats = Beats(tmp_path)
    yield beats
    beats.stop_all()


def call(entity_type: str, entity_id: str, op: str, *args: Any) -> Any:
    from workers import send_to_entity

    return send_to_entity.delay(entity_type, entity_id, {"op": op, "args": list(args)}).get(
        timeout=30
    )


def state(entity_type: str, entity_id: str) -> dict[str, Any]:
    snapshot = read(entity_type, entity_id)
    return {} if snapshot is None else snapshot.state


def fired(entity_id: str) -> list[str]:
    return [f[0] for f in state("alarmed", entity_id).get("fired", [])]


def no_alarms(entity_type: str, entity_id: str) -> bool:
    return entities.list_alarms(entity_type, entity_id) == [] and not [
        a for a in entities.failed_alarms(entity_type) if a.entity_id == entity_id
    ]


# -- scheduling, without dispatch -------------------------------------------------------


def test_alarms_are_scheduled_replaced_cancelled_and_listed_by_fire_time() -> None:
    """Given alarms scheduled from outside out of order, then the list is by fire time with
    one alarm per name; scheduling a name again replaces it; cancel and cancel-all remove."""
    now = dt.datetime.now(dt.UTC)
    entities.schedule_alarm("alarmed", "s", "late", 3600)
    entities.schedule_alarm("alarmed", "s", "soon", dt.timedelta(seconds=60))
    at = entities.schedule_alarm("alarmed", "s", "exact", now + dt.timedelta(seconds=120))
    assert at == now + dt.timedelta(seconds=120)
    assert [n for n, _ in entities.list_alarms("alarmed", "s")] == ["soon", "exact", "late"]
    entities.schedule_alarm("alarmed", "s", "late", 1)  # replaces: now the earliest
    listed = entities.list_alarms("alarmed", "s")
    assert [n for n, _ in listed] == ["late", "soon", "exact"]
    assert listed[0][1] < now + dt.timedelta(seconds=30)
    entities.cancel_alarm("alarmed", "s", "soon")
    entities.cancel_alarm("alarmed", "s", "never-scheduled")
    assert [n for n, _ in entities.list_alarms("alarmed", "s")] == ["late", "exact"]
    entities.schedule_alarm("alarmed", "other", "x", 5)
    entities.cancel_all_alarms("alarmed", "s")
    assert entities.list_alarms("alarmed", "s") == []
    assert [n for n, _ in entities.list_alarms("alarmed", "other")] == ["x"]


def test_delays_of_zero_milliseconds_and_a_year_are_valid() -> None:
    """Given delays of 0, 5 ms and 365 days (seconds and timedelta), then each is stored at
    now plus the delay."""
    before = dt.datetime.now(dt.UTC)
    entities.schedule_alarm("alarmed", "d", "zero", 0)
    entities.schedule_alarm("alarmed", "d", "ms", 0.005)
    entities.schedule_alarm("alarmed", "d", "year", dt.timedelta(days=365))
    after = dt.datetime.now(dt.UTC)
    times = dict(entities.list_alarms("alarmed", "d"))
    assert before <= times["zero"] <= after
    assert before + dt.timedelta(milliseconds=5) <= times["ms"] <= after + dt.timedelta(seconds=1)
    assert times["year"] >= before + dt.timedelta(days=365)
    with pytest.raises(entities.BadMessage):
        entities.schedule_alarm("alarmed", "d", "negative", -1)


# -- firing ---------------------------------------------------------------------------


def test_an_alarm_fires_once_and_its_effect_is_visible(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given a worker and beat, when alarms are scheduled from outside (0 s and 5 ms) and from
    a handler, then each fires once with its payload, and no alarm row is left."""
    workers.start(1, **FAST)
    beat.start(1)
    entities.schedule_alarm("alarmed", "f", "zero", 0, {"n": 0})
    entities.schedule_alarm("alarmed", "f", "ms", 0.005, [1, "two"])
    call("alarmed", "f", "schedule", "inside", 0.2, {"from": "handler"})
    eventually(lambda: len(fired("f")) == 3, timeout_s=30)
    got = {f[0]: f[1] for f in state("alarmed", "f")["fired"]}
    assert got == {"zero": {"n": 0}, "ms": [1, "two"], "inside": {"from": "handler"}}
    assert no_alarms("alarmed", "f")
    time.sleep(1.0)
    assert len(fired("f")) == 3


def test_alarms_scheduled_by_alarms_and_by_after_load_fire(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given a ticker that reschedules itself three times, a relay whose alarm a schedules b,
    and an entity that schedules an alarm in after_load, then every alarm fires, in order."""
    workers.start(1, **FAST)
    beat.start(1)
    call("ticker", "t", "start", 0.1, 3)
    call("relay", "r", "start")
    assert call("riser", "z", "hello") == 0
    eventually(lambda: state("ticker", "t").get("ticks") == 3, timeout_s=30)
    eventually(lambda: state("relay", "r").get("seen") == ["a", "b"], timeout_s=30)
    eventually(lambda: state("riser", "z").get("woke") == 1, timeout_s=30)
    assert no_alarms("ticker", "t") and no_alarms("relay", "r") and no_alarms("riser", "z")
    time.sleep(0.5)
    assert state("ticker", "t")["ticks"] == 3
    assert state("riser", "z")["woke"] == 1


def test_cancelled_alarms_and_alarms_of_a_failed_handler_never_fire(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given an alarm scheduled by a handler that raised, and alarms cancelled from outside
    and from a handler before their time, then none exists and none fires."""
    workers.start(1, **FAST)
    beat.start(1)
    with pytest.raises(RuntimeError, match="changed my mind"):
        call("alarmed", "c", "schedule_then_fail", "doomed", 0.2)
    assert entities.list_alarms("alarmed", "c") == []
    entities.schedule_alarm("alarmed", "c", "outside", 0.6)
    entities.cancel_alarm("alarmed", "c", "outside")
    call("alarmed", "c", "schedule", "inside", 0.6)
    call("alarmed", "c", "cancel", "inside")
    call("alarmed", "c", "schedule", "kept", 0.6)
    eventually(lambda: fired("c") == ["kept"], timeout_s=30)
    time.sleep(1.0)
    assert fired("c") == ["kept"]
    assert no_alarms("alarmed", "c")


def test_a_replaced_alarm_fires_only_at_its_new_time(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given an alarm due soon, when it is replaced by one due 2 s later and a message for
    the old scheduling is delivered anyway, then it fires once, at the new time."""
    from workers import send_to_entity
    from workers.alarms import alarm_call

    workers.start(1, **FAST)
    beat.start(1)
    store = entities.client.get_store()
    started = time.time()
    call("alarmed", "r", "schedule", "x", 0.5, "old")
    old = store.get_alarm("alarmed", "r", "x")
    entities.schedule_alarm("alarmed", "r", "x", 2.0, "new")
    task_id, args = alarm_call(old)  # a dispatch of the old scheduling, after the replacement
    send_to_entity.apply_async(args, task_id=task_id, ignore_result=True)
    eventually(lambda: fired("r") == ["x"], timeout_s=30)
    ((_name, payload, fired_at),) = state("alarmed", "r")["fired"]
    assert payload == "new"
    assert fired_at >= started + 2.0
    time.sleep(0.5)
    assert len(fired("r")) == 1


def test_two_beats_and_eager_redispatch_give_one_effect_per_scheduling(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given two workers, two beats and a 0.2 s redispatch window (so unfired alarms are sent
    again and again), when 40 alarms and a 10-tick chain fire, then each scheduling has
    exactly one effect."""
    workers.start(2, ENTITIES_ALARM_REDISPATCH="0.2", **FAST)
    one, two = beat.start(2)
    for i in range(40):
        entities.schedule_alarm("alarmed", f"m{i}", "once", 0.05 * (i % 10), i)
    call("ticker", "many", "start", 0.05, 10)
    eventually(lambda: all(len(fired(f"m{i}")) >= 1 for i in range(40)), timeout_s=60)
    eventually(lambda: state("ticker", "many").get("ticks") == 10, timeout_s=60)
    time.sleep(1.5)  # let any extra dispatch arrive
    assert [len(fired(f"m{i}")) for i in range(40)] == [1] * 40
    assert [state("alarmed", f"m{i}")["fired"][0][1] for i in range(40)] == list(range(40))
    assert state("ticker", "many")["ticks"] == 10
    for proc in (one, two):  # both beats kept sending dispatches
        assert "entities.dispatch_alarms sent" in proc.output()


def test_kill_9_between_dispatch_and_commit_gives_exactly_one_effect(
    workers, beat, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Given an alarm whose handler takes 3 s, when the worker is killed -9 while it runs
    and another worker starts, then the alarm's effect is committed exactly once."""
    marker = tmp_path / "started"
    (worker,) = workers.start(1, **FAST)
    beat.start(1)
    entities.schedule_alarm("slow_alarm", "k", "slow", 0, {"marker": str(marker), "hold_s": 3})
    eventually(lambda: marker.exists(), timeout_s=30)
    worker.kill(signal.SIGKILL)
    assert state("slow_alarm", "k").get("fired", 0) == 0
    workers.start(1, **FAST)
    eventually(lambda: state("slow_alarm", "k").get("fired") == 1, timeout_s=60)
    assert marker.read_text().count("started") == 2  # ran twice, committed once
    assert no_alarms("slow_alarm", "k")
    time.sleep(1.0)
    assert state("slow_alarm", "k")["fired"] == 1


# -- misfires --------------------------------------------------------------------------


def test_after_beat_was_down_a_late_alarm_fires_once_late(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given the default misfire policy and beat down for 3 s, when beat starts, then an
    overdue alarm fires once, late, and a 1 s ticker that missed 3 ticks ticks once, then
    keeps its rhythm (no flood)."""
    workers.start(1, **FAST)
    due = time.time() + 0.1
    entities.schedule_alarm("alarmed", "late", "x", 0.1)
    call("ticker", "slow", "start", 1.0)
    time.sleep(3.0)
    beat.start(1)
    eventually(lambda: state("ticker", "slow").get("ticks", 0) >= 1, timeout_s=30, interval_s=0.02)
    assert state("ticker", "slow")["ticks"] == 1  # the next tick is due 1 s after this one
    eventually(lambda: fired("late") == ["x"], timeout_s=30)
    assert state("alarmed", "late")["fired"][0][2] >= due + 2.9
    eventually(lambda: state("ticker", "slow")["ticks"] == 2, timeout_s=30)


def test_after_beat_was_down_the_skip_policy_keeps_late_alarms_unfired(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given ENTITIES_ALARM_MISFIRE=skip with a 1 s tolerance and beat down for 2.5 s, then
    the overdue alarm is kept as skipped with its reason, a timely alarm fires, and
    retry_alarm fires the skipped one."""
    workers.start(1, ENTITIES_ALARM_MISFIRE="skip", ENTITIES_ALARM_MISFIRE_TOLERANCE="1", **FAST)
    entities.schedule_alarm("alarmed", "s", "overdue", 0.1, "old")
    time.sleep(2.5)
    beat.start(1)
    (skipped,) = eventually(lambda: entities.failed_alarms("alarmed"), timeout_s=30)
    assert (skipped.entity_id, skipped.name, skipped.status) == ("s", "overdue", "skipped")
    assert "late" in (skipped.last_error or "") and "skip" in (skipped.last_error or "")
    assert entities.list_alarms("alarmed", "s") == []
    entities.schedule_alarm("alarmed", "s", "timely", 0.3, "new")
    eventually(lambda: fired("s") == ["timely"], timeout_s=30)
    assert entities.retry_alarm("alarmed", "s", "overdue") is True
    eventually(lambda: fired("s") == ["timely", "overdue"], timeout_s=30)
    assert state("alarmed", "s")["fired"][1][1] == "old"
    assert no_alarms("alarmed", "s")
    assert entities.retry_alarm("alarmed", "s", "overdue") is False


# -- failures --------------------------------------------------------------------------


def test_alarms_without_handle_alarm_or_type_are_removed_and_reported(workers, beat) -> None:  # type: ignore[no-untyped-def]
    """Given an alarm of a type with no handle_alarm and one of an unknown type, then both
    are removed, not retried, and the worker log says why."""
    (worker,) = workers.start(1, **FAST)
    beat.start(1)
    entities.schedule_alarm("counter", "c", "orphan", 0)
    entities.schedule_alarm("no_such_type", "u", "orphan", 0)
    eventually(lambda: "defines no handle_alarm" in worker.output(), timeout_s=30)
    eventually(lambda: "unknown entity type 'no_such_type'" in worker.output(), timeout_s=30)
    eventually(lambda: no_alarms("counter", "c") and no_alarms("no_such_type", "u"))
    assert read("counter", "c") is None


def test_a_raising_alarm_is_retried_with_backoff_then_kept_failed_and_retryable(
    workers,
    beat,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Given an alarm handler that raises, with 0.1 s first retry and 5 attempts, then it is
    tried 5 times with doubling gaps, kept as failed with its reason, and fires once when
    retried after the cause is fixed."""
    log = tmp_path / "attempts"
    workers.start(1, **FAST)
    beat.start(1)
    entities.schedule_alarm("flaky", "f", "boom", 0, {"log": str(log)})
    (failed,) = eventually(lambda: entities.failed_alarms("flaky"), timeout_s=60)
    assert (failed.name, failed.status, failed.attempts) == ("boom", "failed", 5)
    assert failed.last_error == "RuntimeError: not allowed to fire boom"
    times = [float(x) for x in log.read_text().split()]
    assert len(times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.1 * 2**i * 0.95 for i, gap in enumerate(gaps)), gaps
    assert entities.list_alarms("flaky", "f") == []
    call("flaky", "f", "allow")
    assert entities.retry_alarm("flaky", "f", "boom") is True
    eventually(lambda: state("flaky", "f").get("fired") == 1, timeout_s=30)
    assert no_alarms("flaky", "f")
