"""What the SQL store's parts share: times, text, and the one boundary where driver
errors become StoreError (and FenceError for a lost race)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError, StatementError

from entities import clock
from entities.errors import ConfigurationError, DataRefused, FenceError, StoreError
from entities.store import schema as t

T = TypeVar("T")

#: Raised by drivers and JSON serializers, unwrapped, for values they cannot send
#: (a lone surrogate in a str, a non-JSON object in a JSON column, an int too large).
DRIVER_DATA_ERRORS = (UnicodeError, TypeError, ValueError, OverflowError)
#: SQLSTATE classes of errors caused by the values sent, not by the server or the link:
#: 22 data exception (NUL or untranslatable text, numeric out of range, ...), 54 program
#: limit exceeded (a value too large for an index or a JSON document).
_DATA_SQLSTATE_CLASSES = ("22", "54")


def refused_data(exc: BaseException) -> bool:
    """True if ``exc`` says the store refused a value it was sent (the data's fault).

    Connection loss, timeouts and server errors are not: they are the store's, and
    retrying may help.
    """
    if isinstance(exc, StatementError) and exc.orig is not None:
        exc = exc.orig  # SQLAlchemy's wrapper around what the driver raised
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _DATA_SQLSTATE_CLASSES
    # PEP 249 names the error for "problems with the processed data" DataError in every
    # driver (psycopg raises it, with no SQLSTATE, for a NUL it refuses to send).
    if any(cls.__name__ == "DataError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, DRIVER_DATA_ERRORS)


def translate(exc: BaseException) -> StoreError:
    """The project's error for a driver error: DataRefused if the data was refused, else
    StoreError (the one place, with :func:`entities.store.sql_commit.commit`'s fences,
    where driver errors are translated)."""
    if refused_data(exc):
        return DataRefused(f"the state store cannot take this data: {exc}")
    return StoreError(f"state store error: {exc}")


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC (the runtime's clock, virtual under the test kit)."""
    return clock.now()


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite keeps a datetime's wall time and drops its offset: store every time in UTC.
    return _aware(value).astimezone(dt.UTC)


def _text(value: str) -> str:
    # Postgres text cannot hold NUL; a dead letter keeps the rest of what arrived.
    return value.replace("\x00", "\ufffd")


class SQLTables:
    """The engine, its dialect, and transactions whose driver errors are translated."""

    engine: Engine
    dialect: str
    _insert: Any  # the dialect's insert(), with on_conflict_do_nothing/do_update

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (FenceError, ConfigurationError):
            raise
        except IntegrityError as exc:
            raise FenceError(f"a concurrent writer got there first: {exc.orig}") from exc
        except (SQLAlchemyError, *DRIVER_DATA_ERRORS) as exc:
            raise translate(exc) from exc

    def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    # A single-statement read needs no transaction: autocommit saves the
                    # ROLLBACK round trip a pooled connection otherwise pays on return.
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                return fn(conn)
        except (SQLAlchemyError, *DRIVER_DATA_ERRORS) as exc:
            raise translate(exc) from exc

    def _check_epoch(self, conn: Connection, partition: int, epoch: int) -> dt.datetime | None:
        """Raises FenceError unless ``partition`` is at ``epoch``; returns the server's
        clock on Postgres (read in the same statement), None on SQLite."""
        columns: list[Any] = [t.partitions.c.epoch]
        if self.dialect == "postgresql":
            columns.append(sa.func.now())
        row = conn.execute(
            sa.select(*columns)
            .where(t.partitions.c.partition == partition)
            .with_for_update(read=True)
        ).first()
        current = row[0] if row is not None else None
        if current != epoch:
            raise FenceError(
                f"partition {partition} is now at epoch {current}; this owner holds epoch "
                f"{epoch} and may no longer commit",
                stale_epoch=True,
            )
        return row[1] if row is not None and len(row) > 1 else None
