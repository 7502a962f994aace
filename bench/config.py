"""The sizes of a run: quick (under 3 minutes on 2 cores) or full (the issue's sizes)."""

from __future__ import annotations

import dataclasses

#: The sizes the targets are stated for (DESIGN.md, issue 6).
SPEC_DRAIN_MESSAGES = 20_000
SPEC_DRAIN_ENTITIES = 1_000
SPEC_RESIDENT_ENTITIES = 100_000
SPEC_ALARMS = 10_000
SPEC_ALARM_WINDOW_S = 60.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each measurement does, and how often it is repeated.

    ``rounds``: how many times the drain/latency slots of all three systems
    run, alternating A, B, ours. ``failover_rounds``: kill -9 repetitions.
    ``rss_entities``: entities made resident for the memory figure (it is
    extrapolated linearly to 100,000 when smaller). ``alarms`` are spread
    evenly over ``alarm_window_s`` seconds.
    """

    mode: str
    rounds: int
    drain_messages: int
    drain_entities: int
    hot_messages: int
    latency_calls: int
    latency_warmup: int
    rss_entities: int
    failover_rounds: int
    failover_load_per_s: float
    alarms: int
    alarm_window_s: float


QUICK = Sizes(
    mode="quick",
    rounds=1,
    drain_messages=5_000,
    drain_entities=SPEC_DRAIN_ENTITIES,
    hot_messages=5_000,
    latency_calls=300,
    latency_warmup=30,
    rss_entities=10_000,
    failover_rounds=1,
    failover_load_per_s=200.0,
    alarms=1_000,
    alarm_window_s=10.0,
)

FULL = Sizes(
    mode="full",
    rounds=2,
    drain_messages=SPEC_DRAIN_MESSAGES,
    drain_entities=SPEC_DRAIN_ENTITIES,
    hot_messages=SPEC_DRAIN_MESSAGES,
    latency_calls=1_000,
    latency_warmup=50,
    rss_entities=SPEC_RESIDENT_ENTITIES,
    failover_rounds=3,
    failover_load_per_s=300.0,
    alarms=SPEC_ALARMS,
    alarm_window_s=SPEC_ALARM_WINDOW_S,
)
