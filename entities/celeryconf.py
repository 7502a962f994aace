"""The Celery configuration of the app: the ENTITIES_* settings and a deployment's celeryconfig.py.

Celery's convention is a ``celeryconfig`` module in the working directory;
the distribution never installs one, so a deployment's own file is the only
one found. It adds Celery settings (time limits, transport options, its own
tasks' routes, ...) to those derived from ENTITIES_* (``celery_config``).

Invariant: whatever the deployment's file says, the app publishes and
accepts JSON only, routes ``send_to_entity`` to its entity's partition, and
reaches the broker, backend and queues that ENTITIES_* name. So:

- a setting ENTITIES_* covers (``OWNED``: broker, result backend, result
  expiry, the consumer class) takes the ENTITIES_* value; a file that sets it
  to something else is logged as overridden;
- a setting that would break a guarantee (a non-JSON serializer or accepted
  content, compression or another message protocol, a default priority, eager
  mode, a route or annotation for one of this app's tasks) raises
  ``ConfigurationError`` naming the setting, so the worker (or client) stops
  before it starts;
- ``task_routes`` is this app's router first, then the file's routes;
  ``imports``, ``include`` and ``beat_schedule`` are the union of both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from entities.errors import ConfigurationError
from entities.routing import DEFAULT_QUEUE, TASK_NAME
from entities.settings import Settings
from entities.transport import DISPATCH_ALARMS_TASK, celery_config

log = logging.getLogger(__name__)

#: The module Celery's convention reads a deployment's settings from (in the working directory).
USER_MODULE = "celeryconfig"

#: This app's tasks: no deployment setting may route or annotate them.
OWN_TASKS = (TASK_NAME, DISPATCH_ALARMS_TASK)

#: Settings taken from ENTITIES_* (or fixed by this app), with what sets them.
OWNED = {
    "broker_url": "ENTITIES_BROKER_URL",
    "result_backend": "ENTITIES_RESULT_BACKEND",
    "result_expires": "ENTITIES_RESULT_EXPIRES",
    "worker_consumer": "this app (it dead-letters unreadable messages)",
}

_SERIALIZERS = ("task_serializer", "result_serializer", "event_serializer")
_CONTENT = ("accept_content", "result_accept_content")
_JSON = ("json", "application/json")


def load_user_module(name: str = USER_MODULE) -> ModuleType | None:
    """The deployment's ``celeryconfig`` module, imported from the working directory first
    (as Celery does); None when there is none."""
    from celery.utils.imports import import_from_cwd

    try:
        module: ModuleType = import_from_cwd(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
    return module


def user_settings(module: ModuleType | Mapping[str, Any] | None) -> dict[str, Any]:
    """The Celery settings a ``celeryconfig`` module (or mapping) sets, by their new names."""
    if module is None:
        return {}
    from celery.app.utils import _TO_NEW_KEY

    items = module.items() if isinstance(module, Mapping) else vars(module).items()
    found: dict[str, Any] = {}
    for key, value in items:
        if key.startswith("_") or isinstance(value, ModuleType):
            continue
        found[_TO_NEW_KEY.get(key, key)] = value
    return found


def app_config(settings: Settings, user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The app's Celery settings: ``user`` (default: the deployment's celeryconfig) checked
    and merged under the ENTITIES_* ones. Raises ConfigurationError naming a setting that
    would break the app."""
    if user is None:
        module = load_user_module()
        user = user_settings(module)
        where = getattr(module, "__file__", None) or USER_MODULE
    else:
        where = USER_MODULE
    ours = celery_config(settings)
    for key, value in user.items():
        _check(key, value, where)
    merged = {**user, **ours}
    for key, source in OWNED.items():
        if key in user and user[key] != ours.get(key):
            log.warning("%s: %s is ignored; %s sets it", where, key, source)
    if user.get("task_default_queue") not in (None, DEFAULT_QUEUE):
        merged["task_default_queue"] = user["task_default_queue"]
    merged["task_routes"] = (*ours["task_routes"], *_as_list(user.get("task_routes")))
    for key in ("imports", "include"):
        merged[key] = tuple(dict.fromkeys((*ours.get(key, ()), *_as_list(user.get(key)))))
    merged["beat_schedule"] = {**dict(user.get("beat_schedule") or {}), **ours["beat_schedule"]}
    return merged


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _refuse(where: str, key: str, value: Any, why: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {key} = {value!r} is not allowed: {why}")


def _json_only(content: Any) -> bool:
    return not isinstance(content, str) and all(c in _JSON for c in content)


def _check(key: str, value: Any, where: str) -> None:
    """Raises ConfigurationError if setting ``key`` to ``value`` would break the app."""
    json_only = "messages and results are JSON only (never pickle); remove the setting"
    if key in _SERIALIZERS and value not in (None, *_JSON):
        raise _refuse(where, key, value, json_only)
    if key in _CONTENT and value is not None and not _json_only(value):
        raise _refuse(where, key, value, json_only + " or set it to ['json']")
    if key in ("task_compression", "result_compression") and value:
        raise _refuse(where, key, value, "workers read entity messages uncompressed")
    if key == "task_protocol" and value not in (None, 2):
        raise _refuse(where, key, value, "workers read Celery message protocol 2 only")
    if key == "task_default_priority" and value:
        raise _refuse(
            where, key, value, "a priority puts messages on a queue no partition owner reads"
        )
    if key == "task_always_eager" and value:
        raise _refuse(
            where, key, value, "an eager call runs in the caller, outside its entity's worker"
        )
    if key == "task_routes":
        _check_routes(value, where)
    if key == "task_annotations":
        _check_annotations(value, where)


def _check_routes(value: Any, where: str) -> None:
    """Refuses a route (a task name, glob or regex of a mapping) that matches our tasks."""
    from celery.app.routes import MapRoute

    for router in _as_list(value):
        if not isinstance(router, Mapping):
            continue  # a router function or its import path: our router runs before it
        matches = MapRoute(router)
        for task in OWN_TASKS:
            route = matches(task)
            if route is not None:
                raise ConfigurationError(
                    f"{where}: task_routes sends {task!r} to {route!r}, which is not allowed: "
                    "this app routes its own tasks (an entity's messages go to its "
                    "partition); route only your own tasks"
                )


def _check_annotations(value: Any, where: str) -> None:
    for annotation in _as_list(value):
        if not isinstance(annotation, Mapping):
            continue
        for key in annotation:
            if not isinstance(key, str):
                continue
            if key == "*" or key in OWN_TASKS:
                raise _refuse(
                    where,
                    "task_annotations",
                    {key: annotation[key]},
                    f"it changes this app's tasks ({', '.join(OWN_TASKS)}); annotate only "
                    "your own tasks",
                )
