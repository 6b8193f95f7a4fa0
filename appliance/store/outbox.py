"""The outbound queue's door: :class:`Outbox`, over the live index or on its own.

The daemon reaches the queue as ``archive.outbox``; the ``send`` and ``queue``
commands open the same index on their own (:func:`open_outbox`) while the
daemon runs or not: SQLite (WAL) lets two processes write, and the daemon's
workers find what the command queued at their next look (about a second).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from appliance.store.index import Index, QueueItem, Settled


class Outbox:
    """The queue operations, with a hook told which destinations got new items."""

    def __init__(self, index: Index) -> None:
        self._index = index
        # Set by the outbound engine: wakes the destinations' workers at once.
        self.on_queued: Callable[[Sequence[str]], None] = lambda destinations: None
        # Set by the web application: wakes the send requests that wait for their
        # task (``"Synchronous": true``) once outcomes are committed.
        self.on_settled: Callable[[], None] = lambda: None

    def request(self, destination: str, uids: Sequence[str]) -> tuple[int, int]:
        """Queue every instance of these study/series/instance UIDs for ``destination``:
        (task id, instance count); UnknownResources when a UID names nothing."""
        task = self._index.queue_request(destination, uids)
        self.on_queued((destination,))
        return task

    def commitment(self, destination: str, transaction_uid: str, payload: str) -> int:
        """Queue a storage commitment report (durable once this returns): the task id."""
        task = self._index.queue_commitment(destination, transaction_uid, payload)
        self.on_queued((destination,))
        return task

    def due(self, destination: str, now: float, limit: int) -> list[QueueItem]:
        """The pending items of ``destination`` due at ``now``, reports first."""
        return self._index.queue_due(destination, now, limit)

    def settle(self, outcomes: Sequence[Settled], max_retry: float) -> None:
        """Record one attempt's outcomes; failures back off up to ``max_retry`` s.
        Returns once they are committed."""
        self.settle_later(outcomes, max_retry)()
        if outcomes:
            self.on_settled()

    def settle_later(self, outcomes: Sequence[Settled],
                     max_retry: float) -> Callable[[], None]:
        """:meth:`settle` without waiting: returns once the outcomes are queued for
        the index's writer, with a function that waits for their commit (raising
        its error). Outcomes are committed in the order they were given."""
        if outcomes:
            return self._index.queue_settle(outcomes, max_retry)
        return lambda: None

    def next_due(self) -> dict[str, float]:
        """destination -> when its next pending item is due."""
        return self._index.queue_next_due()

    def release_stable(self, now: float) -> list[str]:
        """Queue the instances of studies now stable; the destinations concerned."""
        return self._index.release_stable_studies(now)

    def next_stable_due(self) -> float | None:
        """When the next debounced study becomes stable, or None."""
        return self._index.next_stable_due()

    def summary(self) -> list[dict]:
        """Counts, bytes, oldest pending item and last error per destination."""
        return self._index.queue_summary()

    def items(self, destination: str | None = None, limit: int = 100) -> list[dict]:
        """The pending items, oldest first."""
        return self._index.queue_items(destination, limit)

    def retry(self, destination: str | None = None, task_id: int | None = None,
              item_id: int | None = None) -> int:
        """Make pending (and cancelled) items due now; how many."""
        n = self._index.queue_retry(destination, task_id, item_id)
        self.on_queued((destination,) if destination else ())
        return n

    def cancel(self, destination: str | None = None, task_id: int | None = None,
               item_id: int | None = None) -> int:
        """Cancel pending items (a cancelled item no longer holds back its study); how many."""
        n = self._index.queue_cancel(destination, task_id, item_id)
        self.on_queued((destination,) if destination else ())  # held items may be free now
        return n

    def prune(self, rules_before: float, tasks_before: float) -> int:
        """Forget finished items (rule-made ones sooner than requested ones); how many."""
        return self._index.queue_prune(rules_before, tasks_before)

    def task(self, task_id: int) -> dict | None:
        """A task and its items' states, or None."""
        return self._index.queue_task(task_id)

    def task_ids(self) -> list[int]:
        """The ids of the tasks kept, oldest first."""
        return self._index.queue_task_ids()


@contextlib.contextmanager
def open_outbox(index_directory: Path) -> Iterator[Outbox]:
    """The queue of the index in ``index_directory``, opened for one command."""
    index = Index(Path(index_directory), lambda dirs: None)
    index.open()
    try:
        yield Outbox(index)
    finally:
        index.close()
