"""The registry of entity classes by their stable type name.

Every process that applies or sends messages imports ``ENTITIES_MODULES``:
workers when they start (an unimportable module stops them), clients at their
first use of a client helper and when they import ``workers`` (an unimportable
module is logged and skipped there). So a class registered by those modules is
known everywhere, and an entity's own exception reaches a client as its own
class: Celery rebuilds a failure's ``exc_module.exc_type`` only from a module
the client has already imported.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from entities.errors import ConfigurationError, DefinitionError, UnknownEntityType

if TYPE_CHECKING:
    from entities.model import Entity

log = logging.getLogger(__name__)

_classes: dict[str, type[Entity]] = {}
_configured: tuple[str, ...] | None = None  # the ENTITIES_MODULES imported by ensure_modules


def register(cls: type[Entity]) -> None:
    """Registers ``cls`` under its type name; two different classes with one name is an error.

    Re-registering a class of the same module and qualified name replaces it,
    so reloading a module (as test runners do) is not an error.
    """
    name = cls.__entity_name__
    old = _classes.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise DefinitionError(
            f"entity type name {name!r} is already used by {old.__module__}.{old.__qualname__}; "
            f"give {cls.__qualname__} another name with `class {cls.__qualname__}(Entity, "
            f"name=...)`"
        )
    _classes[name] = cls


def lookup(name: str) -> type[Entity]:
    """The class registered under ``name``; raises UnknownEntityType."""
    try:
        return _classes[name]
    except KeyError:
        known = ", ".join(sorted(_classes)) or "none"
        raise UnknownEntityType(
            f"unknown entity type {name!r} (registered: {known}); is its module listed in "
            "ENTITIES_MODULES?"
        ) from None


def find(name: str) -> type[Entity] | None:
    """The class registered under ``name``, or None."""
    return _classes.get(name)


def type_name(entity_type: str | type[Entity]) -> str:
    """The type name of a class or a name (a name need not be registered here)."""
    if isinstance(entity_type, str):
        return entity_type
    name = getattr(entity_type, "__entity_name__", None)
    if not isinstance(name, str):
        raise TypeError(f"{entity_type!r} is neither an entity type name nor an Entity class")
    return name


def names() -> list[str]:
    """All registered type names, sorted."""
    return sorted(_classes)


def import_modules(modules: Iterable[str]) -> None:
    """Imports the modules that define entity classes (ENTITIES_MODULES)."""
    cwd = os.getcwd()
    if modules and cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # like `python -m`: modules of the current project are found
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"ENTITIES_MODULES names {module!r}, which cannot be imported: {exc}"
            ) from exc


def ensure_modules() -> None:
    """Imports the configured ENTITIES_MODULES, once per setting (for clients).

    Cheap after the first call. A module that cannot be imported is logged and
    skipped: a client can still send, but that module's exceptions reach it as
    classes Celery makes up (``celery.exceptions.<Name>``), not as their own.
    """
    global _configured
    from entities.settings import get_settings

    modules = get_settings().modules
    if modules == _configured:
        return
    _configured = modules
    for module in modules:
        try:
            import_modules([module])
        except ConfigurationError as exc:
            log.warning(
                "%s; its entities' exceptions will not reach this client as themselves", exc
            )
