"""Given a worker started with -E, when entity messages are applied, then Celery task events
for them reach an event receiver, so Flower's state shows each task's outcome."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Workers


class EventsWorker:
    """A `celery -A workers worker -E` process, shaped like the workers fixture's processes."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-P",
                "solo",
                "-E",
                "-l",
                "info",
                "-n",
                f"events-{os.getpid()}@%h",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


class Captured:
    """A real Celery event receiver in a thread, as Flower runs one, feeding a State."""

    def __init__(self) -> None:
        from workers import app

        self.state = app.events.State()
        self.events: list[dict[str, Any]] = []
        self.conn = app.connection_for_read()
        self.receiver = app.events.Receiver(self.conn, handlers={"*": self._on_event})
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.state.event(event)

    def _run(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == task_id]

    def close(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(5)
        self.conn.release()


def wait_for(check: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_entity_messages_send_task_events_that_flower_state_understands(
    workers: Workers, tmp_path: Path
) -> None:
    from workers import send_to_entity

    workers.procs.append(EventsWorker(tmp_path / "events-worker.log"))  # type: ignore[arg-type]
    workers.wait_owned()
    captured = Captured()
    try:
        # The receiver's queue is bound once it consumes: send until events arrive.
        for _ in range(20):
            probe = send_to_entity.delay("counter", "ev", {"op": "increment"})
            probe.get(timeout=30)
            if wait_for(lambda p=probe: "task-succeeded" in captured.of(p.id), 1.0):
                break
        else:
            raise AssertionError(f"no task events received: {captured.events[-5:]}")

        ok = send_to_entity.delay("counter", "ev", {"op": "increment", "args": [10]})
        bad = send_to_entity.delay("counter", "ev", {"op": "no_such_op"})
        value = ok.get(timeout=30)
        assert wait_for(lambda: "task-failed" in captured.of(bad.id))
        assert wait_for(lambda: "task-succeeded" in captured.of(ok.id))

        assert captured.of(ok.id) == ["task-received", "task-started", "task-succeeded"]
        assert captured.of(bad.id) == ["task-received", "task-started", "task-failed"]
        task = captured.state.tasks[ok.id]
        assert (task.state, task.name, task.result) == (
            "SUCCESS",
            "entities.send_to_entity",
            repr(value),
        )
        assert "'counter', 'ev'" in task.args and task.runtime is not None
        failed = captured.state.tasks[bad.id]
        assert failed.state == "FAILURE" and "UnknownHandler" in failed.exception
    finally:
        captured.close()


def test_a_worker_without_events_sends_none(workers: Workers) -> None:
    """Given a worker without -E, then applying messages sends no task event."""
    from workers import send_to_entity

    workers.start(1)
    captured = Captured()
    try:
        time.sleep(1.0)
        result = send_to_entity.delay("counter", "quiet", {"op": "increment"})
        result.get(timeout=30)
        time.sleep(1.0)
        assert captured.of(result.id) == []
    finally:
        captured.close()
