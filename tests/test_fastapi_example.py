"""examples/fastapi_app.py against a real worker: awaited replies, errors as HTTP statuses.

The requests run in a process of their own (tests/fastapi_scenarios.py) whose
ENTITIES_MODULES is the example's, as a deployed service's would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parent.parent
MODULES = "examples.account"


def scenario(name: str) -> None:
    env = {**os.environ, "ENTITIES_MODULES": MODULES, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fastapi_scenarios", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0 and "scenario passed" in proc.stdout, proc.stdout + proc.stderr


def test_concurrent_requests_each_await_their_committed_reply(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker serving examples.account, when 200 deposits of 0.10 are posted at once
    to two accounts, then each reply is a committed balance, the final balances are exact,
    an overdraft is 409 and an unknown account 404."""
    workers.start(1, ENTITIES_MODULES=MODULES)
    scenario("concurrent")


def test_a_request_without_a_worker_is_a_504_naming_the_call() -> None:
    """Given no worker, when a deposit's reply does not come in time, then the service
    answers 504 with ReplyTimeout's message."""
    scenario("no_worker")
