"""Given a deployment's celeryconfig.py, when the app's configuration is built, then it adds
settings, ENTITIES_* win for what they cover, and a setting that would break the app stops it."""

from __future__ import annotations

import logging
import re
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

from entities.celeryconf import app_config, load_user_module, user_settings
from entities.errors import ConfigurationError
from entities.routing import TASK_NAME
from entities.settings import from_env
from entities.transport import route_task

pytestmark = pytest.mark.no_services

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = from_env(
    {"ENTITIES_BROKER_URL": "redis://127.0.0.1:6379/3", "ENTITIES_DATABASE_URL": "sqlite://"}
)


def test_a_users_settings_are_added_and_routing_stays_ours() -> None:
    def my_router(name: str, *_: Any, **__: Any) -> None:
        return None

    conf = app_config(
        SETTINGS,
        {
            "worker_max_tasks_per_child": 7,
            "task_routes": [{"shop.reports.*": {"queue": "reports"}}, my_router],
            "imports": ["shop.tasks"],
            "beat_schedule": {"nightly": {"task": "shop.tasks.nightly", "schedule": 3600}},
            "task_serializer": "json",
            "accept_content": ["application/json"],
        },
    )

    assert conf["worker_max_tasks_per_child"] == 7
    assert conf["task_routes"][0] is route_task
    assert conf["task_routes"][1:] == ({"shop.reports.*": {"queue": "reports"}}, my_router)
    assert conf["imports"] == ("workers.alarms", "shop.tasks")
    assert set(conf["beat_schedule"]) == {"nightly", "entities-dispatch-alarms"}
    assert conf["task_default_queue"] == "entities.tasks"


def test_entities_settings_win_over_the_broker_and_backend_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        conf = app_config(
            SETTINGS,
            {"broker_url": "redis://elsewhere:6379/0", "result_backend": "rpc://"},
        )

    assert conf["broker_url"] == conf["result_backend"] == "redis://127.0.0.1:6379/3"
    assert "broker_url is ignored; ENTITIES_BROKER_URL sets it" in caplog.text
    assert "result_backend is ignored; ENTITIES_RESULT_BACKEND sets it" in caplog.text


def test_the_default_queue_of_celery_stays_forwarded() -> None:
    assert app_config(SETTINGS, {"task_default_queue": "celery"})["task_default_queue"] == (
        "entities.tasks"
    )
    assert app_config(SETTINGS, {"task_default_queue": "mine"})["task_default_queue"] == "mine"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("task_serializer", "pickle"),
        ("result_serializer", "yaml"),
        ("event_serializer", "pickle"),
        ("accept_content", ["json", "pickle"]),
        ("result_accept_content", "pickle"),
        ("task_compression", "gzip"),
        ("task_protocol", 1),
        ("task_default_priority", 5),
        ("task_always_eager", True),
        ("task_routes", {TASK_NAME: {"queue": "fast"}}),
        ("task_routes", ({"entities.*": "elsewhere"},)),
        ("task_routes", [{re.compile(r".*send.*"): {"queue": "x"}}]),
        ("task_routes", {"*": {"queue": "everything"}}),
        ("task_routes", {"entities.dispatch_alarms": {"queue": "alarms"}}),
        ("task_annotations", {TASK_NAME: {"serializer": "pickle"}}),
        ("task_annotations", {"*": {"rate_limit": "10/s"}}),
    ],
)
def test_a_setting_that_would_break_the_app_is_refused_by_name(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"celeryconfig: {setting} "):
        app_config(SETTINGS, {setting: value})


def test_old_style_names_are_checked_too() -> None:
    settings = user_settings({"CELERY_TASK_SERIALIZER": "pickle", "_private": 1})
    assert settings == {"task_serializer": "pickle"}
    with pytest.raises(ConfigurationError, match="task_serializer = 'pickle'"):
        app_config(SETTINGS, settings)


def test_the_module_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "celeryconfig_from_cwd"
    (tmp_path / f"{name}.py").write_text("import os\nworker_concurrency = 3\n_helper = 1\n")
    monkeypatch.chdir(tmp_path)
    try:
        module = load_user_module(name)
        assert user_settings(module) == {"worker_concurrency": 3}
        assert load_user_module("no_such_celeryconfig") is None
    finally:
        sys.modules.pop(name, None)


def test_the_repositorys_celeryconfig_sets_nothing() -> None:
    assert user_settings(runpy.run_path(str(ROOT / "celeryconfig.py"))) == {}
