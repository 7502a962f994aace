"""Celery settings of the entities app, derived from the ENTITIES_* environment.

`workers.app` loads this module. Celery options not covered by ENTITIES_*
variables can be added here or passed to ``app.conf.update``.
"""

from entities.settings import get_settings
from entities.transport import celery_config

# Reading the configuration connects nothing; the embedded broker (the default)
# is started when a worker, beat or a client's first send needs it.
globals().update(celery_config(get_settings()))
