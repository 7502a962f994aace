"""Replies of messages that staged no record, kept so a redelivery never runs them again.

Invariant: once a commit follows a message's application, a redelivery of that
message gets the reply it was first given, never one computed on a state that
includes later messages' effects. An error reply is recorded in the commit of
its own batch (which commits for it if nothing else does): applied again after
a later commit the message might succeed, out of order and against the error its
caller was told. The reply of a message that changed nothing waits here until
the first commit after it, which records it; once every message applied so far
is acknowledged (:meth:`KeptReplies.acknowledged`) no redelivery can follow, and
the replies are dropped unrecorded. At most ``MAX_KEPT`` wait; more are
committed on their own.
"""

from __future__ import annotations

from typing import Any

from entities import codec
from entities.messages import Envelope
from entities.store import CommitBatch, Processed
from workers.apply import Outcome
from workers.refusals import error_reply

#: Most replies of messages that changed nothing kept for the next commit; more commit.
MAX_KEPT = 1000


class KeptReplies:
    """One partition's replies waiting for the next commit, by message id."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._records: dict[str, Processed] = {}

    def keep(self, env: Envelope, outcome: Outcome, batch: CommitBatch) -> None:
        """Records an outcome that staged no record: an error in ``batch`` (which then
        commits), the reply of a message that changed nothing for the next commit."""
        if outcome.ok:
            if env.silent:
                return  # nobody reads its reply, and it changed nothing
            try:
                reply = codec.encode(outcome.value, Any, f"reply of {env.entity_type}.{env.op}")
            except Exception:
                return  # cannot be: the applier encoded it already
            self._records[env.task_id] = Processed(
                env.task_id, *env.key, self.partition, True, reply
            )
            return
        error = outcome.error if outcome.error is not None else RuntimeError("failed")
        batch.processed.append(
            Processed(env.task_id, *env.key, self.partition, False, error_reply(error))
        )

    def take_into(self, batch: CommitBatch, force: bool = False) -> bool:
        """Adds the kept records to ``batch`` if it commits anyway (or ``force``, or too
        many wait); True if it took them (call :meth:`clear` once it committed)."""
        if not (force or batch or len(self._records) >= MAX_KEPT):
            return False
        batch.processed.extend(self._records.values())
        return True

    def ids(self) -> frozenset[str]:
        """The ids of the messages whose replies wait for the next commit."""
        return frozenset(self._records)

    def snapshot(self) -> dict[str, Processed]:
        """A copy to :meth:`restore` after a batch that failed and is applied again."""
        return dict(self._records)

    def restore(self, records: dict[str, Processed]) -> None:
        """Puts back what :meth:`snapshot` copied."""
        self._records = records

    def acknowledged(self, ids: frozenset[str] | None = None) -> None:
        """Drops the replies of the acknowledged messages ``ids`` (None: all)."""
        if ids is None:
            self._records = {}
        else:
            for message_id in ids:
                self._records.pop(message_id, None)

    def clear(self) -> None:
        """Drops every kept reply (committed, or memory reset)."""
        self._records = {}
