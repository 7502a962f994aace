"""One run of measurement: the alternating drain/latency slots, then ours-only figures.

Slots alternate A, B, ours in every round, so drift on the shared machine hits
all three alike; each slot empties the state, starts one fresh worker on a
pre-filled queue, times the drain, makes sequential calls on that worker and
stops it. Ours' slot then times the hot entity on a fresh worker of its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import alarms, failover, memory, procs, servers
from bench.config import SPEC_DRAIN_MESSAGES, Sizes
from bench.drain import Drain, drain_ids, hot_ids, timed_drain
from bench.latency import CLIENTS, client_round_trips, round_trips, summary
from bench.profiling import PySpy, summarize
from bench.systems import CALL_TIMEOUT_S, ENTITY_TYPE, HandRolled, Noop, Ours, Run, System

MEASUREMENTS = ("drain", "failover", "rss", "alarms")
#: Opt-in measurements, run only when named in --only (or by --profile).
OPTIONAL = ("scaling", "profile")
#: Messages of the profiling drains, whatever the mode: enough samples to rank hotspots.
PROFILE_DRAIN_MESSAGES = 20_000
PROFILE_HOT_MESSAGES = 10_000
PROFILE_CALLS = 500
Log = Callable[[str], None]


def slot(run: Run, system: System, sizes: Sizes, round_no: int) -> dict[str, Any]:
    """One system's drain and sequential calls (on the drained worker); ours: the hot entity.

    The hot entity gets its own worker started on its own pre-filled queue.
    """
    servers.reset(run.servers)
    ids = drain_ids(sizes.drain_messages, sizes.drain_entities)
    drain, (worker,) = timed_drain(run, system, ids, f"{system.name}-r{round_no}", keep=True)
    out: dict[str, Any] = {"drain": drain}
    try:
        procs.wait_until(lambda: system.ready(worker), worker, 60.0, "worker not ready")
        entities = [f"e{i}" for i in range(sizes.drain_entities)]
        if isinstance(system, Ours):  # each client in turn; delay().get() is the call figure
            out["clients"] = client_round_trips(
                entities, sizes.latency_calls, sizes.latency_warmup, CALL_TIMEOUT_S
            )
            out["latency"] = out["clients"]["delay"]
        else:
            out["latency"] = round_trips(
                system, entities, sizes.latency_calls, sizes.latency_warmup
            )
    finally:
        worker.stop()
    if isinstance(system, Ours):
        servers.reset(run.servers)
        out["hot"], _ = timed_drain(
            run, system, hot_ids(sizes.hot_messages), f"hot-r{round_no}", acked=True
        )
    return out


def drain_and_latency(run: Run, sizes: Sizes, log: Log) -> dict[str, Any]:
    """The alternating rounds; returns the drain, hot-entity and latency figures."""
    systems: list[System] = [HandRolled(run), Noop(run), Ours(run)]
    drains: dict[str, list[Drain]] = {s.name: [] for s in systems}
    lats: dict[str, list[float]] = {s.name: [] for s in systems}
    clients: dict[str, list[float]] = {c: [] for c in CLIENTS}
    hots: list[Drain] = []
    for r in range(sizes.rounds):
        for system in systems:
            got = slot(run, system, sizes, r)
            drains[system.name].append(got["drain"])
            lats[system.name].extend(got["latency"])
            for name, values in got.get("clients", {}).items():
                clients[name].extend(values)
            d, p50 = got["drain"], summary(got["latency"])["p50_ms"]
            serving = "n/a" if d.all_serving_s is None else f"{d.all_serving_s:.2f} s"
            log(
                f"round {r + 1}: {system.label}: drain {d.per_s:,.0f}/s in {d.seconds:.2f} s "
                f"(all served after {serving}), call p50 {p50} ms"
            )
            if "hot" in got:
                hots.append(got["hot"])
                log(f"round {r + 1}: hot entity {got['hot'].per_s:,.0f}/s")
    rate = {n: statistics.fmean(d.per_s for d in ds) for n, ds in drains.items()}
    cpu = {
        n: statistics.fmean(1000 * d.worker_cpu_s / d.messages for d in ds)
        for n, ds in drains.items()
    }
    lat = {n: summary(v) for n, v in lats.items()}
    drain: dict[str, Any] = {
        "messages": sizes.drain_messages,
        "entities": sizes.drain_entities,
        "rounds": sizes.rounds,
        "per_s": {n: round(v, 1) for n, v in rate.items()},
        "worker_cpu_ms_per_msg": {n: round(v, 4) for n, v in cpu.items()},
        "samples": {n: [d.as_json() for d in ds] for n, ds in drains.items()},
        "clock": "from the worker's first take from a pre-filled queue (ours: first partition "
        "lease; Celery: worker_ready) to the last stored reply",
    }
    if sizes.drain_messages != SPEC_DRAIN_MESSAGES:
        drain["note"] = (
            f"{sizes.mode} mode: {sizes.drain_messages:,} messages instead of "
            f"{SPEC_DRAIN_MESSAGES:,}"
        )
    hot_rate = statistics.fmean(h.per_s for h in hots)
    return {
        "drain_vs_handrolled": round(rate["ours"] / rate["handrolled"], 3),
        "drain_vs_noop": round(rate["ours"] / rate["noop"], 3),
        "drain_ours_per_s": round(rate["ours"], 1),
        "drain_handrolled_per_s": round(rate["handrolled"], 1),
        "drain_noop_per_s": round(rate["noop"], 1),
        "drain": drain,
        "hot_entity_per_s": round(hot_rate, 1),
        "hot_entity": {
            "messages": sizes.hot_messages,
            "clock": "from the worker's first partition lease on a pre-filled queue to the last "
            "reply stored and every message acknowledged",
            "samples": [h.as_json() for h in hots],
        },
        "client_latency": _client_figures(clients, lat["noop"]),
        "p50_vs_noop": round(lat["ours"]["p50_ms"] / lat["noop"]["p50_ms"], 3),
        "p99_vs_noop": round(lat["ours"]["p99_ms"] / lat["noop"]["p99_ms"], 3),
        "latency_ms": lat,
    }


def _client_figures(
    clients: dict[str, list[float]], noop: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """p50/p99 of each client call of ours, in ms and as ratios to B's."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in clients.items():
        if values:
            s = summary(values)
            s["p50_vs_noop"] = round(s["p50_ms"] / noop["p50_ms"], 3)
            s["p99_vs_noop"] = round(s["p99_ms"] / noop["p99_ms"], 3)
            out[name] = s
    return out


def failovers(run: Run, sizes: Sizes, log: Log) -> dict[str, Any]:
    """Kill -9 rounds; the figure is the slowest."""
    samples = []
    for r in range(sizes.failover_rounds):
        got = failover.measure(run, sizes.failover_load_per_s, r)
        log(
            f"failover {r + 1}: probe served {got['seconds']} s after kill -9, check {got['check']}"
        )
        samples.append(got)
    return {
        "failover_s": max(s["seconds"] for s in samples),
        "failover": {"figure": "slowest of the rounds", "samples": samples},
    }


def resident(run: Run, sizes: Sizes, log: Log) -> dict[str, Any]:
    """The 100k-resident RSS figure."""
    got = memory.measure(run, sizes.rss_entities)
    log(
        f"rss: {got['rss_mb']} MB with {got['entities']:,} entities "
        f"(boot {got['boot_rss_mb']} MB) -> {got['rss_mb_100k']} MB at 100k"
    )
    return {"rss_mb_100k_resident": got["rss_mb_100k"], "rss": got}


def alarm_lateness(run: Run, sizes: Sizes, log: Log) -> dict[str, Any]:
    """The alarm-lateness figure, or null with the reason."""
    got = alarms.measure(run, sizes.alarms, sizes.alarm_window_s)
    log(f"alarms: {got}")
    return {"alarm_lateness_p99_s": got.get("p99_s"), "alarms": got}


def profile(run: Run, sizes: Sizes, out_dir: Path, log: Log) -> dict[str, Any]:
    """Extra, unmeasured drains of ours under py-spy; the hotspots.

    ``*_gil``: the GIL holder only (interpreter time); ``hot_wall``: every
    sample of the hot entity's runner thread, waiting included.
    """
    from entities.routing import partition_for

    ours = Ours(run)
    hot_thread = f"entities-p{partition_for(ENTITY_TYPE, hot_ids(1)[0], run.partitions)}"
    result: dict[str, Any] = {}
    runs = (
        ("drain_gil", drain_ids(PROFILE_DRAIN_MESSAGES, sizes.drain_entities), False),
        ("hot_gil", hot_ids(PROFILE_HOT_MESSAGES), False),
        ("hot_wall", hot_ids(PROFILE_HOT_MESSAGES), True),
    )
    for name, ids, wall in runs:
        servers.reset(run.servers)
        path = out_dir / f"{name}.txt"

        def spy(pid: int, path: Path = path, wall: bool = wall) -> PySpy:
            return PySpy(pid, path, idle=wall, gil=not wall)

        drain, _ = timed_drain(
            run, ours, ids, f"profile-{name}", acked=name != "drain_gil", profiler=spy
        )
        summary_ = summarize(path, thread=hot_thread if wall else None)
        result[name] = {
            "raw_profile": str(path),
            "messages": len(ids),
            "per_s_while_profiled": round(drain.per_s),
            **summary_,
        }
        log(f"profile {name}: {result[name]['samples']} samples -> {path}")
    result["call_wall"] = _profile_calls(run, sizes, out_dir / "call_wall.txt")
    log(f"profile call_wall: {result['call_wall']['samples']} samples")
    return {"profile": result}


def _profile_calls(run: Run, sizes: Sizes, path: Path) -> dict[str, Any]:
    """Sequential calls to one entity under py-spy; the samples of its runner thread."""
    from entities.routing import partition_for

    servers.reset(run.servers)
    ours = Ours(run)
    worker = ours.start("profile-calls")
    try:
        with PySpy(worker.pid, path, idle=True):
            samples = round_trips(ours, ["lat"], PROFILE_CALLS, sizes.latency_warmup)
    finally:
        worker.stop()
    thread = f"entities-p{partition_for(ENTITY_TYPE, 'lat', run.partitions)}"
    return {
        "raw_profile": str(path),
        "calls": len(samples),
        "latency_while_profiled": summary(samples),
        **summarize(path, thread=thread),
    }
