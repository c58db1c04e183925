"""The order's writes (its promises and, with other workers, where this worker's partitions
stand), made beside the batch they allow rather than before it.

A promise (`worker.pipeline.timeline`) must be stored before anything applied on its
strength is: else a restart could place a late record earlier than what was already
applied. It need not be stored before that work *starts*, only before it *commits*. So the
fetch loop hands the promises that moved to `OrderWrites.write` and goes on releasing and
applying; every transaction of the pipeline calls `durable()` just before its commit, which
returns once everything handed over so far is stored (and raises what storing raised, so that
transaction stores nothing either). A signal at rest no longer waits for a write of the
order before its own transaction begins: the two run side by side.

The writes are committed without waiting for the disk (`synchronous_commit` off for their
transaction): they are visible at once, and the commit of any transaction that applies a
record on their strength comes later in the write-ahead log, so flushing it flushes them too.
A server crash can lose one only together with everything that relied on it.

One write runs at a time, and at most one more waits for it, taking everything handed over
until it starts (the promises merged, the latest bounds), so the writes never pile up behind
a slow server. A promise whose write failed (a stop or a rebalance cut its retries short)
stays pending and goes with the next write, which `durable()` starts if nothing else has.
A revocation waits for the writes (`settle`) and then forgets what was not stored: the
partitions' places are read again from the table at the assignment. Promises only move
forward in the table (`worker.db.bounds.STORE_PROMISES`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import partial

import asyncpg

from worker.db.bounds import Bound, publish_bounds, store_promises
from worker.db.pool import connection
from worker.pipeline.failures import Retrier
from worker.pipeline.timeline import Promise

__all__ = ["NO_WAIT_FOR_DISK", "OrderWrites", "Published"]

NO_WAIT_FOR_DISK = "SET LOCAL synchronous_commit TO off"

Where = tuple[str, int]  # (topic, partition)


class Published:
    """Bounds to tell the other workers (`worker.db.bounds.publish_bounds`), and what to do
    once they are written."""

    __slots__ = ("blocked", "bounds", "on_written")

    def __init__(
        self,
        bounds: Mapping[Where, Bound],
        blocked: Mapping[Where, bool],
        on_written: Callable[[], None],
    ) -> None:
        self.bounds = bounds
        self.blocked = blocked
        self.on_written = on_written


class OrderWrites:
    """The order's writes of one worker, in the background, one after the other."""

    def __init__(self, pool: asyncpg.Pool, group: str, retried: Retrier) -> None:
        self._pool = pool
        self._group = group
        self._retried = retried
        self._pending: dict[Where, Promise] = {}  # handed over, not known stored
        self._published: Published | None = None  # handed over, not taken by a write
        self._last: asyncio.Task[None] | None = None  # the latest write, done or not
        self._waiting = False  # the latest write waits for the one before and takes all

    @property
    def pending(self) -> int:
        """Promises handed over and not stored yet."""
        return len(self._pending)

    def write(self, promises: Mapping[Where, Promise], published: Published | None) -> None:
        """Store `promises` (and the bounds) after what was handed over before."""
        for where, promise in promises.items():
            held = self._pending.get(where)
            if held is None or held < promise:
                self._pending[where] = promise
        if published is not None:
            self._published = published
        if self._pending or self._published is not None:
            self._start()

    async def durable(self) -> None:
        """Return once everything handed over so far is stored; raise what storing raised
        (a failed write's promises go with a new one, started here if need be)."""
        last = self._last
        if last is not None and last.done() and _failed(last):
            self._start()
            last = self._last
        if last is not None:
            await asyncio.shield(last)

    async def settle(self) -> None:
        """Wait for the writes in flight, whatever becomes of them."""
        last = self._last
        if last is not None:
            await asyncio.wait([last])
            _failed(last)

    async def forget(self) -> None:
        """A revocation: wait for the writes in flight, then drop what they did not store
        (the assignment reads every partition's place from the table again)."""
        await self.settle()
        self._pending.clear()
        self._published = None
        self._last = None

    def _start(self) -> None:
        if self._waiting:
            return  # the write waiting to start takes this too
        self._waiting = True
        self._last = asyncio.create_task(self._write(self._last))

    async def _write(self, previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:
                # Its failure is not this write's: what it did not store is still pending.
                await asyncio.wait([previous])
                _failed(previous)
        finally:
            self._waiting = False
        promises = dict(self._pending)
        published, self._published = self._published, None
        if not promises and published is None:
            return
        try:
            await self._retried(
                "order-write",
                lambda: "the order's promises and this worker's places",
                partial(self._store, promises, published),
            )
        except BaseException:
            if published is not None and self._published is None:
                self._published = published  # goes with the next write
            raise
        for where, promise in promises.items():
            if self._pending.get(where) == promise:
                del self._pending[where]
        if published is not None:
            published.on_written()

    async def _store(self, promises: Mapping[Where, Promise], published: Published | None) -> None:
        async with connection(self._pool) as conn, conn.transaction():
            await conn.execute(NO_WAIT_FOR_DISK)
            if promises:
                await store_promises(conn, self._group, promises)
            if published is not None:
                await publish_bounds(conn, self._group, published.bounds, published.blocked)


def _failed(task: asyncio.Task[None]) -> bool:
    """Whether a finished write failed (its outcome is then marked as seen: the error is a
    transaction's to raise, not asyncio's to log)."""
    return task.cancelled() or task.exception() is not None
