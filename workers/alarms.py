"""Alarm dispatch: the periodic task `celery -A workers beat` sends and any worker runs.

Every ``alarm_poll_s`` (ENTITIES_ALARM_POLL, 0.25 s) beat sends
``entities.dispatch_alarms``. The worker that takes it claims due alarms in
batches, earliest first (``FOR UPDATE SKIP LOCKED`` on Postgres), commits the
claim, then pushes one ``__alarm__`` message per alarm onto its entity's
partition queue, a batch per Redis round trip; it goes on while batches come
back full (for at most ``BUDGET_S``). The entity fires the alarm only if no
change it made and has not committed yet (staged earlier in the batch, or held
unflushed by a relaxed entity) cancels, replaces or clears it, and the stored
row is still that scheduling (same scheduling id, attempt count, status
``scheduled``); it removes the row in the commit that holds the handler's
effect. Hence:

- a cancelled or replaced alarm never fires: its scheduling is gone, or is
  going with a change the entity made before the firing;
- a message sent twice (a second beat, a redispatch, a broker redelivery)
  changes nothing the second time: its task id ``alarm-<scheduling>-<attempt>``
  is a processed-message key, and the row is gone or changed after the first;
- any number of beats and workers may run at once: claims skip each other.

A dispatch that dies between its claim and its publish leaves alarms claimed
but unsent; they are claimed again ``alarm_redispatch_s`` (30 s) later. A
dispatch task that waited longer than its short expiry is dropped unrun, so a
beat that ran while every worker was down leaves no backlog of dispatches.

Dispatch is idempotent per scheduling and attempt: the push of its message
and a mark named by its task id are one Redis script, in the partition's hash
slot, and a mark present means the message was pushed already (it is queued,
held behind a paused entity, in flight, or applied), so a redispatch pushes
nothing. An alarm of a paused entity or of a partition lagging behind
therefore stays one message in the queue, however often it is claimed again;
only after ``SENT_MARK_S`` is a copy pushed again (a duplicate is then applied
once, as any). A redispatch after a dispatch that died before its push finds
no mark and pushes.

Misfires: an alarm found late because beat or the workers were down, or
dispatch fell behind. ENTITIES_ALARM_MISFIRE decides, per alarm, when a
dispatch claims it:

- ``fire_once`` (default): it fires once, late. An alarm is one scheduling,
  not a series of ticks, so downtime never causes a flood; a handler that
  reschedules itself resumes its rhythm from the late firing.
- ``skip``: an alarm more than ENTITIES_ALARM_MISFIRE_TOLERANCE seconds (60)
  late does not fire. It is kept with status ``skipped`` and the reason,
  listed by ``entities.failed_alarms()`` and fired by
  ``entities.retry_alarm()``; scheduling the name again replaces it. It is
  kept, not deleted, because a self-rescheduling entity whose alarm vanished
  would stop without a trace. Lateness is judged at the claim: an alarm
  claimed in time fires even if its message then waits in a queue.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from entities import clock
from entities.messages import OP_ALARM
from entities.routing import partition_for, queue_name
from entities.settings import Settings, get_settings
from entities.store import Alarm, SQLStore, Store
from entities.transport import DISPATCH_ALARMS_TASK, celery_message
from workers.app import app
from workers.broker import redis_from_url

log = logging.getLogger(__name__)

#: Seconds one dispatch keeps claiming full batches before leaving the rest to the next.
BUDGET_S = 2.0

Publisher = Callable[[list[Alarm]], None]

#: Seconds a pushed alarm message's mark lives: no second copy is pushed meanwhile.
SENT_MARK_S = 3600

# KEYS: the mark, the partition queue; ARGV: the mark's lifetime (s), the message.
_PUSH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('LPUSH', KEYS[2], ARGV[2])
    return 1
end
return 0
"""

_lock = threading.Lock()
_opened: dict[int, tuple[SQLStore, redis.Redis]] = {}


def alarm_call(alarm: Alarm) -> tuple[str, list[Any]]:
    """The task id and send_to_entity arguments that fire one attempt of one scheduling."""
    msg = {"op": OP_ALARM, "args": [alarm.name, alarm.scheduling_id, alarm.attempts]}
    task_id = f"alarm-{alarm.scheduling_id}-{alarm.attempts}"
    return task_id, [alarm.entity_type, alarm.entity_id, msg]


def claim(
    store: Store, settings: Settings, limit: int | None = None, now: dt.datetime | None = None
) -> list[Alarm]:
    """Claims one batch of due alarms under the misfire policy (see the module docstring)."""
    now = clock.now() if now is None else now
    skip_before = None
    if settings.alarm_misfire == "skip":
        skip_before = now - dt.timedelta(seconds=settings.alarm_misfire_tolerance_s)
    return store.claim_due_alarms(
        now, limit or settings.alarm_batch_size, settings.alarm_redispatch_s, skip_before
    )


def dispatch(
    store: Store, settings: Settings, publish: Publisher, budget_s: float = BUDGET_S
) -> int:
    """Claims and publishes due alarms while batches come back full; returns how many sent."""
    started = time.monotonic()
    sent = 0
    while True:
        batch = claim(store, settings)
        due = [a for a in batch if a.status == "scheduled"]
        if due:
            publish(due)
            sent += len(due)
        skipped = len(batch) - len(due)
        if skipped:
            log.warning(
                "%s alarm(s) more than %s s late were not fired (ENTITIES_ALARM_MISFIRE=skip); "
                "entities.failed_alarms() lists them, entities.retry_alarm() fires one",
                skipped,
                settings.alarm_misfire_tolerance_s,
            )
        if len(batch) < settings.alarm_batch_size or time.monotonic() - started > budget_s:
            return sent


def publisher(client: redis.Redis, partitions: int) -> Publisher:
    """Pushes alarm messages onto their partition queues, a whole batch in one round trip.

    Each is the message ``send_task`` would leave there (see
    :func:`entities.transport.celery_message`); going through Celery costs
    two round trips per message, which would cap dispatch at a few hundred
    alarms a second.
    """

    push_once = client.register_script(_PUSH_ONCE)

    def publish(alarms: list[Alarm]) -> None:
        with client.pipeline(transaction=False) as pipe:
            for alarm in alarms:
                task_id, (entity_type, entity_id, msg) = alarm_call(alarm)
                queue = queue_name(partition_for(entity_type, entity_id, partitions))
                message = celery_message(entity_type, entity_id, msg, task_id, ignore_result=True)
                push_once(
                    keys=[sent_mark(queue, task_id), queue],
                    args=[SENT_MARK_S, message],
                    client=pipe,
                )
            pipe.execute()

    return publish


def sent_mark(queue: str, task_id: str) -> str:
    """The Redis key marking that the alarm message ``task_id`` was pushed onto ``queue``
    (in the queue's hash slot, so one script sees both)."""
    return f"{queue}.alarm-sent.{task_id}"


def _connections(settings: Settings) -> tuple[SQLStore, redis.Redis]:
    """This process's store and Redis client for dispatching (a forked child opens its own)."""
    pid = os.getpid()
    with _lock:
        found = _opened.get(pid)
        if found is None:
            for store, _client in _opened.values():  # the parent's sockets are not ours to close
                store.engine.dispose(close=False)
            _opened.clear()
            store = SQLStore(settings.database_url, pool_size=2)
            store.check_schema()
            found = _opened[pid] = (store, redis_from_url(settings.broker_url))
        return found


class _QuietDispatch(logging.Filter):
    """Drops Celery's INFO lines about each dispatch run (eight a second from beat and the
    worker at the default poll) unless the logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or logging.getLogger(record.name).isEnabledFor(
            logging.DEBUG
        ):
            return True
        args = record.args
        mentioned = args.get("name") if isinstance(args, Mapping) else args
        return DISPATCH_ALARMS_TASK not in str(mentioned)


for _logger in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_logger).addFilter(_QuietDispatch())


@app.task(name=DISPATCH_ALARMS_TASK, ignore_result=True, acks_late=False)  # type: ignore[untyped-decorator]
def dispatch_alarms() -> int:
    """Sends every due alarm to its entity (beat runs this every ENTITIES_ALARM_POLL s)."""
    settings = get_settings()
    store, client = _connections(settings)
    sent = dispatch(store, settings, publisher(client, settings.partitions))
    if sent:
        log.debug("dispatched %s alarm(s)", sent)
    return sent
