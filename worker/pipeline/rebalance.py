"""The rebalance listener and the offset state it owns (after aiokafka's
`examples/local_state_consumer.py`: a small listener holding the offsets; the loop apart).

The truth of where each partition stands is the next offset stored in PostgreSQL with the
effects of the records before it (`consumer_offsets`). On assignment the listener reads it
and seeks there; it also keeps it as the partition's *floor* (a record below it is never
decided again, whatever position a fetch comes from); on revocation it waits for the work in
flight (`lock`), so the next owner starts after this worker's last commit. Offsets are also
committed to Kafka, at most once per `KAFKA_COMMIT_INTERVAL_S`, for lag tools only.

Before seeking, each stored offset is checked against the partition's log as it is now
(`worker.pipeline.offset_checks`): its start, its end and its topic's id
(`worker.pipeline.topic_ids`). A partition whose stored offset cannot belong to that log (a
recreated topic, another cluster) is *blocked*: paused, never consumed, never dropped from,
with one error line, the `signal_worker_partitions_blocked` gauge and `/readyz` failing until
an operator resolves it (`signal-worker offsets reset`, which needs every worker of the group
stopped). A stored offset below the log's start is consumed from the start, with the count
of offsets that were never processed logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from worker.db.bounds import read_promises
from worker.db.offsets import StoredOffset, fetch_stored, store_offsets
from worker.db.pool import connection
from worker.errors import WorkerError
from worker.metrics import Metrics
from worker.pipeline.batching import KafkaRecord, above
from worker.pipeline.kafka import not_co_partitioned
from worker.pipeline.offset_checks import Verdict, check, resolving_command
from worker.pipeline.ordering import names
from worker.pipeline.timeline import RANK_COMMAND, RANK_SIGNAL, RANK_SOL_TICK, Promise, Timeline
from worker.pipeline.topic_ids import topic_ids
from worker.retry import SERVICE_ERRORS, describe, transient_retry
from worker.settings import KafkaSettings

log = structlog.get_logger(__name__)

# Kafka offsets are only for lag tools (the stored ones are in PostgreSQL): never wait long.
KAFKA_COMMIT_TIMEOUT_S = 5.0
# Kafka commits are batched off the hot path: at most one round trip per interval.
KAFKA_COMMIT_INTERVAL_S = 1.0
# How often the owned partitions' topic ids and log ends are checked again while running
# (one metadata and two list-offsets requests): a topic recreated under the worker is
# blocked within about this long.
TOPIC_RECHECK_INTERVAL_S = 30.0


class OffsetKeeper(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped: its listener base class is Any to mypy
    """Where each owned partition stands, kept across rebalances."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        pool: asyncpg.Pool,
        kafka: KafkaSettings,
        metrics: Metrics,
        *,
        lateness: timedelta = timedelta(0),
        on_revoking: Callable[[], None] | None = None,
        on_revoke: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.consumer = consumer
        self._pool = pool
        self._kafka = kafka
        self._metrics = metrics
        # Held by the loop while it works on a fetch: revocation waits for it.
        self.lock = asyncio.Lock()
        # Per partition, the first offset not applied yet as far as this worker knows.
        self.floor: dict[TopicPartition, int] = {}
        # Per partition, the decision time of the record before its floor (None: unknown),
        # and its last promise in the order (`worker.pipeline.timeline`), as stored.
        self.floor_at: dict[TopicPartition, datetime | None] = {}
        self.promised: dict[TopicPartition, Promise] = {}
        # The owned partitions' records in one order (`worker.pipeline.timeline`).
        self.timeline: Timeline[TopicPartition] = Timeline(lateness)
        self.fatal: BaseException | None = None
        # Counts revocations: what the loop paused before one is no longer its to resume.
        self.generation = 0
        # True while a revocation waits for the work in flight; `on_revoking` is told first,
        # so that a batch waiting to retry gives up instead of holding the rebalance.
        self.revoking = False
        self._on_revoking = on_revoking
        # Awaited under the lock before anything is revoked (the order's writes in flight).
        self._on_revoke = on_revoke
        # Owned partitions that are not consumed, and why (`worker.pipeline.offset_checks`).
        self.blocked: dict[TopicPartition, Verdict] = {}
        # The id of each topic as the brokers gave it at the last assignment (None: unknown);
        # stored with the offsets.
        self.topic_ids: dict[str, str | None] = {}
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_kafka_commit = time.monotonic()
        self._last_recheck = time.monotonic()

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Held while the loop works on a fetch: a revocation waits for it to finish."""
        async with self.lock:
            yield

    def check_fatal(self) -> None:
        """Raise when the stored offsets could not be read at an assignment, or the user
        topics are no longer co-partitioned."""
        if isinstance(self.fatal, WorkerError):
            raise self.fatal
        if self.fatal is not None:
            raise WorkerError(f"cannot read stored offsets: {describe(self.fatal)}")

    def _co_partitioned(self) -> WorkerError | None:
        """The error when the signals and commands topics no longer have the same number
        of partitions (an operator added some to one while the worker ran): a user's
        signals and commands would land on partitions of different numbers, and their one
        order would no longer hold."""
        signals, commands = self._kafka.user_topics
        counts = [len(self.consumer.partitions_for_topic(t) or ()) for t in (signals, commands)]
        if 0 in counts or counts[0] == counts[1]:
            return None
        remedy = "give both the same count, then start the workers again"
        return not_co_partitioned(self._kafka, counts[0], counts[1], remedy, now="now ")

    def floor_of(self, tp: TopicPartition) -> int:
        """The first offset of `tp` not applied yet, as far as this worker knows."""
        return self.floor.get(tp, 0)

    def is_blocked(self, tp: TopicPartition) -> bool:
        """True when `tp` is owned but not consumed (`worker.pipeline.offset_checks`)."""
        return tp in self.blocked

    async def recheck_if_below(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        """Check the stored offsets again when a fetch starts below one: a seek a rebalance
        overtook, or a log that is not the one the offset belongs to (a topic recreated
        under the worker), which is then blocked, never dropped from."""
        if any(records and records[0].offset < self.floor_of(tp) for tp, records in batch.items()):
            await self.recheck()

    def unstored(self, tp: TopicPartition, fetched: list[KafkaRecord]) -> list[KafkaRecord]:
        """The records of `tp` at or above its floor: those below (a fetch from before the
        stored offset, a seek a rebalance overtook) have their effects committed and are not
        decided again."""
        records = above(fetched, self.floor_of(tp))
        if len(records) < len(fetched):
            log.warning(
                "records_below_stored_offset_dropped",
                partition=names({tp}),
                dropped=len(fetched) - len(records),
            )
        return records

    def rewind(self) -> None:
        """After abandoned work: every owned partition read again from its floor (the first
        record not stored), its buffered records forgotten and its place in the order
        restored (a reassignment does the same)."""
        self.timeline.restart()
        self.promised.update(self.timeline.promises())
        for tp in list(self.timeline.sources()):
            self.open(tp)
            with contextlib.suppress(IllegalStateError):
                self.consumer.seek(tp, self.floor_of(tp))

    def open(self, tp: TopicPartition) -> None:
        """Start ordering `tp` from its floor (`worker.pipeline.timeline`)."""
        lowest = {self._kafka.prices_topic: RANK_SOL_TICK, self._kafka.commands_topic: RANK_COMMAND}
        self.timeline.open(
            tp,
            lowest_rank=lowest.get(tp.topic, RANK_SIGNAL),
            last_at=self.floor_at.get(tp),
            next_offset=self.floor_of(tp),
            promise=self.promised.get(tp),
            group=tp.partition if tp.topic in self._kafka.user_topics else None,
        )

    async def store(
        self,
        conn: asyncpg.Connection,
        next_offsets: dict[TopicPartition, int],
        last_at: Mapping[TopicPartition, datetime] | None = None,
    ) -> None:
        """Store `next_offsets` in the transaction of `conn`, with each topic's id and the
        decision time of each partition's last record."""
        await store_offsets(
            conn,
            self._kafka.consumer_group,
            [(tp.topic, tp.partition, offset) for tp, offset in next_offsets.items()],
            self.topic_ids,
            {(tp.topic, tp.partition): at for tp, at in (last_at or {}).items()},
        )

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
            self.generation += 1
            if revoked:  # aiokafka also calls this before the first assignment, with nothing
                log.info("partitions_revoked", partitions=names(revoked))
            if self._on_revoke is not None:
                await self._on_revoke()
            await self.commit_kafka(only=revoked)
            for tp in revoked:
                self.timeline.close(tp)
                self.floor_at.pop(tp, None)
                self.promised.pop(tp, None)
                self.floor.pop(tp, None)
                self._unblock(tp)
                # Another worker reports this partition's lag from now on.
                with contextlib.suppress(KeyError):
                    self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored with its effects, unless that
        offset does not belong to the partition's log (then block it)."""
        self._metrics.assigned_partitions.set(len(assigned))
        if not assigned:
            return
        if (apart := self._co_partitioned()) is not None:
            # Stop before anything of the new assignment is applied.
            with contextlib.suppress(IllegalStateError):
                self.consumer.pause(*assigned)
            self.fatal = apart
            log.error("topics_not_co_partitioned", error=str(apart))
            return
        # Nothing is fetched until each partition is checked and sought: aiokafka starts
        # fetching a new assignment (from the log start) while this listener awaits.
        with contextlib.suppress(IllegalStateError):
            self.consumer.pause(*assigned)
        self.timeline.restart()  # every partition is read again from its stored offset
        try:
            stored = await self._stored_offsets()
            known = {tp for tp in assigned if (tp.topic, tp.partition) in stored}
            start, end = await self._log_bounds(known)
        except SERVICE_ERRORS as exc:
            # Without the stored offsets (or the logs' bounds to check them against) the
            # consumer would fall back to Kafka's committed ones, or to a log the offsets do
            # not belong to: stop instead.
            self.fatal = exc
            log.exception("stored_offsets_unreadable", error=describe(exc))
            return
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                self.open(tp)  # never consumed: its first record sets its time
                continue
            verdict = check(
                offset.next_offset,
                offset.topic_id,
                start=start[tp],
                end=end[tp],
                topic_id=self.topic_ids.get(tp.topic),
            )
            if offset.next_offset >= self.floor.get(tp, 0):
                self.floor_at[tp] = offset.event_at
            self.floor[tp] = max(offset.next_offset, self.floor.get(tp, 0))
            if verdict.is_blocked:
                self.block(tp, verdict)
                continue
            self._report_missed(tp, verdict)
            self.open(tp)
            try:
                self.consumer.seek(tp, verdict.seek_to)
            except IllegalStateError:
                # Reassigned while the offsets were read: the next assignment seeks.
                log.warning("seek_skipped_partition_reassigned", partition=names({tp}))
        with contextlib.suppress(IllegalStateError):
            self.consumer.resume(*(assigned - set(self.blocked)))
        log.info(
            "partitions_assigned",
            partitions=names(assigned),
            stored={f"{t}:{p}": o.next_offset for (t, p), o in stored.items()},
            topic_ids=self.topic_ids,
        )

    async def _stored_offsets(self) -> dict[tuple[str, int], StoredOffset]:
        """The stored offsets (and, into `promised`, the stored promises)."""
        topics = self._kafka.input_topics
        async for attempt in transient_retry():
            with attempt:
                async with connection(self._pool) as conn:
                    stored = await fetch_stored(conn, self._kafka.consumer_group, topics)
                    promises = await read_promises(conn, self._kafka.consumer_group, topics)
                self.promised = {TopicPartition(t, p): v for (t, p), v in promises.items()}
                return stored
        raise AssertionError("unreachable")  # pragma: no cover

    async def _log_bounds(
        self, partitions: set[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The log start and end of each of `partitions`; refreshes `topic_ids`. Briefly
        retried: an assignment must finish within the group's rebalance timeout."""
        async for attempt in transient_retry(attempts=3, max_delay_s=15):
            with attempt:
                topics = self._kafka.input_topics
                # The consumer's own connections (aiokafka has no public way to send one).
                ids = await topic_ids(self.consumer._client, topics)
                self.topic_ids = ids if ids is not None else dict.fromkeys(topics)
                if not partitions:
                    return {}, {}
                start = await self.consumer.beginning_offsets(list(partitions))
                end = await self.consumer.end_offsets(list(partitions))
                return dict(start), dict(end)
        raise AssertionError("unreachable")  # pragma: no cover

    async def recheck(self) -> set[TopicPartition]:
        """Check every owned partition's floor against its log again (as on assignment, with
        the topic ids seen then as the stored ones); block and return those that no longer
        belong. For a topic recreated under a running worker, which a rebalance may not
        follow: a fetch from below the floor, and every `TOPIC_RECHECK_INTERVAL_S`."""
        self._last_recheck = time.monotonic()
        owned: set[TopicPartition] = set(self.consumer.assignment())
        seen = dict(self.topic_ids)
        start, end = await self._log_bounds(owned)
        for tp in owned:
            verdict = check(
                self.floor.get(tp, 0),
                seen.get(tp.topic),
                start=start[tp],
                end=end[tp],
                topic_id=self.topic_ids.get(tp.topic),
            )
            if verdict.is_blocked:
                self.block(tp, verdict)
        return owned & set(self.blocked)

    async def recheck_if_due(self) -> None:
        """`recheck` when `TOPIC_RECHECK_INTERVAL_S` has passed; a Kafka failure is only
        logged (the next interval tries again; the outage is reported elsewhere)."""
        if time.monotonic() - self._last_recheck < TOPIC_RECHECK_INTERVAL_S:
            return
        async with self.lock:
            try:
                await self.recheck()
            except SERVICE_ERRORS as exc:
                log.warning("topic_recheck_failed", error=describe(exc))

    def block(self, tp: TopicPartition, verdict: Verdict) -> None:
        """Stop consuming `tp` (paused; its records are neither processed nor dropped) until
        an operator resolves it and the partition is assigned again."""
        with contextlib.suppress(IllegalStateError):
            self.consumer.pause(tp)
        self.timeline.close(tp)  # not read: it holds nothing back
        if tp in self.blocked:
            return
        self.blocked[tp] = verdict
        self._metrics.partitions_blocked.labels(tp.topic, str(tp.partition), verdict.blocked).set(1)
        log.error(
            "partition_not_consumed",
            partition=f"{tp.topic}:{tp.partition}",
            reason=verdict.blocked,
            detail=verdict.detail,
            resolve=(
                f"stop every worker of group {self._kafka.consumer_group}, then run "
                f"`{resolving_command(tp.topic)}` (or --to-latest to skip the new records)"
            ),
        )

    def _unblock(self, tp: TopicPartition) -> None:
        verdict = self.blocked.pop(tp, None)
        if verdict is not None:
            with contextlib.suppress(KeyError):
                self._metrics.partitions_blocked.remove(
                    tp.topic, str(tp.partition), str(verdict.blocked)
                )

    def _report_missed(self, tp: TopicPartition, verdict: Verdict) -> None:
        if not verdict.never_processed:
            return
        self._metrics.offsets_never_processed.labels(tp.topic).inc(verdict.never_processed)
        log.error(
            "records_removed_before_processed",
            partition=f"{tp.topic}:{tp.partition}",
            never_processed=verdict.never_processed,
            detail=verdict.detail,
        )

    def blocked_reason(self) -> str | None:
        """Why `/readyz` fails because of blocked partitions; None when none is."""
        if not self.blocked:
            return None
        first = min(self.blocked, key=lambda tp: (tp.topic, tp.partition))
        topics = sorted({tp.topic for tp in self.blocked})
        commands = " and ".join(f"`{resolving_command(t)}`" for t in topics)
        return (
            f"{len(self.blocked)} partition(s) not consumed ({', '.join(names(set(self.blocked)))})"
            f", {first.topic}:{first.partition}: {self.blocked[first].detail}; stop every worker "
            f"of group {self._kafka.consumer_group}, then run {commands}"
        )

    def stored(
        self,
        next_offsets: dict[TopicPartition, int],
        last_at: Mapping[TopicPartition, datetime] | None = None,
    ) -> None:
        """These offsets (and the decision times of the records before them) were just
        stored with their records' effects."""
        self._uncommitted.update(next_offsets)
        ats = last_at or {}
        for tp, offset in next_offsets.items():
            if offset >= self.floor.get(tp, 0) and tp in ats:
                self.floor_at[tp] = ats[tp]
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
