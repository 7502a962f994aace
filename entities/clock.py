"""The wall clock of the runtime, which the test kit replaces with a virtual one.

Every stored time is read through :func:`now`: alarm fire times, alarm retry
times, and the timestamps the store writes. Idle timers, flush intervals and
leases measure durations with ``time.monotonic`` and do not follow this clock.
The clock is process-wide; only the test kit's harness (``workers.testing``)
replaces it, for tests that run the runtime in-process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

Source = Callable[[], dt.datetime]

_source: Source | None = None


def now() -> dt.datetime:
    """The current time, aware, in UTC (the virtual time while one is installed)."""
    return dt.datetime.now(dt.UTC) if _source is None else _source()


def install(source: Source | None) -> Source | None:
    """Makes ``source`` the clock of this process (None: the system clock); returns the old one."""
    global _source
    previous, _source = _source, source
    return previous


class VirtualClock:
    """A clock that moves only when told to; call it for the time.

    It starts at ``start`` (default: the real time when created) and never goes
    backwards.
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = _utc(start) if start is not None else dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self._now

    def advance(self, delta: float | dt.timedelta) -> dt.datetime:
        """Moves the clock forward by ``delta`` (seconds or a timedelta); returns the new time."""
        seconds = delta.total_seconds() if isinstance(delta, dt.timedelta) else float(delta)
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds} s")
        self._now += dt.timedelta(seconds=seconds)
        return self._now

    def move_to(self, when: dt.datetime) -> dt.datetime:
        """Moves the clock forward to ``when`` (an aware datetime); earlier times change nothing."""
        self._now = max(self._now, _utc(when))
        return self._now


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("a clock time must be an aware datetime (with tzinfo)")
    return value.astimezone(dt.UTC)
