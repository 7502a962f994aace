"""The loop that serves one owned partition: fetch, apply, commit, reply, acknowledge."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import redis

from entities.errors import FenceError, StoreError
from workers.broker import PartitionQueues
from workers.processor import Processor
from workers.replies import ReplyWriter

log = logging.getLogger(__name__)

#: Seconds a blocking wait for new messages lasts before checking for stop.
WAIT_S = 0.5
#: Backoff bounds in seconds after an infrastructure error.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0


class PartitionRunner(threading.Thread):
    """Serves one partition while this worker holds its lease at ``epoch``.

    The order of one iteration is the guarantee: commit, then replies, then
    the acknowledgement. A failure before the acknowledgement leaves the batch
    in flight; it is fetched again and the processed-message records make the
    second pass apply nothing twice.
    """

    def __init__(
        self,
        partition: int,
        token: str,
        epoch: int,
        queues: PartitionQueues,
        processor: Processor,
        replies: ReplyWriter,
        batch_size: int,
        on_exit: Callable[[PartitionRunner, str], None],
    ) -> None:
        super().__init__(name=f"entities-p{partition}", daemon=True)
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

    def stop(self) -> None:
        """Asks the loop to finish its current batch and exit."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def run(self) -> None:
        reason = "stopped"
        backoff = BACKOFF_MIN_S
        while not self._stopping.is_set():
            try:
                raws = self.queues.fetch(self.partition, self.token, self.batch_size)
                if raws is None:
                    reason = "lease lost"
                    break
                if not raws:
                    self.queues.wait(self.partition, WAIT_S)
                    continue
                outcomes = self.processor.process(raws, self.epoch)
                self.replies.write(outcomes)
                if not self.queues.ack(self.partition, self.token, len(raws)):
                    reason = "lease lost"
                    break
                self.applied += len(raws)
                backoff = BACKOFF_MIN_S
            except FenceError as exc:
                if exc.stale_epoch:
                    log.error(
                        "zombie writer: partition %s epoch %s was taken over; giving it up: %s",
                        self.partition, self.epoch, exc,
                    )
                    reason = "zombie"
                    break
                self._pause(backoff, exc)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except (StoreError, redis.RedisError, OSError) as exc:
                self.processor.reset()
                self._pause(backoff, exc)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception as exc:  # a bug: keep the messages, log loudly, retry
                log.exception("partition %s: unexpected error; retrying", self.partition)
                self.processor.reset()
                self._pause(backoff, exc)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.on_exit(self, reason)

    def _pause(self, backoff: float, exc: BaseException) -> None:
        log.warning("partition %s: %s; retrying in %.2fs", self.partition, exc, backoff)
        self._stopping.wait(backoff * (0.5 + random.random()))
