"""What runs inside a Celery worker: the app, the send_to_entity task, the partition service.

``celery -A workers worker`` serves entities; ``from workers import app,
send_to_entity`` gives clients the app and the task.
"""

from workers.app import app
from workers.task import send_to_entity

__all__ = ["app", "send_to_entity"]
