"""The command line: ``python -m bench [--quick] [--json PATH] [--only ...] [--profile]``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import procs, report, servers
from bench.config import FULL, QUICK, Sizes
from bench.procs import ROOT
from bench.run import MEASUREMENTS, OPTIONAL

if TYPE_CHECKING:
    from bench.systems import Run

DEFAULT_HOME = ROOT / "bench" / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, one round: finishes within 3 minutes on 2 cores",
    )
    p.add_argument("--json", type=Path, help="write the results as JSON to this path")
    p.add_argument(
        "--redis-url",
        help="Redis the bench owns and flushes "
        f"(default {servers.DEFAULT_REDIS_URL}, else an embedded redis-server)",
    )
    p.add_argument(
        "--database-url",
        help="Postgres database the bench owns and empties "
        f"(default: re-create {servers.DATABASE_NAME} on 127.0.0.1:5432, "
        "else an embedded Postgres)",
    )
    p.add_argument("--partitions", type=int, default=16, help="ENTITIES_PARTITIONS (16)")
    p.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all), plus the "
        f"opt-in {','.join(OPTIONAL)}",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile ours with py-spy in an extra, unmeasured drain and "
        "hot-entity run (not counted in the 3 minutes of --quick)",
    )
    p.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="a checkout (with bench/) whose code to measure, e.g. a git worktree of a "
        "commit, while this tree is being edited (default: this repo)",
    )
    p.add_argument(
        "--commit",
        help="measure this git revision (e.g. HEAD): exported with `git archive` under "
        "--home, with this bench/ copied in; the working tree is not touched",
    )
    p.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="where logs, profiles and embedded servers go (bench/results)",
    )
    return p.parse_args(argv)


def export(revision: str, home: Path) -> Path:
    """Exports ``revision`` of this repo under ``home``/src with the current bench/ copied in."""
    import shutil
    import subprocess

    commit = servers.git_commit(ROOT, revision)
    if commit is None:
        raise SystemExit(f"not a revision of {ROOT}: {revision}")
    target = home / "src" / commit
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(target)
    shutil.rmtree(target / "bench", ignore_errors=True)
    shutil.copytree(ROOT / "bench", target / "bench", ignore=shutil.ignore_patterns("results"))
    return target


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(143)  # runs atexit, which stops every worker this run started


def _measure_all(
    run: Run, sizes: Sizes, only: set[str], started: float, results: dict[str, Any]
) -> None:
    """Runs the chosen measurements in order, adding their figures and verdicts to ``results``.

    ``duration_s`` covers the figures of issue 6; the opt-in scaling sweep and
    profiles run after it.
    """
    from bench import run as measure

    steps = (
        ("drain", measure.drain_and_latency),
        ("failover", measure.failovers),
        ("rss", measure.resident),
        ("alarms", measure.alarm_lateness),
    )
    for name, step in steps:
        if name in only:
            results.update(step(run, sizes, _log))
    for key in report.KEYS:  # every key of issue 6 is present; null when not run
        results.setdefault(key, None)
    results["targets"] = report.judge(results)
    results["load_average_end"] = servers.load_average()
    busiest = max(results["load_average_start"][0], results["load_average_end"][0])
    if busiest > (os.cpu_count() or 1):
        results["noise"] = (
            f"the machine was busy (1-minute load average up to {busiest} on "
            f"{os.cpu_count()} CPUs): absolute figures are low and noisy; the ratios, "
            "measured alternately, are the figures to read"
        )
    results["duration_s"] = round(time.monotonic() - started, 1)
    if "scaling" in only:
        from bench import scaling

        results.update(scaling.measure(run, sizes, _log))
    if "profile" in only:
        results.update(measure.profile(run, sizes, run.home / "profile", _log))


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the table; writes JSON if asked."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sizes = QUICK if args.quick else FULL
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    if args.profile:
        only.add("profile")
    unknown = only - set(MEASUREMENTS) - set(OPTIONAL)
    if unknown:
        raise SystemExit(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    source = export(args.commit, home) if args.commit else args.source.resolve()
    if source != ROOT:
        if not (source / "bench" / "entities.py").exists():
            raise SystemExit(f"--source {source} has no bench/ package")
        # Workers run there, and this process imports entities and workers from there too.
        procs.source_root = source
        sys.path.insert(0, str(source))
    started = time.monotonic()
    srv = servers.resolve(args.redis_url, args.database_url, home)
    # Before anything imports `workers`: its settings are read from the environment once.
    from bench.systems import Run

    run = Run(srv, home, args.partitions)
    os.environ.update(run.entities_env(None))
    os.environ.update(run.baseline_env())

    results: dict[str, Any] = {
        "mode": sizes.mode,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": servers.machine_info(srv),
        "load_average_start": servers.load_average(),
        "settings": {
            "partitions": args.partitions,
            "source": str(source),
            "source_commit": servers.git_commit(ROOT, args.commit)
            if args.commit
            else servers.git_commit(source),
            "sizes": sizes.__dict__,
            "redis_url": srv.redis_url,
            "database": srv.database_url.rsplit("/", 1)[-1],
        },
    }
    _log(f"{sizes.mode} run on {results['machine']['cpu_model']} x{results['machine']['nproc']}")
    try:
        _measure_all(run, sizes, only, started, results)
    finally:
        servers.stop_embedded(srv, home)
    print(report.table(results))
    print(
        f"\n{sizes.mode} run took {results['duration_s']} s "
        f"(load average {results['load_average_start']} -> {results['load_average_end']})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0
