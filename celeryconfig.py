"""A deployment's own Celery settings (Celery's ``celeryconfig`` convention).

Celery reads this module from the working directory of a worker, beat or
client (`celery -A workers worker` started here). It is never installed with
the package: copy it next to where you start workers and add settings, e.g.::

    worker_max_tasks_per_child = 1000
    broker_transport_options = {"socket_keepalive": True}
    task_routes = {"myapp.reports.*": {"queue": "reports"}}

ENTITIES_* settings win over what they cover (broker_url, result_backend,
result_expires, this app's routing and its JSON serializers). A setting that
would break the app stops the process with an error naming it: a non-JSON
serializer or accept_content (pickle), compression, task_protocol other than 2,
task_default_priority, task_always_eager, or a task_routes / task_annotations
entry that matches this app's tasks (entities.send_to_entity,
entities.dispatch_alarms). See entities/celeryconf.py.
"""
