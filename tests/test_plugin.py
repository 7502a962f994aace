"""Given the package installed, when a user's pytest run asks for `entity_harness`, then it
gets a fresh harness per test, with no fixture of their own and no import of ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_services

USER_TESTS = """
import datetime as dt

import pytest

from entities import Entity, handler


class Reminder(Entity, name="plugin-reminder"):
    sent: int = 0

    @handler
    def remind_in(self, seconds: float) -> None:
        self.schedule_alarm("remind", seconds)

    def handle_alarm(self, name, payload) -> None:
        self.sent += 1


@pytest.fixture
def entity_harness_start():
    return dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def test_an_alarm_fires_when_the_clock_reaches_it(entity_harness) -> None:
    entity_harness.call(Reminder, "r", "remind_in", 60)
    assert entity_harness.drain_alarms(within=30) == 0
    assert entity_harness.drain_alarms(within=60) == 1
    assert entity_harness.read(Reminder, "r").state == {"sent": 1}
    assert entity_harness.now == dt.datetime(2030, 1, 1, 0, 1, 30, tzinfo=dt.timezone.utc)


def test_each_test_gets_a_fresh_store(entity_harness) -> None:
    assert entity_harness.read(Reminder, "r") is None
"""


def test_a_users_suite_gets_entity_harness_from_the_installed_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["ENTITIES_MODULES"] = ""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_loading_the_plugin_imports_nothing_of_workers() -> None:
    code = (
        "import json, sys, entities.testing.pytest_plugin\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'workers']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
