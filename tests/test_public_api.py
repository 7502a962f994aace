"""The public surface: what `entities` and `workers` export, and which way imports go.

Adding a name to a package's ``__all__`` means adding it here too, on purpose.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import kombu.exceptions
import pytest

import entities
import workers

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.no_services

ENTITIES_API = {
    # defining entities
    "Entity",
    "field",
    "handler",
    "SendFailure",
    # sending and replies
    "EntityResult",
    # outside the queue
    "cancel_alarm",
    "cancel_all_alarms",
    "delete",
    "list_alarms",
    "list_entities",
    "read",
    "schedule_alarm",
    "failed_alarms",
    "retry_alarm",
    "Alarm",
    "Snapshot",
    # operating the cluster
    "cluster_status",
    "ClusterStatus",
    "PartitionStatus",
    "WorkerStatus",
    # settings
    "Settings",
    "configure",
    "get_settings",
    # errors
    "BadMessage",
    "BrokerError",
    "ConfigurationError",
    "DefinitionError",
    "EntityError",
    "FenceError",
    "MessageError",
    "MessageExpired",
    "ReplyTimeout",
    "SchemaError",
    "StateError",
    "StoreError",
    "UnknownEntityType",
    "UnknownHandler",
    "UpgradeError",
}

WORKERS_API = {"app", "send_to_entity"}

AIO_API = {
    "send",
    "read",
    "list_entities",
    "delete",
    "schedule_alarm",
    "cancel_alarm",
    "cancel_all_alarms",
    "list_alarms",
    "aclose",
}


def test_entities_aio_exports_the_async_twins() -> None:
    """Given `entities.aio`, then __all__ is the async twins (and aclose), each a coroutine
    function, reachable as entities.aio after `import entities`."""
    import inspect

    assert set(entities.aio.__all__) == AIO_API
    for name in AIO_API:
        assert inspect.iscoroutinefunction(getattr(entities.aio, name)), name


def test_entities_exports_exactly_the_public_api() -> None:
    """Given `entities`, then __all__ is exactly the pinned set, without repeats, all defined."""
    assert set(entities.__all__) == ENTITIES_API
    assert len(entities.__all__) == len(set(entities.__all__))
    for name in entities.__all__:
        assert getattr(entities, name) is not None


def test_workers_exports_exactly_the_app_and_the_task() -> None:
    """Given `workers`, then __all__ is exactly app and send_to_entity."""
    assert set(workers.__all__) == WORKERS_API
    assert workers.send_to_entity.name == "entities.send_to_entity"
    assert workers.app.main == "entities"


def test_every_error_derives_from_entity_error() -> None:
    """Given the exported errors, then each is an EntityError (one tree, one base)."""
    exported = [getattr(entities, n) for n in ENTITIES_API]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) == 15
    assert all(issubclass(e, entities.EntityError) for e in errors)
    assert issubclass(entities.SchemaError, entities.ConfigurationError)
    assert issubclass(entities.FenceError, entities.StoreError)
    for e in (
        entities.UnknownEntityType,
        entities.UnknownHandler,
        entities.BadMessage,
        entities.MessageExpired,
    ):
        assert issubclass(e, entities.MessageError)
    from celery.exceptions import TimeoutError as CeleryTimeout

    assert issubclass(entities.ReplyTimeout, CeleryTimeout)  # existing callers catch it
    assert issubclass(entities.BrokerError, kombu.exceptions.OperationalError)  # Celery's callers


def test_importing_entities_never_imports_workers_and_does_no_io() -> None:
    """Given a fresh interpreter with unreachable servers, when `entities` is imported and an
    entity defined, then it works and `workers` is not in sys.modules."""
    code = """
import json, sys
import entities
from entities import Entity, handler

class Probe(Entity, name="probe"):
    n: int = 0

    @handler
    def bump(self) -> int:
        self.n += 1
        return self.n

print(json.dumps(sorted(m for m in sys.modules if m == "workers" or m.startswith("workers."))))
"""
    env = {
        **os.environ,
        "ENTITIES_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",
        "ENTITIES_BROKER_URL": "redis://127.0.0.1:9/0",
        "ENTITIES_RESULT_BACKEND": "redis://127.0.0.1:9/0",
        "ENTITIES_MODULES": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


#: The pytest plugin's harness fixture imports the runtime inside the fixture, when a test
#: asks for it; importing the plugin (pytest does, on install) loads nothing of `workers`.
DEFERRED_WORKERS_IMPORTS = {"entities/testing/pytest_plugin.py": ["workers.testing"]}


def test_no_module_of_entities_imports_workers() -> None:
    """Given every module under entities/, then none imports workers (at any level), but for
    the pytest plugin's fixture, whose import is inside the fixture function."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m == "workers" or m.startswith("workers.")
        )
        for path in sorted((ROOT / "entities").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == DEFERRED_WORKERS_IMPORTS
    for name in DEFERRED_WORKERS_IMPORTS:
        tree = ast.parse((ROOT / name).read_text())
        top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        top |= {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert not any(m and m.startswith("workers") for m in top)
    assert len(offenders) > 10  # the walk really found the package
