"""Running child processes in the foreground, with Ctrl-C and SIGTERM forwarded once.

The children run in their own session, so a Ctrl-C in the terminal reaches
only this process, which turns it into one SIGTERM per child (Celery's warm
shutdown: batches in hand are committed, replied and acknowledged). A second
Ctrl-C sends SIGQUIT (Celery's cold shutdown). If one child exits, the others
are stopped the same way.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

#: Seconds between checks of the children.
POLL_S = 0.2


def run_foreground(
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str],
    cwd: Path | None = None,
    on_ready: tuple[Callable[[], bool], Callable[[], None]] | None = None,
) -> int:
    """Runs ``commands`` side by side until all exit; returns the first one's exit code.

    ``on_ready`` is (check, then): ``check`` is polled while the children run
    until it returns True, and then ``then`` runs once.
    """
    procs: list[subprocess.Popen[bytes]] = []
    requests = 0
    waiting = on_ready

    def stop(signum: int, frame: FrameType | None = None) -> None:
        nonlocal requests
        requests += 1
        sig = signal.SIGTERM if requests == 1 else signal.SIGQUIT
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command in commands:
            procs.append(
                subprocess.Popen(list(command), env=dict(env), cwd=cwd, start_new_session=True)
            )
        while any(p.poll() is None for p in procs):
            if requests == 0 and any(p.poll() is not None for p in procs):
                stop(signal.SIGTERM)
            if waiting is not None and requests == 0 and _holds(waiting[0]):
                waiting[1]()
                waiting = None
            time.sleep(POLL_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    code = procs[0].returncode
    # A child stopped by our own SIGTERM has done what was asked.
    return 0 if code in (0, -signal.SIGTERM) else (128 - code if code < 0 else code)


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # not ready yet: servers or tables may still be coming up
        return False
