"""Given docker-compose.yml and the Dockerfile, they describe the production-shaped stack.

No Docker engine runs here, so these tests read the files: the services, their
commands, their settings, and the order they start in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from entities.settings import from_env
from entities.transport import celery_config

pytestmark = pytest.mark.no_services

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def known_variables() -> set[str]:
    source = (ROOT / "entities" / "settings.py").read_text()
    return set(re.findall(r"\bENTITIES_[A-Z_]+\b", source))


def test_the_stack_has_redis_postgres_migrate_worker_and_beat(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "postgres", "migrate", "worker", "beat"}


def test_redis_keeps_queued_messages_with_aof(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_postgres_keeps_its_data_and_reports_health(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_every_app_service_is_built_from_the_one_dockerfile(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        assert compose["services"][name]["build"] == ".", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)


def test_the_commands_are_the_contracts_processes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["entities", "migrate"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "workers", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "workers", "beat"]


def test_workers_and_beat_start_after_the_migration_succeeded(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_app_settings_point_at_the_stacks_servers(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = {k: str(v) for k, v in compose["services"][name]["environment"].items()}
        assert set(env) <= known_variables(), name
        env["ENTITIES_DATABASE_URL"] = env["ENTITIES_DATABASE_URL"].replace(
            "${POSTGRES_PASSWORD:-entities}", "pw"
        )
        settings = from_env(env)
        assert settings.database_url == "postgresql+psycopg://entities:pw@postgres:5432/entities"
        assert settings.broker_url.startswith("redis://redis:6379/")
        assert settings.modules == ("examples",)
        assert celery_config(settings)["broker_url"] == settings.broker_url


def test_no_password_is_written_into_the_stack(compose: dict[str, Any]) -> None:
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD")
