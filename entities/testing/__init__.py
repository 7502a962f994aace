"""The test kit: run entities in a test, in-process, without a broker or a server.

The runtime half is :class:`workers.testing.Harness`: it applies messages with
the worker's own Processor (the real apply and commit code) on an SQLite store,
with a virtual clock, and fires alarms on demand::

    from workers.testing import Harness

    with Harness() as h:
        assert h.call(Counter, "a", "increment", 5) == 5
        h.advance(60)
        h.drain_alarms()

It lives in ``workers``, not here, because it runs worker code, and
``entities`` never imports ``workers`` (tests/test_public_api.py pins it): a
client, or a module that only defines entities, never loads the worker
runtime. This package holds the runtime-free half of the kit:

- :class:`VirtualClock`, the clock the harness installs (``entities.clock``);
- :func:`celery_message`, the bytes a Redis queue holds for one
  ``send_to_entity`` call, for tests that feed raw messages to the runtime.
"""

from __future__ import annotations

from entities.clock import VirtualClock
from entities.transport import celery_message

__all__ = ["VirtualClock", "celery_message"]
