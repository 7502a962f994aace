"""Resident memory: one worker holding N small entities (one message to each).

The worker's VmRSS is read once it owns every partition, and again after
every entity replied (messages published while it runs).
When N is below 100,000 (quick mode) the figure is extrapolated linearly:
boot RSS + (RSS growth per entity) x 100,000, and the JSON says so.
"""

from __future__ import annotations

import time
from typing import Any

from bench import servers
from bench.config import SPEC_RESIDENT_ENTITIES
from bench.systems import Ours, Run
from bench.traffic import check_replies, wait_replies

SETTLE_S = 1.0


def measure(run: Run, entities: int) -> dict[str, Any]:
    """Makes ``entities`` entities resident in one worker and reports its RSS."""
    servers.reset(run.servers)
    ours = Ours(run)
    worker = ours.start("rss")
    try:
        time.sleep(SETTLE_S)
        boot_mb = worker.rss_mb()
        sent = ours.publish([f"r{i}" for i in range(entities)])
        wait_replies(run.redis, sent, 120.0 + entities / 100)
        check = check_replies(run.redis, sent, counting=True)
        time.sleep(SETTLE_S)
        loaded_mb = worker.rss_mb()
        worker.check_alive()
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
        "check": check,
    }
    if entities != SPEC_RESIDENT_ENTITIES:
        out["note"] = (
            f"measured with {entities:,} entities and extrapolated linearly to "
            f"{SPEC_RESIDENT_ENTITIES:,}: boot RSS + growth per entity x {SPEC_RESIDENT_ENTITIES:,}"
        )
    return out
