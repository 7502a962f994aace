"""Telling an unknown entity type from a known one that has nothing stored yet."""

from __future__ import annotations

from entities.errors import UnknownEntityType


def require_known(entity_type: str) -> None:
    """Raises UnknownEntityType unless ``entity_type`` is a class of ENTITIES_MODULES or the
    store holds an entity of it (a type whose module this shell does not import)."""
    from entities import registry
    from entities.cli._output import import_entity_modules
    from entities.client import get_store
    from entities.settings import get_settings

    import_entity_modules()
    if registry.find(entity_type) is not None or get_store().list_ids(entity_type, 1, None):
        return
    modules = ", ".join(get_settings().modules) or "not set"
    known = ", ".join(registry.names()) or "none"
    raise UnknownEntityType(
        f"unknown entity type {entity_type!r}: no entity class has that name (known types: "
        f"{known}; ENTITIES_MODULES: {modules}) and the store holds no {entity_type!r} entity"
    )
