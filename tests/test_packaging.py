"""Given the wheel built from this checkout and installed into a fresh venv, then it holds only
`entities` and `workers`, migrates a new database from its own copy of the migrations, and a
deployment's celeryconfig.py adds settings while one that would break routing stops the worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]
NO_DEPS = ["--no-deps", "--no-index"]
WORKER_FLAGS = ["-P", "solo", "--without-mingle", "--without-gossip", "--without-heartbeat"]
#: What a checkout may hold besides its sources; none of it goes into the wheel.
LEFTOVERS = (".git", ".venv", ".entities", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


class Installed:
    """The wheel of this checkout, installed alone into a fresh venv; its dependencies come
    from this interpreter's site-packages, after the venv's own (a .pth line)."""

    def __init__(self, base: Path) -> None:
        # From a copy of the sources: setuptools would reuse a checkout's stale build/ folder.
        source = base / "source"
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFTOVERS))
        dist = base / "dist"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (self.wheel,) = dist.glob("celery_entities-*.whl")
        self.venv = base / "fresh"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(self.venv)],
            check=True,
            timeout=120,
        )
        self.python = self.venv / "bin" / "python"
        subprocess.run(
            [*PIP, "--python", str(self.python), "install", "-q", *NO_DEPS, str(self.wheel)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        site = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        self.site = Path(site)

    def run(self, args: list[str], cwd: Path, timeout: float = 60, **env: str) -> str:
        """Runs ``args`` (a path in the venv's bin/ first) in ``cwd``; returns its output."""
        done = subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=cwd,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Path]:
    """A deployment's directory: its entity module, nothing of this checkout."""
    (tmp_path / "wheel_shop.py").write_text(
        textwrap.dedent(
            """
            from entities import Entity, handler

            class Tally(Entity, name="wheel_tally"):
                count: int = 0

                @handler
                def add(self, n: int) -> int:
                    self.count += n
                    return self.count
            """
        )
    )
    yield tmp_path


@pytest.mark.no_services
def test_the_wheel_holds_only_the_entities_and_workers_packages(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        (top_level,) = (n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert wheel.read(top_level).decode().split() == ["entities", "workers"]
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"entities", "workers"}
    # Every package of the source tree is in the wheel (pyproject.toml lists them).
    for init in [*ROOT.glob("entities/**/__init__.py"), *ROOT.glob("workers/**/__init__.py")]:
        assert str(init.relative_to(ROOT)) in names
    assert "entities/migrations/env.py" in names
    assert "entities/migrations/script.py.mako" in names
    assert "entities/migrations/versions/0001_core.py" in names
    assert not (installed.site / "celeryconfig.py").exists()
    assert not (installed.site / "migrations").exists()


@pytest.mark.no_services
def test_the_installed_copy_migrates_a_new_database(installed: Installed, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = installed.run(["entities", "migrate", "--database-url", url], cwd=tmp_path)
    assert "upgraded from empty to revision" in out
    where = installed.run(
        ["python", "-c", "import entities.migrate as m; print(m.script_location())"], cwd=tmp_path
    )
    assert Path(where.strip()) == installed.site / "entities" / "migrations"


def test_a_deployments_celeryconfig_adds_settings_and_routing_still_works(
    installed: Installed, deployment: Path
) -> None:
    (deployment / "celeryconfig.py").write_text(
        "worker_max_tasks_per_child = 5\n"
        'task_routes = {"wheel_shop.*": {"queue": "reports"}}\n'
        'broker_transport_options = {"socket_keepalive": True}\n'
    )
    env = {"ENTITIES_MODULES": "wheel_shop"}
    worker = _start_worker(installed, deployment, env)
    try:
        client = textwrap.dedent(
            """
            import entities, workers
            from workers import app, send_to_entity
            assert entities.__file__.startswith(SITE), entities.__file__
            print(app.conf.worker_max_tasks_per_child, app.conf.broker_transport_options)
            print(send_to_entity.delay("wheel_tally", "t1", {"op": "add", "args": [4]}).get(20))
            """
        ).replace("SITE", repr(str(installed.site)))
        out = installed.run(["python", "-c", client], cwd=deployment, **env)
    finally:
        worker.terminate()
        log = worker.communicate(timeout=30)[0]
    assert out.split("\n")[:2] == ["5 {'socket_keepalive': True}", "4"], out + log


@pytest.mark.no_services
def test_a_pickle_serializer_in_celeryconfig_stops_the_worker(
    installed: Installed, deployment: Path
) -> None:
    (deployment / "celeryconfig.py").write_text('task_serializer = "pickle"\n')
    worker = _start_worker(installed, deployment, {"ENTITIES_MODULES": "wheel_shop"})
    try:
        log = worker.communicate(timeout=60)[0]
    finally:
        worker.kill()
    assert worker.returncode != 0
    assert "celeryconfig.py: task_serializer = 'pickle' is not allowed" in log
    assert "JSON only" in log


def _start_worker(installed: Installed, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(installed.python), "-m", "celery", "-A", "workers", "worker", *WORKER_FLAGS],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.1)
    return proc


@pytest.mark.no_services
def test_alembic_upgrade_head_works_from_a_checkout(tmp_path: Path) -> None:
    env = {**os.environ, "ENTITIES_DATABASE_URL": f"sqlite:///{tmp_path / 'checkout.db'}"}
    alembic = [sys.executable, "-m", "alembic"]
    for step in (["upgrade", "head"], ["current"]):
        done = subprocess.run(
            [*alembic, *step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert "(head)" in done.stdout
