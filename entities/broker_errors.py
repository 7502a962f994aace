"""Where a client's send meets an unreachable broker: retried by the publish policy, then
:class:`~entities.errors.BrokerError`.

Invariant: an error that means "the server could not be reached" (redis-py's
``ConnectionError`` or ``TimeoutError``, kombu's ``OperationalError``, or Celery's
result consumer giving up on the result backend) never leaves a client's send as
it is: :func:`reaching` turns it into a BrokerError, which names the broker (and
the result backend when it is another one) with every password masked, and says
what to check. The direct publish retries under the same policy as Celery's own
publish (``task_publish_retry``, ``task_publish_retry_policy``), so both paths
give up after the same retries. Any other exception passes through unchanged.

A retried publish may reach the queue twice (a timeout after Redis took the
message); both copies carry one task id, so the entity applies it at most once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from kombu.exceptions import OperationalError

from entities.errors import BrokerError

T = TypeVar("T")

#: What the direct publish retries: redis-py's errors of an unreachable or stalled server.
RETRIED: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)

#: Celery's default publish retry policy, for keys an app's policy leaves out.
_DEFAULT_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1}

_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://[^:@/]*:)[^/]*@", re.I)
_QUERY_PASSWORD = re.compile(r"((?:^|[?&;])password=)[^&;]*", re.I)


def masked_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, as SQLAlchemy hides a database's
    (each URL of a ``;``-separated list, as Celery writes Sentinel URLs, and a
    ``password=`` query parameter too)."""
    return ";".join(
        _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", part)) for part in url.split(";")
    )


def publish_retrying(app: Any, publish: Callable[[], T]) -> T:
    """Runs ``publish`` under ``app``'s publish retry policy (Celery's, for the direct path)."""
    from kombu.utils.functional import retry_over_time

    if not app.conf.task_publish_retry:
        return publish()
    policy = {**_DEFAULT_POLICY, **(app.conf.task_publish_retry_policy or {})}
    keys = ("max_retries", "interval_start", "interval_step", "interval_max")
    result: T = retry_over_time(publish, RETRIED, **{k: policy[k] for k in keys})
    return result


async def publish_retrying_async(app: Any, publish: Callable[[], Awaitable[T]]) -> T:
    """:func:`publish_retrying` for an async publish (``redis.asyncio``): the same tries and
    pauses, awaited, so the event loop runs on between them."""
    policy = {**_DEFAULT_POLICY, **(app.conf.task_publish_retry_policy or {})}
    max_retries = policy["max_retries"] if app.conf.task_publish_retry else 0
    pause, retries = float(policy["interval_start"]), 0
    while True:
        try:
            return await publish()
        except RETRIED:
            if max_retries is not None and retries >= max_retries:
                raise
        retries += 1
        await asyncio.sleep(min(pause, float(policy["interval_max"])))
        pause += float(policy["interval_step"])


@contextmanager
def reaching(app: Any) -> Iterator[None]:
    """Turns an unreachable broker or result backend inside the block into BrokerError."""
    try:
        yield
    except BrokerError:
        raise
    except Exception as exc:
        cause = unreachable(exc)
        if cause is None:
            raise
        raise broker_error(app, cause) from exc


def unreachable(exc: BaseException) -> BaseException | None:
    """The connection error behind ``exc`` (itself, or a cause of Celery's wrapper), if any."""
    seen: BaseException | None = exc
    for _ in range(5):  # Celery wraps once or twice; never loop on a cyclic chain
        if seen is None:
            return None
        if isinstance(seen, (*RETRIED, OperationalError, ConnectionError)):
            return seen
        seen = seen.__cause__
    return None


def broker_error(app: Any, cause: BaseException) -> BrokerError:
    """The BrokerError for ``cause``: which servers, why, and what to check."""
    broker = str(app.conf.broker_url or "")
    backend = str(app.conf.result_backend or "")
    where = f"the broker at {masked_url(broker)}"
    check = "ENTITIES_BROKER_URL names it"
    if backend and backend != broker:
        where += f" (results at {masked_url(backend)})"
        check = "ENTITIES_BROKER_URL and ENTITIES_RESULT_BACKEND name them"
    why = _scrub(str(cause) or type(cause).__name__, broker, backend).rstrip(". ")
    return BrokerError(
        f"could not send to {where}: {why}. Check that Redis is running there and "
        f"reachable from this host, and that {check}; the call may not have been sent "
        "(sending it again with the same task_id applies it at most once)"
    )


def _scrub(text: str, *urls: str) -> str:
    """``text`` without any password of ``urls`` (a driver's message may quote a URL)."""
    for url in urls:
        for part in url.split(";"):
            try:
                password = urlsplit(part).password
            except ValueError:
                continue
            if password:
                text = text.replace(password, "***").replace(unquote(password), "***")
    return text
