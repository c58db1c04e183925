"""The rebalance listener and the offset state it owns (after aiokafka's
`examples/local_state_consumer.py`: a small listener holding the offsets; the loop apart).

The truth of where each partition stands is the next offset stored in PostgreSQL with the
effects of the records before it (`consumer_offsets`). On assignment the listener reads it
and seeks there; it also keeps it as the partition's *floor* (a record below it is never
decided again, whatever position a fetch comes from); on revocation it waits for the work in
flight (`lock`), so the next owner starts after this worker's last commit. Offsets are also
committed to Kafka, at most once per `KAFKA_COMMIT_INTERVAL_S`, for lag tools only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from worker.db.offsets import fetch_offsets
from worker.db.pool import connection
from worker.failures import SERVICE_ERRORS
from worker.metrics import Metrics
from worker.ordering import TickWatermarks
from worker.retry import describe, transient_retry
from worker.settings import KafkaSettings

log = structlog.get_logger(__name__)

# Kafka offsets are only for lag tools (the stored ones are in PostgreSQL): never wait long.
KAFKA_COMMIT_TIMEOUT_S = 5.0
# Kafka commits are batched off the hot path: at most one round trip per interval.
KAFKA_COMMIT_INTERVAL_S = 1.0


class OffsetKeeper(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped: its listener base class is Any to mypy
    """Where each owned partition stands, kept across rebalances."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        pool: asyncpg.Pool,
        kafka: KafkaSettings,
        metrics: Metrics,
        *,
        on_revoking: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self._pool = pool
        self._kafka = kafka
        self._metrics = metrics
        # Held by the loop while it works on a fetch: revocation waits for it.
        self.lock = asyncio.Lock()
        # Per partition, the first offset not applied yet as far as this worker knows.
        self.floor: dict[TopicPartition, int] = {}
        # Ticks before signals (`worker.ordering`): the owned price partitions' progress.
        self.ticks = TickWatermarks()
        self.fatal: BaseException | None = None
        # True while a revocation waits for the work in flight; `on_revoking` is told first,
        # so that a batch waiting to retry gives up instead of holding the rebalance.
        self.revoking = False
        self._on_revoking = on_revoking
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_kafka_commit = time.monotonic()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait for in-flight work so the next owner starts after our last commit."""
        self.revoking = True
        if self._on_revoking is not None:
            self._on_revoking()
        try:
            await self._revoke(revoked)
        finally:
            self.revoking = False

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            if revoked:  # aiokafka also calls this before the first assignment, with nothing
                log.info("partitions_revoked", partitions=names(revoked))
            await self.commit_kafka(only=revoked)
            self.ticks.forget(revoked)
            for tp in revoked:
                self.floor.pop(tp, None)
                # Another worker reports this partition's lag from now on.
                with contextlib.suppress(KeyError):
                    self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored with its effects."""
        self._metrics.assigned_partitions.set(len(assigned))
        if not assigned:
            return
        try:
            stored = await self._stored_offsets()
        except SERVICE_ERRORS as exc:
            # Without the stored offsets the consumer would fall back to Kafka's committed
            # ones; safe (effects are idempotent) but not what we promise: stop instead.
            self.fatal = exc
            log.exception("stored_offsets_unreadable", error=describe(exc))
            return
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                continue
            self.floor[tp] = max(offset, self.floor.get(tp, 0))
            try:
                self.consumer.seek(tp, offset)
            except IllegalStateError:
                # Reassigned while the offsets were read: the next assignment seeks.
                log.warning("seek_skipped_partition_reassigned", partition=names({tp}))
        log.info(
            "partitions_assigned",
            partitions=names(assigned),
            stored={f"{t}:{p}": o for (t, p), o in stored.items()},
        )

    async def _stored_offsets(self) -> dict[tuple[str, int], int]:
        async for attempt in transient_retry():
            with attempt:
                async with connection(self._pool) as conn:
                    return await fetch_offsets(
                        conn,
                        self._kafka.consumer_group,
                        [self._kafka.signals_topic, self._kafka.prices_topic],
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    def stored(self, next_offsets: dict[TopicPartition, int]) -> None:
        """These offsets were just stored with their records' effects."""
        self._uncommitted.update(next_offsets)
        for tp, offset in next_offsets.items():
            self.floor[tp] = max(offset, self.floor.get(tp, 0))

    async def commit_kafka_if_due(self) -> None:
        """`commit_kafka` when `KAFKA_COMMIT_INTERVAL_S` has passed since the last one."""
        if time.monotonic() - self._last_kafka_commit >= KAFKA_COMMIT_INTERVAL_S:
            await self.commit_kafka()

    async def commit_kafka(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the offsets stored in PostgreSQL since the last time to Kafka too.

        Only for lag tools: the database holds the truth, so a lost commit only delays
        what they show. Partitions no longer assigned are left to their new owner.
        """
        self._last_kafka_commit = time.monotonic()
        pending = {
            tp: offset for tp, offset in self._uncommitted.items() if only is None or tp in only
        }
        for tp in pending:
            del self._uncommitted[tp]
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in pending.items() if tp in assigned}
        if not offsets:
            return
        try:
            # Bounded: while the broker is away aiokafka waits for a group coordinator
            # forever, which would hold up the loop and a SIGTERM's drain with it.
            async with asyncio.timeout(KAFKA_COMMIT_TIMEOUT_S):
                await self.consumer.commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            log.warning("kafka_commit_failed", error=describe(exc), partitions=names(set(offsets)))


def names(tps: set[TopicPartition]) -> list[str]:
    """`topic:partition` of each, sorted (for logs)."""
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)
