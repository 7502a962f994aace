"""Worker processes the bench starts: ours and the baselines, each a `celery worker -P solo`.

Every process started here is tracked and stopped at exit; nothing else is
ever signalled.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis

ROOT = Path(__file__).resolve().parent.parent
#: The checkout whose code the workers run (``--source``); the repo itself by default.
source_root = ROOT
CELERY_FLAGS = [
    "-P",
    "solo",
    "-c",
    "1",
    "--without-mingle",
    "--without-gossip",
    "--without-heartbeat",
]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_live: dict[int, WorkerProcess] = {}


class WorkerProcess:
    """One `celery worker` subprocess, with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, cwd=source_root, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        _live[self.proc.pid] = self

    @property
    def pid(self) -> int:
        """The worker's process id (the solo pool runs everything in it)."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def check_alive(self) -> None:
        """Raises with the log's tail if the worker has exited."""
        if not self.alive():
            raise RuntimeError(
                f"worker {self.name} exited with {self.proc.returncode}:\n{self.tail()}"
            )

    def tail(self, chars: int = 3000) -> str:
        """The end of the worker's log."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def rss_mb(self) -> float:
        """Resident set size (VmRSS) in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_s(self) -> float:
        """User plus system CPU seconds used so far, all threads."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def kill9(self) -> None:
        """Kills the process with SIGKILL and reaps it."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops gracefully (SIGTERM: warm shutdown), SIGKILL after ``timeout_s``."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        _live.pop(self.pid, None)
        if not self._log.closed:
            self._log.close()


def celery_argv(app: str, name: str, loglevel: str, extra: list[str] | None = None) -> list[str]:
    """The command line of a one-process solo worker of ``app``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        *CELERY_FLAGS,
        "-l",
        loglevel,
        "-n",
        f"{name}@%h",
        *(extra or []),
    ]


def wait_until(
    predicate: Callable[[], bool], worker: WorkerProcess, timeout_s: float, what: str
) -> None:
    """Polls ``predicate()`` every 50 ms until true; raises with the log if the worker dies."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s}s; log:\n{worker.tail()}")
        time.sleep(0.05)


def owned_by(client: redis.Redis, partitions: int, pid: int) -> list[int]:
    """The partitions whose lease token belongs to the worker with process id ``pid``."""
    from entities.routing import lease_key

    tokens = client.mget([lease_key(p) for p in range(partitions)])
    mark = f":{pid}:".encode()
    return [p for p, tok in enumerate(tokens) if tok is not None and mark in tok]


def stop_all() -> None:
    """Stops every worker this process started and has not stopped yet."""
    for worker in list(_live.values()):
        with contextlib.suppress(Exception):  # at exit: best effort, keep the real error
            worker.stop(timeout_s=10)


atexit.register(stop_all)
