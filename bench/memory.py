"""Resident memory: one worker holding N small entities (one message to each).

The worker's VmRSS is read once it owns every partition, after half the
entities replied and after all did (messages published while it runs). The
worker's own count of resident entities is recorded beside it, so an eviction
shows. When N is below 100,000 (quick mode) the figure is extrapolated
linearly from the growth per entity of the second half, and the JSON says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import servers
from bench.config import SPEC_RESIDENT_ENTITIES
from bench.systems import Ours, Run
from bench.traffic import check_replies, wait_replies

SETTLE_S = 1.0
#: Seconds to wait for the worker's published stats to count every message.
STATS_WAIT_S = 5.0
#: The Redis hash where our workers publish their counts (entities.inspect.STATS_KEY).
STATS_KEY = "entities.stats"


def _worker_stats(run: Run, pid: int, applied: int) -> dict[str, Any] | None:
    """The worker's own counts (resident, hibernated entities) once it reports ``applied``.

    Read from the stats hash the worker publishes about once a second; None
    if the build publishes none.
    """
    deadline = time.monotonic() + STATS_WAIT_S
    latest: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        for raw in run.redis.hvals(STATS_KEY):
            stats = json.loads(raw)
            if stats.get("pid") == pid:
                latest = {k: stats.get(k) for k in ("resident", "hibernated", "applied")}
        if latest is not None and (latest.get("applied") or 0) >= applied:
            break
        time.sleep(0.25)
    return latest


def measure(run: Run, entities: int) -> dict[str, Any]:
    """Makes ``entities`` entities resident in one worker and reports its RSS.

    The entities arrive in two halves, RSS read after each; below 100,000 the
    figure is extrapolated from the second half's growth per entity (the first
    entities also grow pools and caches that later ones share).
    """
    servers.reset(run.servers)
    ours = Ours(run)
    worker = ours.start("rss")
    half = entities // 2
    try:
        time.sleep(SETTLE_S)
        boot_mb = worker.rss_mb()
        checks = []
        readings = []
        for part in (range(half), range(half, entities)):
            sent = ours.publish([f"r{i}" for i in part])
            wait_replies(run.redis, sent, 120.0 + len(sent) / 100)
            checks.append(check_replies(run.redis, sent, counting=True))
            time.sleep(SETTLE_S)
            readings.append(worker.rss_mb())
        stats = _worker_stats(run, worker.pid, entities)
        worker.check_alive()
    finally:
        worker.stop()
    half_mb, loaded_mb = readings
    slope_mb = (loaded_mb - half_mb) / (entities - half)
    at_spec = loaded_mb + slope_mb * (SPEC_RESIDENT_ENTITIES - entities)
    out: dict[str, Any] = {
        "entities": entities,
        "boot_rss_mb": round(boot_mb, 1),
        "half_rss_mb": round(half_mb, 1),
        "rss_mb": round(loaded_mb, 1),
        "per_entity_kb": round((loaded_mb - boot_mb) * 1024 / entities, 3),
        "per_entity_kb_second_half": round(slope_mb * 1024, 3),
        "rss_mb_100k": round(at_spec, 1),
        "check": {k: sum(c[k] for c in checks) for k in checks[0]},
        "worker_stats": stats,
    }
    if entities != SPEC_RESIDENT_ENTITIES:
        out["note"] = (
            f"measured with {entities:,} entities and extrapolated linearly to "
            f"{SPEC_RESIDENT_ENTITIES:,} from the growth per entity of the second "
            f"{entities - half:,}"
        )
    return out
