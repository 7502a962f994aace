"""The pytest plugin of the test kit, registered on install (the ``pytest11`` entry point).

Fixtures:

- ``entity_harness``: a fresh :class:`workers.testing.Harness` per test (SQLite,
  a virtual clock, no broker or server), closed after the test.
- ``entity_harness_settings``: keyword overrides for that harness's settings
  (``{}`` by default); override it in a conftest or a test module, e.g. to
  return ``{"alarm_misfire": "skip"}``.
- ``entity_harness_start``: the virtual clock's first time (None: now);
  override it to pin the clock.

The plugin imports nothing of the runtime until a test asks for a fixture, so
installing the package costs test suites that do not use it nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def entity_harness_settings() -> dict[str, Any]:
    """Settings overrides for ``entity_harness`` (none by default)."""
    return {}


@pytest.fixture
def entity_harness_start() -> dt.datetime | None:
    """The first time of ``entity_harness``'s virtual clock (None: now)."""
    return None


@pytest.fixture
def entity_harness(
    entity_harness_settings: dict[str, Any], entity_harness_start: dt.datetime | None
) -> Iterator[Any]:
    """A fresh in-process harness (a ``workers.testing.Harness``): call handlers, advance
    time, fire and drain alarms, inject faults; closed after the test."""
    # The one import of `workers` under entities/, deferred to the fixture's call: the test
    # asked for the runtime (tests/test_public_api.py allows exactly this).
    from workers.testing import Harness

    with Harness(entity_harness_start, **entity_harness_settings) as harness:
        yield harness
