"""Finding the message whose content makes its partition fail, so it cannot stall it.

Invariant: no message content can stall a partition. A failure the store or
broker causes (a lost connection, a version race) is retried with backoff and
blames no message. A failure a message's content may cause (an unexpected
error while applying, or :class:`~entities.errors.DataRefused`: a value the
store refuses) is a strike against the unacknowledged messages it touched, the
*suspects*. Strikes are forgotten only once the runner is past every suspect
(each acknowledged), never merely because some later batch went through: a
batch that succeeds while a suspect stays unacknowledged behind it (an
unflushed relaxed message holds the acknowledgement) proves nothing.

After ``POISON_STRIKES`` strikes the runner isolates: it fetches one message at
a time and commits and acknowledges each before fetching the next, so every
failure while isolating is the oldest in-flight message's own. That message,
failing ``POISON_STRIKES`` times alone, is dead-lettered and its sender gets
``BadMessage``. Once the runner is past every suspect it batches again.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: Failures in a row that a message's content may cause before the runner isolates,
#: and then before it dead-letters the message that fails alone.
POISON_STRIKES = 3


class Isolation:
    """One runner's strikes and suspects, and how many messages it may fetch at once."""

    def __init__(self, partition: int, batch_size: int) -> None:
        self.partition = partition
        self.batch_size = batch_size
        self.fetch_size = batch_size
        self.strikes = 0
        self.suspects = 0  # the oldest unacknowledged messages some strike may be about

    @property
    def active(self) -> bool:
        """True while messages go one at a time, each acknowledged before the next."""
        return self.fetch_size == 1 and self.suspects > 0

    def strike(self, suspects: int, lone: bool) -> bool:
        """Counts a failure that touched the ``suspects`` oldest unacknowledged messages.

        ``lone``: the failure happened while applying one message alone. Returns
        True if that message, the oldest in flight, is now to be dead-lettered.
        """
        if suspects == 0:
            return False  # nothing unacknowledged was touched: no message to blame
        self.suspects = max(self.suspects, suspects)
        self.strikes += 1
        if self.strikes < POISON_STRIKES:
            return False
        self.strikes = 0
        if not self.active:
            log.error(
                "partition %s: repeated errors a message may cause; applying one message at "
                "a time to find the one that fails",
                self.partition,
            )
            self.fetch_size = 1
            return False
        return lone

    def passed(self, acked: int) -> None:
        """Records that the ``acked`` oldest unacknowledged messages were acknowledged."""
        if not (acked and self.suspects):
            return
        if self.active:
            self.strikes = 0  # a new oldest message: its own strikes start at 0
        self.suspects = max(0, self.suspects - acked)
        if self.suspects == 0:
            self.strikes = 0
            if self.fetch_size != self.batch_size:
                log.info("partition %s: past the failing messages; batching again", self.partition)
            self.fetch_size = self.batch_size
