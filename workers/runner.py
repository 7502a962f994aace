"""The loop that serves one owned partition: fetch, apply, commit, reply, acknowledge.

The order of one iteration is the guarantee: commit, then replies, then the
acknowledgement. A batch's replies and acknowledgement go out in one script at
the start of the next iteration, in the same Redis round trip as the wait for,
and the fetch of, the next messages.

Messages of relaxed entities (``interval``, ``on_stop``) are replied to before
their commit, but their acknowledgement (and that of every
later message, since acknowledgement is positional) waits for the flush that
commits them. A failure before the acknowledgement leaves the messages in
flight; they are fetched again from the oldest and the processed-message
records make the second pass apply nothing twice.

A message whose content makes applying fail never stalls the partition: the
runner reports each failure to its :class:`~workers.poison.Isolation`, which
finds and dead-letters that message (the invariant is stated there).

Replies recorded with a commit are stored whoever stores them; the others (an
error, a read, a relaxed change) are stored only while the lease is still this
runner's, checked in the script that stores them, so an owner that lost its
partition answers nothing from its stale memory.

Records outlive their messages: the runner notes an acknowledgement watermark
(:meth:`~entities.store.Store.note_acked`, at most every ``ACK_MARK_EVERY_S``)
only at a moment when a confirmed acknowledgement left nothing it applied
unacknowledged, nothing uncommitted in memory, and nothing in the in-flight
list that an earlier owner or pass may have committed (``_settled``: since the
last claim, failure or resume, a fetch found the queue drained with no entity
held and what it fetched was applied). The purge deletes only records
committed before such a watermark (see :mod:`entities.store.base`).

The runner also moves its partition's due delayed messages (``countdown`` and
``eta``, see :mod:`entities.delayed`) to the queue, at least every
``DELAYED_POLL_S`` and when the next one is due, and puts back in the delayed
set a message fetched before it is due, before acknowledging it. Callbacks
recorded with a batch's replies (:mod:`workers.links`) are fired once the
settle that recorded them has been read.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable

import redis

from entities import clock, telemetry
from entities.delayed import DelayedSet
from entities.errors import BadMessage, DataRefused, FenceError, StoreError
from entities.messages import parse_envelope
from entities.routing import queue_name
from entities.store import CommitBatch, DeadLetter, OutboxMessage
from workers.broker import NO_REPLIES, Fetched, PartitionQueues, Replies
from workers.holds import Holds
from workers.links import LinkFirer, records
from workers.outbox import OutboxPublisher, Publisher
from workers.poison import POISON_STRIKES, Isolation
from workers.processor import Outcome, Processor
from workers.replies import ReplyWriter

log = logging.getLogger(__name__)

#: Seconds a blocking wait for new messages lasts before checking timers and stop.
WAIT_S = 0.5
#: Shortest blocking wait in seconds; a shorter one is a plain fetch. Redis rounds a
#: blocking timeout to milliseconds, and a 1 ms BLMOVE was seen to block until the
#: socket timed out (redis-server 6.2, the embedded one).
MIN_WAIT_S = 0.01
#: Longest pause in seconds between looks for due delayed messages.
DELAYED_POLL_S = 0.5
#: Seconds between sweeps of idle entities.
SWEEP_EVERY_S = 1.0
#: Most seconds between two acknowledgement watermarks of one partition (a tenth of
#: ENTITIES_DEDUP_RETENTION if that is shorter); a late one only keeps records longer.
ACK_MARK_EVERY_S = 60.0
#: Backoff bounds in seconds after an infrastructure error.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0

__all__ = ["LeaseLost", "PartitionRunner", "Publisher"]


class LeaseLost(Exception):
    """The partition's lease is no longer this runner's."""


class PartitionRunner(threading.Thread):
    """Serves one partition while this worker holds its lease at ``epoch``."""

    def __init__(
        self,
        partition: int,
        token: str,
        epoch: int,
        queues: PartitionQueues,
        processor: Processor,
        replies: ReplyWriter,
        publish: Publisher,
        batch_size: int,
        on_exit: Callable[[PartitionRunner, str], None],
        gate: threading.Event | None = None,
        links: LinkFirer | None = None,
    ) -> None:
        super().__init__(name=f"entities-p{partition}", daemon=True)
        self._gate = gate  # set once the runners started with this one may all work
        self.partition = partition
        self.token = token
        self.epoch = epoch
        self.queues = queues
        self.processor = processor
        self.replies = replies
        self.batch_size = batch_size
        self.on_exit = on_exit
        self._stopping = threading.Event()
        self.applied = 0
        self.pending = 0  # oldest in-flight messages applied but not acknowledged
        self.outbox = OutboxPublisher(
            partition, processor.store, processor.settings, publish, self._stopping
        )
        self.holds = Holds(queues.client, partition)
        self.isolation = Isolation(partition, batch_size)
        self._current: list[bytes] = []  # the batch being applied in this step
        self._exposed = 0  # unacknowledged messages whose effects this step touches
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        # This runner's own Redis connection; each fetch also renews the lease.
        self.lane = queues.lane(partition, token, int(processor.settings.lease_ttl_s * 1000))
        self._unsent: list[Outcome] = []  # replies of applied batches, not yet stored
        self._drained = False  # the last fetch emptied the queue: the next one may wait
        # Replies ride with the acknowledgement when the backend is the broker's database.
        self._replies_ride = replies.rides_on(queues.client)
        # Replies not committed, for a backend they cannot ride to: stored once the next
        # fetch has found the lease still ours.
        self._unfenced: list[Outcome] = []
        # Replies the processor keeps for its next commit (see workers.processor) of
        # messages a settle not yet read back acknowledges: dropped once it is read.
        self._acking: frozenset[str] = frozenset()
        # Nothing in the in-flight list beyond ``pending`` may have been committed by an
        # earlier owner or pass (see the module's docstring); False until shown.
        self._settled = False
        self._mark_every_s = min(ACK_MARK_EVERY_S, processor.settings.dedup_retention_s / 10)
        self._next_mark = 0.0
        self.delayed = DelayedSet(queues.client)
        self._next_delayed = 0.0  # when (clock seconds) to look for due delayed messages
        self.links = links
        self._links_due = links is not None  # a previous owner may have left some to fire

    def stop(self) -> None:
        """Asks the loop to finish its current batch, flush, and exit."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def run(self) -> None:
        if self._gate is not None:
            self._gate.wait()
        reason = "stopped"
        backoff = BACKOFF_MIN_S
        while True:
            try:
                if self._stopping.is_set():
                    self._flush()
                    break
                if not self._step():
                    reason = "lease lost"
                    break
                backoff = BACKOFF_MIN_S
            except LeaseLost:
                reason = "lease lost"
                break
            except FenceError as exc:
                if exc.stale_epoch:
                    log.error(
                        "zombie writer: partition %s epoch %s was taken over; giving it up: %s",
                        self.partition,
                        self.epoch,
                        exc,
                    )
                    reason = "zombie"
                    telemetry.emit("partition.zombie", partition=self.partition, epoch=self.epoch)
                    break
                backoff = self._recover(backoff, exc)
            except DataRefused as exc:  # a message's content: the store will never take it
                retry = self._blame(backoff, exc)
                if retry is None:
                    reason = "lease lost"
                    break
                backoff = retry
            except (StoreError, redis.RedisError, OSError) as exc:
                backoff = self._recover(backoff, exc)
            except Exception as exc:  # a bug: keep the messages, log loudly, retry
                log.exception("partition %s: unexpected error; retrying", self.partition)
                retry = self._blame(backoff, exc)
                if retry is None:
                    reason = "lease lost"
                    break
                backoff = retry
            if self._stopping.is_set() and self.pending == 0 and not self.processor.dirty:
                break  # stopping after a failed flush: the next owner re-applies what is in flight
        self.lane.close()
        self.on_exit(self, reason)

    def _step(self) -> bool:
        """One iteration; False if the lease is lost."""
        self._current, self._exposed = [], 0
        if self._links_due and not self.lane.settle_unread:
            self._fire_links()
        self._timers()
        if self.outbox.backlog:
            self.outbox.publish_backlog()  # a predecessor's rows go out before any of ours
        fetched = self._exchange()
        if fetched is None:
            return False
        control = self.holds.observe(fetched.paused, fetched.holds)
        if control.resume:
            self._flush()  # resuming needs every in-flight message unprocessed
            self._drained = False
            self._settled = False  # what it puts back in the queue may have been committed
            return self.holds.resume(self.token)
        if control.paused:
            self._drained = False  # no blocking wait: it would move a message in flight
            self._stopping.wait(WAIT_S / 2)
            return True
        raws = fetched.raws
        self._drained = len(raws) < self.isolation.fetch_size
        # A drained fetch took every unacknowledged message: once applied, nothing left
        # in flight may have been committed before (held messages may, hence the check).
        settles = self._drained and not fetched.holds
        if not raws:
            self._settled = self._settled or settles
            return True
        started, started_at = time.perf_counter(), time.time()
        self._current, self._exposed = raws, self.pending + len(raws)
        result = self.processor.process(raws, self.epoch, control.held)
        self._settled = self._settled or settles
        self._unsent.extend(result.outcomes)
        self._publish(result.outbox)
        if result.held and not self.holds.hold(result.held, self.token):
            raise LeaseLost(self.partition)
        if result.misrouted:
            self.queues.forward(result.misrouted)
        if result.delayed:  # fetched early: back to the delayed set before their ack
            self.delayed.add(self.partition, result.delayed)
            self._next_delayed = 0.0
        self.pending += len(raws)
        self.applied += len(raws)
        telemetry.emit(
            "message.applied",
            {"messages": len(raws), "duration_s": time.perf_counter() - started},
            partition=self.partition,
            started_at=started_at,
            raws=raws,
            outcomes=result.outcomes,
        )
        if self.isolation.active or (
            self.processor.dirty and self.pending >= self.processor.settings.max_unacked
        ):
            self._flush()  # isolating: this message is committed and acknowledged alone
        return True

    def _exchange(self) -> Fetched | None:
        """Stores the unsent replies, acknowledges what is committed, waits if the queue
        was empty, and fetches the next messages: one Redis round trip."""
        replies = self._take_replies()
        ack = 0 if self.processor.dirty else self.pending
        wait = 0.0
        if self._drained:
            due = self.processor.flush_in()
            delayed_in = self._next_delayed - clock.now().timestamp()
            wait = min(WAIT_S, delayed_in, WAIT_S if due is None else due)
            if wait < MIN_WAIT_S:
                wait = 0.0  # due now, or nearly: fetch without waiting
        # Every applied message acknowledged: the replies kept for a later commit need none.
        acking = self.processor.kept_replies() if ack and ack == self.pending else frozenset()
        previous, self._acking = self._acking, frozenset()
        fetched = self.lane.exchange(
            self.isolation.fetch_size, self.pending, replies=replies, ack=ack, wait_s=wait
        )
        if fetched is not None:
            self.processor.acknowledged(previous)  # its settle was read back by now
            if self.lane.confirmed:
                self.processor.acknowledged(acking)
            else:
                self._acking = acking
            self.pending -= ack
            self.isolation.passed(ack)
            self._store_unfenced()
            if self.lane.confirmed:
                self._mark_acked()
        return fetched

    def _take_replies(self) -> Replies:
        """The unsent replies to send through the broker's client (others are sent here)."""
        outcomes, self._unsent = self._unsent, []
        if not outcomes:
            return NO_REPLIES
        if self._replies_ride:
            replies = self.replies.prepare(outcomes)
        else:
            self.replies.write([o for o in outcomes if o.committed])
            self._unfenced.extend(o for o in outcomes if not o.committed)
            replies = NO_REPLIES
        if self.links is not None and any(o.links for o in outcomes):
            replies = dataclasses.replace(
                replies,
                links=records(outcomes, self.partition, self.replies.backend),
                link_ttl_s=int(self.processor.settings.dedup_retention_s),
            )
            self._links_due = True
        return replies

    def _fire_links(self) -> None:
        """Fires the callbacks recorded with settled replies; on a broker error they stay
        recorded and are fired at a later step."""
        assert self.links is not None
        self._links_due = False
        try:
            self.links.fire_pending(self.partition)
        except Exception:
            log.warning("partition %s: could not fire callbacks; will retry", self.partition)
            self._links_due = True

    def _store_unfenced(self) -> None:
        """Stores the replies held back for a backend they cannot ride to (the lease was
        just found ours)."""
        if self._unfenced:
            outcomes, self._unfenced = self._unfenced, []
            self.replies.write(outcomes)

    def _mark_acked(self) -> None:
        """Notes an acknowledgement watermark if nothing applied is unacknowledged now."""
        if self.pending or self.processor.dirty or not self._settled:
            return
        now = time.monotonic()
        if now < self._next_mark:
            return
        self.processor.store.note_acked(self.partition, self.epoch)
        self._next_mark = now + self._mark_every_s

    def _timers(self) -> None:
        now_s = clock.now().timestamp()
        if now_s >= self._next_delayed - MIN_WAIT_S:  # a wait shorter than that is none
            moved, nxt = self.delayed.move_due(self.partition, int(now_s * 1000))
            poll_at = now_s + DELAYED_POLL_S
            self._next_delayed = poll_at if nxt is None else min(poll_at, nxt / 1000)
            if moved:
                self._drained = False
        due = self.processor.flush_in()
        if due is not None and due <= 0:
            self._flush()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            if self.processor.sweep():
                self._flush()
                self.processor.sweep()

    def _flush(self) -> None:
        """Commits every pending change, publishes its outbox, acknowledges what it covers."""
        self._publish(self.processor.flush(self.epoch))
        self._ack()

    def _ack(self) -> bool:
        """Stores the unsent replies, then acknowledges every pending message."""
        replies = self._take_replies()
        if not self.lane.settle(replies, self.pending):
            raise LeaseLost(self.partition)
        acked, self.pending = self.pending, 0
        self.isolation.passed(acked)
        self.processor.acknowledged()
        self._acking = frozenset()
        self._store_unfenced()
        self._mark_acked()
        return True

    def _publish(self, outbox: list[OutboxMessage]) -> None:
        self.outbox.publish(outbox)

    def _blame(self, backoff: float, exc: BaseException) -> float | None:
        """Recovers from a failure a message's content may have caused, counting it against
        the unacknowledged messages it touched; returns the next backoff, or None if the
        lease turned out lost."""
        suspects = max(self.pending, self._exposed)
        current = self._current
        backoff = self._recover(backoff, exc)
        try:
            # Isolating, every message is acknowledged before the next is fetched, so a
            # lone message that failed is the oldest in flight.
            if self.isolation.strike(suspects, lone=len(current) == 1):
                self._dead_letter(current[0], exc)
        except LeaseLost:
            return None
        except Exception:
            log.exception("partition %s: could not set a message aside", self.partition)
        return backoff

    def _dead_letter(self, raw: bytes, exc: BaseException) -> None:
        """Sets the oldest in-flight message aside: a dead letter, an error reply, acked."""
        reason = f"applying it failed {POISON_STRIKES} times: {exc!r}"
        log.error("partition %s: dead-lettering a message: %s", self.partition, reason)
        self.processor.store.commit(
            CommitBatch(
                self.partition,
                self.epoch,
                dead_letters=[
                    DeadLetter(
                        queue_name(self.partition), reason, raw[:65536].decode("utf-8", "replace")
                    )
                ],
            )
        )
        env = parse_envelope(raw, self.processor.settings.max_message_bytes)
        if env.task_id and not env.silent:
            self.replies.write([Outcome.failure(env.task_id, BadMessage(reason))])
        if not self.lane.settle(NO_REPLIES, 1):
            raise LeaseLost(self.partition)
        self.isolation.passed(1)
        telemetry.emit("message.dead_lettered", queue=queue_name(self.partition), reason=reason)

    def _recover(self, backoff: float, exc: BaseException) -> float:
        # Every message not acknowledged is fetched again, from the oldest; those
        # already committed are recognised by their records and replied to again.
        self.processor.reset()
        self.pending = 0
        self._unsent = []
        self._unfenced = []
        self._acking = frozenset()
        self._drained = False
        self._settled = False
        log.warning("partition %s: %s; retrying in %.2fs", self.partition, exc, backoff)
        self._stopping.wait(backoff * (0.5 + random.random()))
        return min(backoff * 2, BACKOFF_MAX_S)
