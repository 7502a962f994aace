"""Sampling profiles of our worker with py-spy, summarised as hotspots.

``PySpy`` records a running worker (non-blocking sampling, so the worker is
not paused) into py-spy's "raw" collapsed-stack format. Two kinds are used:
``gil=True`` samples only the thread holding the GIL, which is where a
one-process Python worker spends its interpreter time (its CPU ceiling);
``idle=True`` samples every thread, waiting or not, and ``summarize(thread=)``
keeps one thread (a partition runner), which shows where its wall time goes.
``summarize`` reports the functions with the most samples on top of the stack
(self) and anywhere in it (inclusive), the share by package, and the share of
the main steps of a runner iteration.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable (next to this Python first), or None."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """Records ``pid`` while the ``with`` block runs; ``idle`` also samples waiting threads."""

    def __init__(
        self, pid: int, output: Path, rate_hz: int = 200, idle: bool = False, gil: bool = False
    ) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate_hz),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ]
        if idle:
            self.argv += ["--idle", "--threads"]
        if gil:
            self.argv.append("--gil")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        self._proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)  # let py-spy attach before the measured work starts
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def _package(path: str) -> str:
    short = _short(path)
    if short.startswith(("entities/", "workers/", "bench/")):
        return short.split("/", 1)[0] + "/" + short.split("/", 2)[1]
    if "/" not in short:
        return "stdlib"
    head = short.split("/", 1)[0]
    return head if not head[0].isdigit() else "stdlib"


#: The steps of a runner iteration, by function name, for the "steps" shares.
STEPS = (
    "PartitionQueues.fetch",
    "PartitionQueues.wait",
    "parse_envelope",
    "SQLStore.processed",
    "SQLStore.load_many",
    "SQLStore.commit",
    "ReplyWriter.write",
    "PartitionQueues.ack",
)


def summarize(path: Path, top: int = 15, thread: str | None = None) -> dict[str, Any]:
    """Hotspots of a py-spy raw profile: self and inclusive sample shares, by function.

    ``thread``: keep only the samples of the thread with this name (a profile
    recorded with ``idle=True``).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    pkg_counts: collections.Counter[str] = collections.Counter()
    step_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        parts = stack.split(";")
        if parts[0].startswith("thread ("):
            name = parts.pop(0).split(": ", 1)[-1]
            if thread is not None and name != thread:
                continue
        total += count
        frames = []
        for raw in parts:
            m = _FRAME.match(raw)
            frames.append((m["func"], m["file"]) if m else (raw, ""))
        func, file = frames[-1]
        self_counts[f"{func} ({_short(file)})"] += count
        pkg_counts[_package(file) if file else "other"] += count
        for label in {f"{f} ({_short(p)})" for f, p in frames}:
            incl_counts[label] += count
        for step in {f for f, _ in frames if f in STEPS}:
            step_counts[step] += count
    if not total:
        return {"samples": 0}

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "self_pct": share(self_counts),
        "inclusive_pct": share(incl_counts),
        "by_package_self_pct": share(pkg_counts),
        "steps_pct": {name: round(100 * step_counts[name] / total, 1) for name in STEPS},
    }
