"""Alarm lateness: N alarms due within a window; how late each fired (p50, p99, max).

Runs only when the build dispatches alarms (``workers.alarms`` exists);
otherwise the figure is null with the reason, never an invented number.
One worker and one `celery -A workers beat` run; alarms are scheduled through
``entities.schedule_alarm`` with their due time in the payload, and the
AlarmProbe entity records ``time.time() - due`` when its alarm is handled.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import sqlalchemy as sa

from bench import procs, servers
from bench.latency import percentile
from bench.systems import Ours, Run

#: Seconds before the first alarm is due, besides the time to schedule them all.
LEAD_S = 2.0
#: Alarms scheduled (an hour ahead) to time scheduling before the measured ones.
CALIBRATION_ALARMS = 20
GRACE_S = 30.0


def available() -> str | None:
    """None when alarms can be measured, else why not."""
    if not (procs.source_root / "workers" / "alarms.py").exists():
        return "workers.alarms does not exist in this build: alarms are not dispatched yet"
    return None


def measure(run: Run, count: int, window_s: float) -> dict[str, Any]:
    """Schedules ``count`` alarms due evenly over ``window_s`` seconds and measures lateness."""
    reason = available()
    if reason is not None:
        return {"p99_s": None, "reason": reason}
    import entities

    servers.reset(run.servers)
    ours = Ours(run)
    worker = ours.start("alarms")
    beat = procs.WorkerProcess(
        "beat", _beat_argv(run), run.process_env(run.entities_env(None)), run.log_dir
    )
    try:
        per_alarm_s = _calibrate()
        first_due = time.time() + LEAD_S + count * per_alarm_s * 1.5
        for i in range(count):
            due = first_due + window_s * i / count
            entities.schedule_alarm(
                "alarm_probe",
                f"a{i}",
                "bench",
                dt.datetime.fromtimestamp(due, dt.UTC),
                payload={"due": due},
            )
        late_start = time.time() - first_due
        deadline = first_due + window_s + GRACE_S
        lateness = _lateness(run)
        while len(lateness) < count and time.time() < deadline:
            worker.check_alive()
            beat.check_alive()
            time.sleep(0.5)
            lateness = _lateness(run)
    finally:
        beat.stop()
        worker.stop()
    out: dict[str, Any] = {
        "alarms": count,
        "window_s": window_s,
        "fired": len(lateness),
        "scheduling_overran_s": round(max(0.0, late_start), 3),
    }
    # An alarm that never fired counts as infinitely late, so it can only raise the p99.
    samples = lateness + [math.inf] * (count - len(lateness))
    for name, q in (("p50_s", 50.0), ("p99_s", 99.0), ("max_s", 100.0)):
        value = percentile(samples, q)
        out[name] = None if math.isinf(value) else round(value, 4)
    if len(lateness) < count:
        out["unfired"] = count - len(lateness)
        if out["p99_s"] is None:
            out["reason"] = f"more than 1% of the alarms had not fired {GRACE_S}s after the window"
    return out


def _calibrate() -> float:
    """Seconds one ``schedule_alarm`` takes now (the measured alarms must all be
    scheduled before the first is due, or lateness would measure the bench)."""
    import entities

    due = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    started = time.perf_counter()
    for i in range(CALIBRATION_ALARMS):
        entities.schedule_alarm("alarm_probe", f"calibration-{i}", "bench", due, payload={})
    return (time.perf_counter() - started) / CALIBRATION_ALARMS


def _beat_argv(run: Run) -> list[str]:
    import sys

    schedule = run.home / "celerybeat-schedule"
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "beat",
        "-l",
        "info",
        "-s",
        str(schedule),
    ]


def _lateness(run: Run) -> list[float]:
    engine = sa.create_engine(run.servers.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT (state->>'lateness_s')::float FROM entity_snapshots "
                    "WHERE entity_type = 'alarm_probe' AND state->>'lateness_s' IS NOT NULL"
                )
            ).scalars()
            return [float(x) for x in rows]
    finally:
        engine.dispose()
