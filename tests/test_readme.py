"""Given the README, its code samples and its configuration table match the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def run_client(code: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter, as a user's client would, against the test servers."""
    env = {**os.environ, "ENTITIES_MODULES": "examples"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_counter_of_the_readme_is_the_example_counter() -> None:
    block = next(b for b in code_blocks("python") if "class Counter" in b)
    readme_lines = [line for line in block.split("class Counter", 1)[1].splitlines() if line]
    example = (ROOT / "examples" / "counter.py").read_text()
    example_lines = [line for line in example.split("class Counter", 1)[1].splitlines() if line]
    example_lines = [line for line in example_lines if not line.strip().startswith('"""')]
    assert readme_lines == example_lines


def test_the_configuration_table_lists_every_setting() -> None:
    settings = (ROOT / "entities" / "settings.py").read_text()
    in_code = set(re.findall(r'"(ENTITIES_[A-Z_]+)"', settings))
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    in_table = set(re.findall(r"^\| `(ENTITIES_[A-Z_]+)`", table, re.M))
    assert in_table == in_code


def test_the_two_quick_start_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make run " in quick_start and "make test " in quick_start
    assert re.search(r"^run: .*\n\t\$\(BIN\)/entities dev", makefile, re.M)
    assert re.search(r"^test: .*\n\t\$\(BIN\)/pytest", makefile, re.M)


def test_the_interactive_session_prints_what_the_readme_shows(workers) -> None:  # type: ignore[no-untyped-def]
    session = next(b for b in code_blocks("python") if b.startswith(">>>"))
    workers.start(1, ENTITIES_MODULES="examples")
    done = run_client(
        "import doctest, sys\n"
        f"test = doctest.DocTestParser().get_doctest({session!r}, {{}}, 'README', None, 0)\n"
        "runner = doctest.DocTestRunner()\n"
        "runner.run(test)\n"
        "sys.exit(1 if runner.failures or not runner.tries else 0)\n"
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sending_sample_runs(workers) -> None:  # type: ignore[no-untyped-def]
    sample = next(b for b in code_blocks("python") if "send_task" in b)
    workers.start(1, ENTITIES_MODULES="examples")
    done = run_client(sample)
    assert done.returncode == 0, done.stdout + done.stderr
