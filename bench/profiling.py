"""Sampling profiles of our worker with py-spy, summarised as hotspots.

``PySpy`` records a running worker (non-blocking sampling, so the worker is
not paused) into py-spy's "raw" collapsed-stack format. Two kinds are used:
``gil=True`` samples only the thread holding the GIL, which is where a
one-process Python worker spends its interpreter time (its CPU ceiling);
``idle=True`` samples every thread, waiting or not, and ``summarize(thread=)``
keeps one thread (a partition runner), which shows where its wall time goes.
``summarize`` reports the functions with the most samples on top of the stack
(self) and anywhere in it (inclusive), the share by package, and the share of
each phase of a runner iteration (PHASES).
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


#: The phases of a runner iteration, each by a marker (a function name) in the stack.
#: A sample goes to the first phase whose marker it contains, so nested phases
#: (the pre-ping inside a read or commit) come before the phases that hold them.
PHASES = (
    ("idle: waiting for a message", "PartitionQueues.wait"),
    ("pool pre-ping (SELECT 1 per checkout)", "do_ping"),
    ("dedup read (SELECT processed)", "SQLStore.processed"),
    ("snapshot read (load_many)", "SQLStore.load_many"),
    ("epoch check (SELECT FOR SHARE)", "_check_epoch"),
    ("snapshot writes", "_write_many"),
    ("COMMIT", "do_commit"),
    ("rest of the commit (BEGIN, inserts)", "SQLStore.commit"),
    ("fetch (Lua)", "PartitionQueues.fetch"),
    ("parse envelopes", "parse_envelope"),
    ("apply handlers", "Applier.apply"),
    ("replies (pipelined)", "ReplyWriter.write"),
    ("ack (Lua)", "PartitionQueues.ack"),
)


def summarize(path: Path, top: int = 15, thread: str | None = None) -> dict[str, Any]:
    """Hotspots of a py-spy raw profile: self and inclusive sample shares, by function.

    ``thread``: keep only the samples of the thread with this name (a profile
    recorded with ``idle=True``).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    pkg_counts: collections.Counter[str] = collections.Counter()
    phase_counts: collections.Counter[str] = collections.Counter()
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
        if not parts:  # a thread sampled with no Python frame at all
            self_counts["(no Python frame)"] += count
            continue
        frames = []
        for raw in parts:
            m = _FRAME.match(raw)
            frames.append((m["func"], m["file"]) if m else (raw, ""))
        func, file = frames[-1]
        self_counts[f"{func} ({_short(file)})"] += count
        pkg_counts[_package(file) if file else "other"] += count
        for label in {f"{f} ({_short(p)})" for f, p in frames}:
            incl_counts[label] += count
        for label, marker in PHASES:
            if marker in stack:
                phase_counts[label] += count
                break
        else:
            phase_counts["other"] += count
    if not total:
        return {"samples": 0}

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "self_pct": share(self_counts),
        "inclusive_pct": share(incl_counts),
        "by_package_self_pct": share(pkg_counts),
        "phases_pct": {
            label: round(100 * phase_counts[label] / total, 1)
            for label in [p for p, _ in PHASES] + ["other"]
        },
    }
