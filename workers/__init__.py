"""What runs inside a Celery worker: the app, the send_to_entity task, the partition service.

``celery -A workers worker`` serves entities; ``from workers import app,
send_to_entity`` gives clients the app and the task. Importing this package
imports ``ENTITIES_MODULES`` (after the task exists, so an entity module may
import it), so the exceptions of those entities reach callers as their own
classes.
"""

from entities.registry import ensure_modules
from workers.app import app
from workers.task import send_to_entity

ensure_modules()

__all__ = ["app", "send_to_entity"]
