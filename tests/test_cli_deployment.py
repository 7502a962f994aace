"""Given a shell with no ENTITIES_* settings, when an operator runs an `entities` command,
then it uses the `entities dev` of the current directory, or names the defaults it uses and
how to point it elsewhere; looking creates nothing; an unknown type is named as unknown."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from entities import embedded
from entities.cli import main
from entities.settings import embedded_broker_url
from entities.store import CommitBatch, Write

#: Unsets every ENTITIES_* variable of the test process for one CliRunner call.
NO_SETTINGS: dict[str, str | None] = {k: None for k in os.environ if k.startswith("ENTITIES_")}

#: A command line of each command that only looks.
LOOKING = [
    ["inspect", "counter", "c1"],
    ["ls", "counter"],
    ["alarms", "counter", "c1"],
    ["alarms", "--failed"],
    ["stats"],
    ["dead-letters", "list"],
    ["pause", "--list"],
]


@pytest.fixture
def fresh_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory; the process's settings and store come back afterwards."""
    from entities.client import set_store
    from entities.settings import configure, get_settings

    before = get_settings()
    store = set_store(None)
    set_store(store)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    configure(before)
    set_store(store)


def run(*args: str, **env: str | None) -> Result:
    return CliRunner().invoke(main, list(args), env={**NO_SETTINGS, **env})


@pytest.mark.no_services
@pytest.mark.parametrize("command", LOOKING, ids=" ".join)
def test_with_nothing_to_look_at_a_command_says_where_it_looked_and_creates_nothing(
    fresh_shell: Path, command: list[str]
) -> None:
    result = run(*command)

    assert result.exit_code == 1, result.output
    assert "no ENTITIES_DATABASE_URL or ENTITIES_BROKER_URL is set" in result.output
    assert f"no `entities dev` runs in {fresh_shell / '.entities'}" in result.output
    assert f"the default database {fresh_shell / '.entities' / 'entities.db'}" in result.output
    assert "start `entities dev` in this directory" in result.output
    assert list(fresh_shell.iterdir()) == []


@pytest.mark.no_services
def test_inspect_in_a_fresh_shell_creates_no_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTITIES_")}
    done = subprocess.run(
        [sys.executable, "-m", "entities.cli", "inspect", "counter", "c1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "does not exist: nothing to look at" in done.stderr
    assert "entities migrate" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.no_services
def test_on_the_default_database_a_command_names_it_and_the_stopped_broker(
    fresh_shell: Path,
) -> None:
    """Given a default SQLite database and no embedded broker running, then inspect shows the
    state and says the broker is not running; stats says so and stops; nothing is started."""
    assert run("migrate").exit_code == 0
    home = fresh_shell / ".entities"
    made = _files(home)

    shown = run("inspect", "counter", "c1", ENTITIES_MODULES="tests.fixture_entities")
    stats = run("stats")

    assert shown.exit_code == 0, shown.output
    assert f"using the defaults: database sqlite:///{home / 'entities.db'}" in shown.output
    assert "no committed state" in shown.output
    assert f"messages waiting: unknown: the embedded broker in {home} is not running" in (
        shown.output
    )
    assert stats.exit_code == 1
    assert f"the embedded broker in {home} is not running" in stats.output
    assert "set ENTITIES_BROKER_URL" in stats.output
    assert _files(home) == made
    assert not embedded.redis_running(home)


def _files(home: Path) -> set[str]:
    """The files in ``home``, but SQLite's own -wal and -shm beside an open database."""
    return {p.name for p in home.iterdir() if not p.name.endswith(("-wal", "-shm"))}


def _record_dev(home: Path, **extra: str) -> None:
    """Records an `entities dev` in ``home`` whose servers are the test servers."""
    embedded.save_env(
        home,
        {
            "ENTITIES_DATABASE_URL": os.environ["ENTITIES_DATABASE_URL"],
            "ENTITIES_BROKER_URL": os.environ["ENTITIES_BROKER_URL"],
            "ENTITIES_MODULES": "tests.fixture_entities",
            **extra,
        },
    )


def test_a_command_uses_the_entities_dev_of_this_directory(fresh_shell: Path, store) -> None:  # type: ignore[no-untyped-def]
    store.commit(CommitBatch(-1, None, writes=[Write("counter", "c1", 0, 1, {"count": 3})]))
    _record_dev(fresh_shell / ".entities")

    listed = run("ls", "counter")
    shown = run("inspect", "counter", "c1")
    migrated = run("migrate")

    assert listed.exit_code == 0, listed.output
    assert f"using the `entities dev` running in {fresh_shell / '.entities'}" in listed.output
    assert listed.stdout.split() == ["c1"]
    assert shown.exit_code == 0, shown.output
    assert '"count": 3' in shown.output
    assert "messages waiting: 0 queued" in shown.output
    assert "already at revision" in migrated.output


@pytest.mark.no_services
def test_a_stopped_entities_dev_is_not_used(fresh_shell: Path) -> None:
    home = fresh_shell / ".entities"
    embedded.save_env(
        home,
        {
            "ENTITIES_DATABASE_URL": os.environ["ENTITIES_DATABASE_URL"],
            "ENTITIES_BROKER_URL": embedded_broker_url(str(home)),
        },
    )

    result = run("ls", "counter")

    assert result.exit_code == 1
    assert "(the `entities dev` recorded there has stopped)" in result.output


def test_an_unknown_type_is_named_as_unknown(fresh_shell: Path, store) -> None:  # type: ignore[no-untyped-def]
    _record_dev(fresh_shell / ".entities")
    store.commit(CommitBatch(-1, None, writes=[Write("unlisted_type", "u1", 0, 1, {"n": 1})]))

    for command in (
        ["inspect", "nosuchtype", "x"],
        ["ls", "nosuchtype"],
        ["alarms", "nosuchtype", "x"],
        ["alarms", "--failed", "nosuchtype"],
        ["pause", "nosuchtype", "x"],
    ):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert "unknown entity type 'nosuchtype': no entity class has that name" in (
            result.output
        ), (command, result.output)
        assert "counter" in result.output  # among the known types

    known_but_new = run("inspect", "counter", "never-seen")
    assert known_but_new.exit_code == 0, known_but_new.output
    assert "no committed state" in known_but_new.output
    empty = run("ls", "recorder")
    assert empty.exit_code == 0, empty.output
    assert "no stored recorder entities" in empty.output
    stored_only = run("ls", "unlisted_type")  # its module is not imported here: known by its data
    assert stored_only.exit_code == 0, stored_only.output
    assert stored_only.stdout.split() == ["u1"]
