"""The consumer loop and the transaction: each record's effects exactly once.

Exactly-once effects: the rows a chunk of records produces and the next offset of each
partition it covers (`consumer_offsets`) are committed in one PostgreSQL transaction. On
assignment the consumer seeks to the stored offset (`worker.pipeline.rebalance`), so a crash, a
redelivery or a rebalance never applies a record twice.

Per fetch: the signals that must wait for ticks are held back (`worker.pipeline.ordering`); the rest
are decoded and their partitions dealt into lanes (`worker.pipeline.batching`); the price lanes
commit before the signal lanes start, so a signal sees the ticks before it. Lanes run side
by side, each on its own connection, in transactions of bounded size. What a failure
means is decided in one place (`worker.pipeline.failures`): a transient one is retried with
backoff, a batch that fails otherwise is redone record by record so that only the record at
fault is dead-lettered (`worker.pipeline.deadletters`), and a stop signal cuts retries short.

Shutdown: when the stop event is set, fetching stops, a batch waiting to retry gives up at
once (its offsets are not stored, so the next owner redoes it), and a batch in flight gets
half of `SHUTDOWN_TIMEOUT_S` to commit before it is cancelled (rolled back, redone).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar
from uuid import UUID

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from worker.db.pool import connection
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import UnknownUser, handle_signals
from worker.handlers.ticks import handle_prices
from worker.messages import SignalV1
from worker.metrics import Metrics
from worker.pipeline.batching import (
    Chunk,
    Fanouts,
    Item,
    KafkaRecord,
    Part,
    chunks,
    deal,
    decode,
    signals_of,
    ticks_of,
    where,
)
from worker.pipeline.deadletters import DeadLetter, DeadLetters
from worker.pipeline.failures import (
    Action,
    Retrier,
    Scope,
    StopRequested,
    disposition,
    until_stopped,
)
from worker.pipeline.rebalance import OffsetKeeper
from worker.pipeline.telemetry import Outcome, Reporter, Troubles, coordinates
from worker.ports import PipelineStore
from worker.retry import describe
from worker.settings import Settings

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
Batch = dict[TopicPartition, list[KafkaRecord]]


class Pipeline:
    """Consumes the signal and price topics with `consumer` until told to stop."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        consumer: AIOKafkaConsumer,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        stores: Callable[[asyncpg.Connection], PipelineStore],
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._pool = pool
        self.consumer = consumer
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._stores = stores  # the store of one transaction's connection
        # Set by a stop signal or a rebalance: a batch waiting to retry gives up at once.
        self._interrupt = asyncio.Event()
        self.offsets = OffsetKeeper(
            consumer, pool, settings.kafka, metrics, on_revoking=self._interrupt.set
        )
        self.troubles = Troubles(metrics)
        self._retried = Retrier(settings, self._interrupt, self.troubles)
        self._fanouts = Fanouts()
        self._report = Reporter(metrics, log_level=settings.log_level, fanouts=self._fanouts)
        # Agents' configs by row version, for ticks (see `worker.handlers.config_cache`).
        self._config_texts = ConfigTexts()
        self._stop = asyncio.Event()

    def subscribe(self) -> None:
        """Subscribe to the signal and price topics, the offset keeper as rebalance listener."""
        self.consumer.subscribe(
            [self._kafka.signals_topic, self._kafka.prices_topic], listener=self.offsets
        )

    def has_assignment(self) -> bool:
        """True when this worker owns at least one partition."""
        return bool(self.consumer.assignment())

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process batches until `stop` is set; raises when a batch cannot be done.

        A batch that `stop` cuts short (waiting to retry, or still running after the drain
        grace) is abandoned, not failed: nothing of it was stored, so the next owner of its
        partitions redoes it; `run` then returns normally.
        """
        self._stop = stop
        watcher = asyncio.create_task(self._interrupt_on(stop))
        try:
            await self._loop(stop)
        finally:
            watcher.cancel()
        await self.offsets.commit_kafka()

    async def _interrupt_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._interrupt.set()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.offsets.revoking:
                self._interrupt.clear()
            self.offsets.check_fatal()
            fetched = await self.consumer.getmany(
                timeout_ms=200, max_records=self._kafka.fetch_max_records
            )
            batch = await self.offsets.hold.release(fetched)
            if not batch:
                await self.offsets.recheck_if_due()
                continue
            try:
                async with self.offsets.working():
                    # A rebalance may have run while the fetch was read: what is no longer
                    # ours is left to its new owner.
                    assigned = self.consumer.assignment()
                    batch = {tp: r for tp, r in batch.items() if tp in assigned}
                    grace_s = self._settings.shutdown_timeout_s / 2
                    await until_stopped(self._process_fetch(batch), self._stop, grace_s)
            except StopRequested as exc:
                if stop.is_set():
                    log.warning("batch_abandoned_at_shutdown", reason=str(exc))
                    break
                # A rebalance came while the batch waited for the server: nothing of its
                # unfinished lanes was stored; read them again from where they stand.
                log.warning("batch_abandoned_for_rebalance", reason=str(exc))
                self.offsets.rewind(batch)
                continue
            await self.offsets.commit_kafka_if_due()
            await self.offsets.recheck_if_due()

    async def _process_fetch(self, batch: Batch) -> None:
        """The fetch's price lanes, then its signal lanes (so signals see the ticks)."""
        for lanes in await self._lanes(batch):
            # Every lane finishes (commits or gives up) before a failure is raised, so one
            # lane's outage never rolls back another's finished work.
            results = await asyncio.gather(
                *(self._process_lane(lane, f"lane-{i}") for i, lane in enumerate(lanes)),
                return_exceptions=True,
            )
            self._metrics.db_pool_in_use.set(self._pool.get_size() - self._pool.get_idle_size())
            for result in results:
                if isinstance(result, BaseException):
                    verdict = disposition(result, Scope.LANE, stopping=self._interrupt.is_set())
                    if verdict.action is Action.ABANDON:
                        raise StopRequested(f"retries cut short: {describe(result)}") from result
                    raise result

    async def _lanes(self, batch: Batch) -> tuple[list[list[Part]], list[list[Part]]]:
        """Decode the fetch, dead-letter what is invalid, deal the partitions into lanes:
        (price lanes, signal lanes)."""
        parts: list[Part] = []
        dead: list[DeadLetter] = []
        now = datetime.now(UTC)
        ahead = timedelta(seconds=self._settings.price_max_future_s)
        await self.offsets.recheck_if_below(batch)
        for tp, fetched in batch.items():
            if self.offsets.is_blocked(tp):
                continue  # not consumed: its records stay in the log, nothing is stored
            self._metrics.records_consumed.labels(tp.topic).inc(len(fetched))
            records = self.offsets.unstored(tp, fetched)
            if not records:
                continue
            is_signal = tp.topic == self._kafka.signals_topic
            items, bad = decode(records, is_signal=is_signal, now=now, max_ahead=ahead)
            dead.extend(bad)
            parts.append(Part(tp, records, items))
        if dead:
            # Acknowledged before any transaction can store an offset past them.
            await self._retried(
                "dead-letters",
                lambda: f"dead letters of {len(dead)} record(s)",
                lambda: self._dead_letters.send(dead),
            )
        await self._learn_fanouts([i for p in parts for i in p.items])
        for part in parts:
            part.costs = [self._fanouts.cost(item) for item in part.items]
        concurrency = self._settings.pipeline_concurrency
        prices = [p for p in parts if p.tp.topic == self._kafka.prices_topic]
        signals = [p for p in parts if p.tp.topic == self._kafka.signals_topic]
        return deal(prices, concurrency), deal(signals, concurrency)

    async def _learn_fanouts(self, items: list[Item | None]) -> None:
        """Count the agents of users not seen yet, to size the transactions."""
        unseen = self._fanouts.unseen(items)
        if not unseen:
            return

        async def count() -> dict[UUID, int]:
            async with connection(self._pool) as conn:
                return await self._stores(conn).agent_counts(list(unseen))

        counts = await self._retried(
            "fan-outs", lambda: f"agent counts of {len(unseen)} user(s)", count
        )
        for user_id in unseen:
            self._fanouts[user_id] = max(1, counts.get(user_id, 0))

    async def _process_lane(self, lane: list[Part], key: str) -> None:
        started = time.perf_counter()
        for chunk in chunks(lane):
            outcomes = await self._retried(key, partial(where, chunk), partial(self._commit, chunk))
            committed_at = time.time()
            self.offsets.stored(chunk.next_offsets)
            self._report.committed(
                chunk,
                outcomes,
                committed_at=committed_at,
                started=started,
                highwater=self.consumer.highwater,
            )
            started = time.perf_counter()

    async def _commit(self, chunk: Chunk) -> list[tuple[Item, Outcome]]:
        """One transaction: every item's effects, the dead letters of the items that cannot
        be processed, and the next offset of each partition."""
        async with connection(self._pool) as conn:
            try:
                async with conn.transaction():
                    outcomes, dead = await self._apply(conn, chunk.items, isolated=False)
                    await self._finish(conn, chunk.next_offsets, dead)
            except Exception as exc:  # the failure policy decides
                if disposition(exc, Scope.BATCH).action is not Action.ISOLATE:
                    raise
                log.warning("batch_failed_retrying_isolated", error=describe(exc))
            else:
                return outcomes
            # A record broke a constraint or hit a bug: redo the batch with a savepoint per
            # record, so that only that record is dead-lettered (a poison record never blocks
            # the partition) and the others go through.
            async with conn.transaction():
                outcomes, dead = await self._apply(conn, chunk.items, isolated=True)
                await self._finish(conn, chunk.next_offsets, dead)
            return outcomes

    async def _finish(
        self,
        conn: asyncpg.Connection,
        next_offsets: dict[TopicPartition, int],
        dead: list[DeadLetter],
    ) -> None:
        await self.offsets.store(conn, next_offsets)
        if dead:
            # Acknowledged by the broker before the offset moves past them (the commit).
            await self._dead_letters.send(dead)

    async def _apply(
        self, conn: asyncpg.Connection, items: list[Item], *, isolated: bool
    ) -> tuple[list[tuple[Item, Outcome]], list[DeadLetter]]:
        """Each item's outcome and the dead letters; signals set-based unless isolated."""
        if not isolated and items:
            return await self._apply_set(conn, items)
        outcomes: list[tuple[Item, Outcome]] = []
        dead: list[DeadLetter] = []
        for item in items:
            with structlog.contextvars.bound_contextvars(**coordinates(item.record)):
                try:
                    async with conn.transaction():
                        done, letters = await self._apply_set(conn, [item])
                except Exception as exc:  # the failure policy decides
                    verdict = disposition(exc, Scope.RECORD)
                    if verdict.action is not Action.DEAD_LETTER:
                        raise
                    dead.append(DeadLetter(item.record, verdict.reason or "", verdict.kind or ""))
                    log.exception("record_failed", error=describe(exc))
                    continue
            outcomes.extend(done)
            dead.extend(letters)
        return outcomes, dead

    async def _apply_set(
        self, conn: asyncpg.Connection, items: list[Item]
    ) -> tuple[list[tuple[Item, Outcome]], list[DeadLetter]]:
        """Items of one topic, set-based."""
        if isinstance(items[0].message, SignalV1):
            return await self._apply_signals(conn, items)
        return await self._apply_ticks(conn, items), []

    async def _apply_signals(
        self, conn: asyncpg.Connection, items: list[Item]
    ) -> tuple[list[tuple[Item, Outcome]], list[DeadLetter]]:
        """A chunk's signals, set-based in one go (a fixed number of statements)."""
        results = await handle_signals(
            self._stores(conn),
            signals_of(items),
            trading=self._settings.trading,
        )
        outcomes: list[tuple[Item, Outcome]] = []
        dead: list[DeadLetter] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, UnknownUser):
                dead.append(DeadLetter(item.record, result.reason, "unknown_user"))
                outcomes.append((item, None))
            else:
                outcomes.append((item, result))
        return outcomes, dead

    async def _apply_ticks(
        self, conn: asyncpg.Connection, items: list[Item]
    ) -> list[tuple[Item, Outcome]]:
        """A chunk's ticks, set-based in one go (a fixed number of statements)."""
        results = await handle_prices(
            self._stores(conn),
            ticks_of(items),
            configs=self._config_texts,
            trading=self._settings.trading,
        )
        return list(zip(items, results, strict=True))
