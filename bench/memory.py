"""Resident memory: one worker holding N small entities (one message to each).

The worker's VmRSS is read after boot and again after every entity replied.
When N is below 100,000 (quick mode) the figure is extrapolated linearly:
boot RSS + (RSS growth per entity) x 100,000, and the JSON says so.
"""

from __future__ import annotations

import time
from typing import Any

from bench import servers
from bench.config import SPEC_RESIDENT_ENTITIES
from bench.drain import timed_drain
from bench.systems import Ours, Run

SETTLE_S = 1.0


def measure(run: Run, entities: int) -> dict[str, Any]:
    """Makes ``entities`` entities resident in one worker and reports its RSS."""
    servers.reset(run.servers)
    ours = Ours(run)
    worker = ours.start("rss")
    try:
        time.sleep(SETTLE_S)
        boot_mb = worker.rss_mb()
        drain = timed_drain(run, ours, worker, [f"r{i}" for i in range(entities)])
        time.sleep(SETTLE_S)
        loaded_mb = worker.rss_mb()
    finally:
        worker.stop()
    per_entity_kb = (loaded_mb - boot_mb) * 1024 / entities
    at_spec = boot_mb + (loaded_mb - boot_mb) * SPEC_RESIDENT_ENTITIES / entities
    out: dict[str, Any] = {
        "entities": entities,
        "boot_rss_mb": round(boot_mb, 1),
        "rss_mb": round(loaded_mb, 1),
        "per_entity_kb": round(per_entity_kb, 3),
        "rss_mb_100k": round(at_spec, 1),
        "new_entity_drain": drain.as_json(),
    }
    if entities != SPEC_RESIDENT_ENTITIES:
        out["note"] = (
            f"measured with {entities:,} entities and extrapolated linearly to "
            f"{SPEC_RESIDENT_ENTITIES:,}: boot RSS + growth per entity x {SPEC_RESIDENT_ENTITIES:,}"
        )
    return out
