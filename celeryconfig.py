"""Celery settings of the entities app, derived from the ENTITIES_* environment.

`workers.app` loads this module. Celery options not covered by ENTITIES_*
variables can be added here or passed to ``app.conf.update``.
"""

from entities.settings import get_settings
from entities.transport import celery_config, ensure_broker

_settings = get_settings()
ensure_broker(_settings)
globals().update(celery_config(_settings))
