"""Given the guides in docs/, their code samples run, and every `entities` command line in
them (and in the README) is one the command accepts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest

from entities.cli import main

pytestmark = pytest.mark.no_services

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [
    "defining-entities.md",
    "alarms.md",
    "durability.md",
    "operating.md",
    "sending.md",
    "testing.md",
    "clients.md",
]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENTITIES_MODULES": "", "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("guide", [g for g in GUIDES if g != "testing.md"])
def test_the_python_samples_of_a_guide_run_in_order(guide: str, tmp_path: Path) -> None:
    """Each guide's samples are one story: run together, top to bottom, in a fresh process."""
    code = "\n\n".join(blocks((ROOT / "docs" / guide).read_text(), "python"))
    assert code, f"{guide} has no python sample"
    done = run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_testing_guide_runs_as_a_pytest_module_with_the_plugin(tmp_path: Path) -> None:
    """The testing guide's samples, fixtures and test function included, run under pytest."""
    code = "\n\n".join(blocks((ROOT / "docs" / "testing.md").read_text(), "python"))
    (tmp_path / "test_guide.py").write_text(code)
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def command_lines() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *(ROOT / "docs" / g for g in GUIDES)]:
        for block in blocks(path.read_text(), "(?:sh|console)"):
            for line in block.splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("entities "):
                    found.append((path.name, line))
    return found


@pytest.mark.parametrize(("where", "line"), command_lines())
def test_every_entities_command_line_in_the_docs_parses(where: str, line: str) -> None:
    """Parsing (not running) each command checks its name, arguments and options."""
    ctx = main.make_context("entities", shlex.split(line)[1:])
    command: click.Command = main
    while isinstance(command, click.Group) and _rest(ctx):
        name, sub, rest = command.resolve_command(ctx, _rest(ctx))
        assert sub is not None, f"{where}: unknown command in {line!r}"
        ctx = sub.make_context(name or "", rest, parent=ctx)
        command = sub


def _rest(ctx: click.Context) -> list[str]:
    """A group's unparsed tokens (click 8.2 to 9 moves them from protected_args to args)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def test_the_readme_links_every_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    for guide in GUIDES:
        assert f"docs/{guide}" in readme, guide


def test_the_misfire_policies_the_guides_name_are_the_ones_the_settings_take() -> None:
    """Given every value the alarms guide and the README give ENTITIES_ALARM_MISFIRE, then
    the settings accept each, and a value they refuse gets an error naming the accepted."""
    from entities.errors import ConfigurationError
    from entities.settings import MISFIRE_POLICIES, from_env

    named = set()
    for path in (ROOT / "docs" / "alarms.md", ROOT / "README.md"):
        text = " ".join(path.read_text().split())
        for sentence in re.findall(r"`ENTITIES_ALARM_MISFIRE`[^.]*", text):
            named |= set(re.findall(r"`(\w+)` \(", sentence))
    assert named, "the guides name no misfire policy"
    for policy in named:
        assert from_env({"ENTITIES_ALARM_MISFIRE": policy}).alarm_misfire == policy
    with pytest.raises(ConfigurationError) as refused:
        from_env({"ENTITIES_ALARM_MISFIRE": "fire"})
    assert all(p in str(refused.value) for p in MISFIRE_POLICIES)
