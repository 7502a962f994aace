"""The test kit's transport: every client helper's call applied by a harness in this process.

A :class:`workers.testing.Harness` installs an :class:`InProcessTransport` at the
client's one injection point (:mod:`entities.transports`) while it is open, so
``Counter.ref(id).op()``, ``.op.delay()``, ``entities.delete``, the alarm helpers,
``entities.client.send`` and ``send_to_entity.delay`` are applied at once by the
harness, with the worker's own code, and no helper opens a connection or starts
a server. A call's result is already settled: its ``.get()`` returns the reply as
the result backend's JSON brings it back (decoded by the handler's annotation for
a typed reference), or raises the entity's error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import current_app, states
from celery.backends.base import DisabledBackend
from kombu.utils import json as kombu_json

from entities.errors import BadMessage
from entities.messages import validate_id
from entities.results import EntityResult
from entities.testing import celery_message
from entities.transports import Call, Transport

if TYPE_CHECKING:
    from workers.apply import Outcome
    from workers.testing import Harness

#: Send options the harness honours (the publish retries have nothing to retry in process);
#: any other (countdown, expires, link ...) is refused.
SUPPORTED_OPTIONS = frozenset({"ignore_result", "retry", "retry_policy"})


class InProcessResult(EntityResult[Any]):
    """The settled result of a call applied in process: an EntityResult (so a typed
    reference's ``.describe`` decodes its reply by the handler's annotation) that needs
    no backend, since its reply is known when the call returns."""

    @classmethod
    def of(cls, outcome: Outcome) -> InProcessResult:
        """The result of ``outcome``: its reply through JSON, or its error."""
        result = cls(outcome.task_id, backend=DisabledBackend(current_app))
        value: Any = outcome.error
        if outcome.ok:
            value = kombu_json.loads(kombu_json.dumps(outcome.value))
        result._cache = {
            "task_id": outcome.task_id,
            "status": states.SUCCESS if outcome.ok else states.FAILURE,
            "result": value,
            "traceback": None,
            "children": [],
            "date_done": None,
        }
        return result


class InProcessTransport(Transport):
    """Applies each call with ``harness``, at once, when it is sent."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    def send(self, call: Call) -> InProcessResult:
        refused = sorted(k for k, v in call.options.items() if v and k not in SUPPORTED_OPTIONS)
        if refused:
            raise BadMessage(
                f"the test harness applies a call when it is sent and cannot honour the send "
                f"option(s) {', '.join(refused)}; send without them in the harness"
            )
        entity_type = validate_id("entity type", call.entity_type)
        entity_id = validate_id("entity id", call.entity_id)
        raw = celery_message(
            entity_type,
            entity_id,
            call.msg,
            call.task_id,
            call.durability,
            bool(call.options.get("ignore_result", False)),
        )
        return InProcessResult.of(self._harness.deliver(entity_type, entity_id, raw))

    async def send_and_wait(self, call: Call, timeout_s: float | None) -> InProcessResult:
        """Applies the call at once; returns its settled result."""
        return self.send(call)
