"""The aiokafka loop: decode, dead-letter, process every record's effects exactly once.

Exactly-once effects: the rows a batch of records produces and the next offset of each
partition it covers (`consumer_offsets`) are committed in one PostgreSQL transaction.
On assignment the consumer seeks to the stored offset (else Kafka's committed offset, else
the earliest), so a crash, a redelivery or a rebalance never applies a record twice. Kafka
offsets are committed after the database commit only so that lag tools keep working.

The partitions of a fetch are dealt into at most `PIPELINE_CONCURRENCY` lanes per topic,
whole partitions each, balanced by the agent executions they hold; the lanes run
concurrently, each on its own connection, and a lane's records (one partition's in order)
are written in transactions of up to `MAX_EXECUTIONS_PER_TRANSACTION` executions that store
the next offset of every partition they cover. Few, larger transactions cost PostgreSQL far
less than one per partition (every transaction is a fixed set of set-based statements),
which is what keeps latency low when records trickle in over many partitions. This module
alone maps exceptions to ack, retry or dead-letter.

Ticks before signals: a fetch's price lanes commit before its signal lanes start, so a
signal sees every tick of its own fetch and of every earlier one (it may see a tick that
came a little after it in the same fetch: never an older price than one that arrived
before it). A tick whose `ts` lies more than `PRICE_MAX_FUTURE_S` ahead of its record's
timestamp or of the worker's clock is dead-lettered: stored, it would freeze the price.

Shutdown: when the stop event is set, fetching stops, a batch waiting to retry gives up
at once (its offsets are not stored, so the next owner redoes it), and a batch in flight
gets half of `SHUTDOWN_TIMEOUT_S` to commit before it is cancelled (rolled back, redone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.config_cache import ConfigProblem, ConfigTexts
from worker.db.agents import agent_counts
from worker.db.offsets import fetch_offsets, store_offsets
from worker.db.pool import connection
from worker.db.store import PgPriceStore, PgSignalStore
from worker.deadletters import DeadLetter, DeadLetters
from worker.domain.models import Signal
from worker.errors import InvalidMessage, WorkerError
from worker.handlers import SignalOutcome, UnknownUser, handle_signals
from worker.kafka import client_options
from worker.messages import (
    PriceTickV1,
    SignalV1,
    check_tick_time,
    decode_price,
    decode_signal,
)
from worker.metrics import Metrics
from worker.ordering import MAX_HOLD_S, TickWatermarks, split_at
from worker.prices import TickOutcome, handle_price
from worker.retry import AsyncRetrying, describe, is_transient, transient_retry
from worker.settings import Settings

log = structlog.get_logger(__name__)

# Kafka offsets are only for lag tools (the stored ones are in PostgreSQL): never wait long.
KAFKA_COMMIT_TIMEOUT_S = 5.0
# One transaction holds at most about this many agent executions (memory stays bounded).
MAX_EXECUTIONS_PER_TRANSACTION = 5_000
# The fan-out assumed for a user whose agents could not be counted yet.
UNKNOWN_FANOUT = 100
# How the consumer reads (the benchmark's raw consume reads with the same): from the stored
# offsets (else the earliest), committed records only, no auto-commit, and the fetch sizes.
FETCH_OPTIONS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "fetch_max_bytes": 16 * 1024 * 1024,
    "max_partition_fetch_bytes": 2 * 1024 * 1024,
}
# Kafka commits are batched off the hot path: at most one round trip per interval.
KAFKA_COMMIT_INTERVAL_S = 1.0
# Users whose fan-out is remembered (least recently seen forgotten first).
FANOUT_MEMORY = 100_000

_T = TypeVar("_T")
Outcome = SignalOutcome | TickOutcome | None


class Fanouts:
    """Agents per user as last seen, for at most `maxsize` users (least recent dropped), so
    a stream of made-up user ids cannot grow the worker's memory."""

    def __init__(self, maxsize: int = FANOUT_MEMORY) -> None:
        self._maxsize = maxsize
        self._counts: OrderedDict[UUID, int] = OrderedDict()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._counts

    def __len__(self) -> int:
        return len(self._counts)

    def get(self, user_id: UUID, default: int) -> int:
        """The user's last known agent count, else `default`."""
        count = self._counts.get(user_id)
        if count is None:
            return default
        self._counts.move_to_end(user_id)
        return count

    def __setitem__(self, user_id: UUID, count: int) -> None:
        self._counts[user_id] = count
        self._counts.move_to_end(user_id)
        while len(self._counts) > self._maxsize:
            self._counts.popitem(last=False)


class StopRequested(Exception):  # noqa: N818 - a condition, not a failure
    """The stop event cut a batch short: nothing of it was stored, the next owner redoes it."""


@dataclass(frozen=True, slots=True)
class _Item:
    record: ConsumerRecord[bytes, bytes]
    message: SignalV1 | PriceTickV1


@dataclass(slots=True)
class _Part:
    """One partition's records of a fetch, decoded: `items[i]` is `records[i]`'s (None when
    it was dead-lettered) and `costs[i]` its estimated agent executions."""

    tp: TopicPartition
    records: Sequence[ConsumerRecord[bytes, bytes]]
    items: list[_Item | None]
    costs: list[int] = field(default_factory=list)

    @property
    def cost(self) -> int:
        """Estimated agent executions of the whole part."""
        return sum(self.costs)


@dataclass(slots=True)
class _Chunk:
    """What one transaction covers: records of one or more partitions of one lane."""

    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)


def record_time(record: ConsumerRecord[Any, Any]) -> datetime:
    """The record's Kafka timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)


class Pipeline(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Consumes the signal and price topics in one consumer group until told to stop."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        dead_letters: DeadLetters,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._pool = pool
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._log_info = logging.getLevelName(settings.log_level) <= logging.INFO
        self._lock = asyncio.Lock()
        self._uncommitted: dict[TopicPartition, int] = {}
        # Per partition, the first offset not yet applied, as far as this worker knows (the
        # stored offset read at assignment, then its own commits): a record below it is
        # never applied again, whatever position the consumer fetches from.
        self._floor: dict[TopicPartition, int] = {}
        # Ticks before signals (`worker.ordering`): the owned price partitions' progress.
        self._ticks = TickWatermarks()
        self._holding_since: float | None = None
        self._stop = asyncio.Event()
        # Agents per user, as last seen: sizes the transactions (see `_chunks`).
        self._fanout = Fanouts()
        # Agent config problems already reported (each once).
        self._reported: OrderedDict[ConfigProblem, None] = OrderedDict()
        self._last_kafka_commit = time.monotonic()
        self._fatal: BaseException | None = None
        # Agents' configs by row version, for ticks (see `worker.config_cache`).
        self._config_texts = ConfigTexts()
        self.consumer = AIOKafkaConsumer(
            **client_options(self._kafka),
            **FETCH_OPTIONS,
            group_id=self._kafka.consumer_group,
            max_poll_records=self._kafka.fetch_max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            rebalance_timeout_ms=30_000,
            metadata_max_age_ms=30_000,
        )

    # ------------------------------------------------------------------ rebalance listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait for in-flight work so the next owner starts after our last commit."""
        async with self._lock:
            if revoked:  # aiokafka also calls this before the first assignment, with nothing
                log.info("partitions_revoked", partitions=_names(revoked))
            await self.commit_kafka(only=revoked)
            self._ticks.forget(revoked)
            for tp in revoked:
                self._floor.pop(tp, None)
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
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            # Without the stored offsets the consumer would fall back to Kafka's committed
            # ones; safe (effects are idempotent) but not what we promise: stop instead.
            self._fatal = exc
            log.exception("stored_offsets_unreadable", error=describe(exc))
            return
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self._floor[tp] = max(offset, self._floor.get(tp, 0))
                try:
                    self.consumer.seek(tp, offset)
                except IllegalStateError:
                    # Reassigned while the offsets were read: the next assignment seeks.
                    log.warning("seek_skipped_partition_reassigned", partition=_names({tp}))
        log.info(
            "partitions_assigned",
            partitions=_names(assigned),
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

    # ------------------------------------------------------------------ main loop

    def has_assignment(self) -> bool:
        """True when this worker owns at least one partition."""
        return bool(self.consumer.assignment())

    def subscribe(self) -> None:
        """Subscribe to the signal and price topics with this object as rebalance listener."""
        self.consumer.subscribe(
            [self._kafka.signals_topic, self._kafka.prices_topic], listener=self
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process batches until `stop` is set; raises when a batch cannot be done.

        A batch that `stop` cuts short (waiting to retry, or still running after the drain
        grace) is abandoned, not failed: nothing of it was stored, so the next owner of its
        partitions redoes it; `run` then returns normally.
        """
        self._stop = stop
        while not stop.is_set():
            if self._fatal is not None:
                raise WorkerError(f"cannot read stored offsets: {describe(self._fatal)}")
            batch = self._hold_late_signals(
                await self.consumer.getmany(
                    timeout_ms=200, max_records=self._kafka.fetch_max_records
                )
            )
            if not batch:
                continue
            try:
                async with self._lock:
                    await self._until_stopped(self._process_fetch(batch))
            except StopRequested as exc:
                log.warning("batch_abandoned_at_shutdown", reason=str(exc))
                break
            if time.monotonic() - self._last_kafka_commit >= KAFKA_COMMIT_INTERVAL_S:
                await self.commit_kafka()
        await self.commit_kafka()

    def _hold_late_signals(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """The fetch less the signals that must wait for ticks (`worker.ordering`); their
        partitions are sought back to them, so a later fetch brings them again."""
        prices = self._kafka.prices_topic
        for tp, records in batch.items():
            if tp.topic == prices:
                self._ticks.observe(tp, records)
        owned = [tp for tp in self.consumer.assignment() if tp.topic == prices]
        bound = self._ticks.bound(owned, self.consumer.highwater, self._floor)
        if bound is None:
            self._holding_since = None
            return batch
        now = time.monotonic()
        if self._holding_since is not None and now - self._holding_since > MAX_HOLD_S:
            log.warning("signals_not_held_longer", held_s=round(now - self._holding_since, 1))
            self._holding_since = None
            return batch
        kept: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        held_any = False
        for tp, records in batch.items():
            ready, held = (records, []) if tp.topic == prices else split_at(records, bound)
            if held:
                held_any = True
                self.consumer.seek(tp, held[0].offset)
                log.debug("signals_held_for_ticks", partition=_names({tp}), held=len(held))
            if ready:
                kept[tp] = ready
        if held_any and self._holding_since is None:
            self._holding_since = now
        elif not held_any:
            self._holding_since = None
        return kept

    async def _process_fetch(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """The fetch's price lanes, then its signal lanes (so signals see the ticks)."""
        prices, signals = await self._lanes(batch)
        for lanes in (prices, signals):
            # Every lane finishes (commits or gives up) before a failure is raised, so one
            # lane's outage never rolls back another's finished work.
            results = await asyncio.gather(
                *(self._process_lane(lane) for lane in lanes), return_exceptions=True
            )
            self._metrics.db_pool_in_use.set(self._pool.get_size() - self._pool.get_idle_size())
            for result in results:
                if isinstance(result, BaseException):
                    if self._stop.is_set() and is_transient(result):
                        raise StopRequested(f"retries cut short: {describe(result)}") from result
                    raise result

    async def _until_stopped(self, work: Awaitable[_T]) -> _T:
        """`work`, or once stop is set and half of `SHUTDOWN_TIMEOUT_S` has passed without
        it finishing, its cancellation (`StopRequested`)."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self._settings.shutdown_timeout_s / 2)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise StopRequested("the batch in flight did not finish in the drain time")
            return task.result()
        finally:
            stopping.cancel()

    # ------------------------------------------------------------------ lanes

    async def _lanes(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> tuple[list[list[_Part]], list[list[_Part]]]:
        """Decode the fetch, dead-letter what is invalid, and deal the partitions into lanes:
        (price lanes, signal lanes)."""
        parts: list[_Part] = []
        dead: list[DeadLetter] = []
        now = datetime.now(UTC)
        for tp, fetched in batch.items():
            self._metrics.records_consumed.labels(tp.topic).inc(len(fetched))
            records = self._above_floor(tp, fetched)
            if not records:
                continue
            items, bad = self._decode(tp, records, now)
            dead.extend(bad)
            parts.append(_Part(tp, records, items))
        if dead:
            # Acknowledged before any transaction can store an offset past them.
            async for attempt in self._retrying():
                with attempt:
                    await self._dead_letters.send(dead)
        await self._learn_fanout([i for p in parts for i in p.items if i is not None])
        for part in parts:
            part.costs = [self._cost(item) for item in part.items]
        concurrency = self._settings.pipeline_concurrency
        prices = [p for p in parts if p.tp.topic == self._kafka.prices_topic]
        signals = [p for p in parts if p.tp.topic == self._kafka.signals_topic]
        return _deal(prices, concurrency), _deal(signals, concurrency)

    def _above_floor(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The records not applied yet: a fetch from before the stored offset (a seek that a
        rebalance overtook) re-reads records whose effects are committed; they are dropped
        here, not applied a second time (which would be harmless, but is wasted work)."""
        floor = self._floor.get(tp, 0)
        if not records or records[0].offset >= floor:
            return records
        kept = [r for r in records if r.offset >= floor]
        log.warning(
            "records_below_stored_offset_dropped",
            partition=_names({tp}),
            dropped=len(records) - len(kept),
            stored_offset=floor,
        )
        return kept

    def _cost(self, item: _Item | None) -> int:
        """Estimated agent executions of one record (1 for a tick or an invalid record)."""
        if item is not None and isinstance(item.message, SignalV1):
            return self._fanout.get(item.message.user_id, UNKNOWN_FANOUT)
        return 1

    async def _process_lane(self, lane: list[_Part]) -> None:
        started = time.perf_counter()
        for chunk in self._chunks(lane):
            outcomes: list[tuple[_Item, Outcome]] = []
            async for attempt in self._retrying():
                with attempt:
                    outcomes = await self._commit_batch(chunk)
            committed_at = time.time()
            self._uncommitted.update(chunk.next_offsets)
            for tp, offset in chunk.next_offsets.items():
                self._floor[tp] = max(offset, self._floor.get(tp, 0))
            self._observe(chunk, outcomes, committed_at, started)
            started = time.perf_counter()

    async def _learn_fanout(self, items: list[_Item]) -> None:
        """Count the agents of users not seen yet, to size the transactions."""
        unseen = {
            item.message.user_id
            for item in items
            if isinstance(item.message, SignalV1) and item.message.user_id not in self._fanout
        }
        if not unseen:
            return
        async for attempt in self._retrying():
            with attempt:
                async with connection(self._pool) as conn:
                    counts = await agent_counts(conn, list(unseen))
        for user_id in unseen:
            self._fanout[user_id] = max(1, counts.get(user_id, 0))

    def _chunks(self, lane: list[_Part]) -> Iterator[_Chunk]:
        """Split a lane's records into transactions of at most about
        `MAX_EXECUTIONS_PER_TRANSACTION` agent executions, by each user's last known fan-out,
        so that memory and transaction length stay bounded at any fan-out."""
        chunk, budget = _Chunk(), 0
        for part in lane:
            for record, item, cost in zip(part.records, part.items, part.costs, strict=True):
                if chunk.records and budget + cost > MAX_EXECUTIONS_PER_TRANSACTION:
                    yield chunk
                    chunk, budget = _Chunk(), 0
                budget += cost
                chunk.records.append(record)
                chunk.next_offsets[part.tp] = record.offset + 1
                if item is not None:
                    chunk.items.append(item)
        if chunk.records:
            yield chunk

    def _retrying(self) -> AsyncRetrying:
        return transient_retry(
            attempts=self._settings.retry_max_attempts,
            max_delay_s=self._settings.retry_max_delay_s,
            stop=self._stop,
        )

    def _decode(
        self,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        now: datetime,
    ) -> tuple[list[_Item | None], list[DeadLetter]]:
        """Each record's item (None for an invalid one), and the dead letters."""
        items: list[_Item | None] = []
        dead: list[DeadLetter] = []
        is_signal = tp.topic == self._kafka.signals_topic
        ahead = timedelta(seconds=self._settings.price_max_future_s)
        message: SignalV1 | PriceTickV1
        for record in records:
            try:
                if is_signal:
                    message = decode_signal(record.value)
                else:
                    message = decode_price(record.value)
                    check_tick_time(message, received_at=record_time(record), now=now, ahead=ahead)
            except InvalidMessage as exc:
                dead.append(DeadLetter(record, str(exc), "invalid"))
                items.append(None)
                continue
            items.append(_Item(record, message))
        return items, dead

    async def _commit_batch(self, chunk: _Chunk) -> list[tuple[_Item, Outcome]]:
        """One transaction: every item's effects and the next offset of each partition."""
        items = chunk.items
        async with connection(self._pool) as conn:
            try:
                async with conn.transaction():
                    outcomes, dead = await self._apply(conn, items, isolated=False)
                    await self._finish(conn, chunk.next_offsets, dead)
            except Exception as exc:  # this module alone maps every failure
                if is_transient(exc):
                    raise
                log.warning("batch_failed_retrying_isolated", error=describe(exc))
            else:
                return outcomes
            # A record broke a constraint or hit a bug: redo the batch with a savepoint per
            # record, so that only that record is dead-lettered (a poison record never blocks
            # the partition) and the others go through.
            async with conn.transaction():
                outcomes, dead = await self._apply(conn, items, isolated=True)
                await self._finish(conn, chunk.next_offsets, dead)
            return outcomes

    async def _finish(
        self,
        conn: asyncpg.Connection,
        next_offsets: dict[TopicPartition, int],
        dead: list[DeadLetter],
    ) -> None:
        await store_offsets(
            conn,
            self._kafka.consumer_group,
            [(tp.topic, tp.partition, offset) for tp, offset in next_offsets.items()],
        )
        if dead:
            # Acknowledged by the broker before the offset moves past them (the commit).
            await self._dead_letters.send(dead)

    async def _apply(
        self, conn: asyncpg.Connection, items: list[_Item], *, isolated: bool
    ) -> tuple[list[tuple[_Item, Outcome]], list[DeadLetter]]:
        outcomes: list[tuple[_Item, Outcome]] = []
        dead: list[DeadLetter] = []
        if not isolated and items and isinstance(items[0].message, SignalV1):
            return await self._apply_signals(conn, items, dead), dead
        for item in items:
            if not isolated:
                outcome = await self._apply_one(conn, item, dead)
                outcomes.append((item, outcome))
                continue
            try:
                async with conn.transaction():
                    outcome = await self._apply_one(conn, item, dead)
                outcomes.append((item, outcome))
            except Exception as exc:  # this module alone maps every failure
                if is_transient(exc):
                    raise
                if isinstance(exc, asyncpg.PostgresError):
                    reason, kind = f"database rejected it: {describe(exc)}", "database"
                else:
                    reason, kind = f"unexpected error: {describe(exc)}", "unexpected"
                dead.append(DeadLetter(item.record, reason, kind))
                log.exception("record_failed", error=describe(exc), **_coordinates(item.record))
        return outcomes, dead

    async def _apply_signals(
        self, conn: asyncpg.Connection, items: list[_Item], dead: list[DeadLetter]
    ) -> list[tuple[_Item, Outcome]]:
        """A chunk's signals, set-based in one go (a fixed number of statements)."""
        signals = [_signal(item) for item in items]
        results = await handle_signals(
            PgSignalStore(conn), signals, trading=self._settings.trading, now=datetime.now(UTC)
        )
        outcomes: list[tuple[_Item, Outcome]] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, UnknownUser):
                dead.append(DeadLetter(item.record, str(result), "unknown_user"))
                outcomes.append((item, None))
            else:
                outcomes.append((item, result))
        return outcomes

    async def _apply_one(
        self, conn: asyncpg.Connection, item: _Item, dead: list[DeadLetter]
    ) -> Outcome:
        record = item.record
        if isinstance(item.message, SignalV1):
            [(_, outcome)] = await self._apply_signals(conn, [item], dead)
            return outcome
        return await handle_price(
            PgPriceStore(conn),
            item.message,
            configs=self._config_texts,
            settings=self._settings,
            now=datetime.now(UTC),
            received_at=record_time(record),
        )

    # ------------------------------------------------------------------ after the commit

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
            log.warning("kafka_commit_failed", error=describe(exc), partitions=_names(set(offsets)))

    def _observe(
        self,
        chunk: _Chunk,
        outcomes: list[tuple[_Item, Outcome]],
        committed_at: float,
        started: float,
    ) -> None:
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        for record in chunk.records:
            self._metrics.latency.observe(max(0.0, committed_at - record.timestamp / 1000))
        for tp, next_offset in chunk.next_offsets.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - next_offset)
                )
        for item, outcome in outcomes:
            if isinstance(outcome, TickOutcome):
                self._log_tick(item.record, outcome)
            elif outcome is not None and isinstance(item.message, SignalV1):
                self._fanout[item.message.user_id] = max(
                    1, len(outcome.outcomes) + outcome.already_done
                )
                self._log_signal(item.record, outcome, committed_at)

    def _log_tick(self, record: ConsumerRecord[bytes, bytes], outcome: TickOutcome) -> None:
        for reason, count in outcome.closes.items():
            self._metrics.exits.labels(reason).inc(count)
        self._report_configs(outcome.config_problems)
        if not outcome.is_newer:
            self._metrics.stale_ticks.inc()
            log.debug(
                "tick_not_newer", token=outcome.token, price_usd=str(outcome.price_usd),
                **_coordinates(record),
            )  # fmt: skip
            return
        fields = {
            "token": outcome.token,
            "price_usd": str(outcome.price_usd),
            "positions": outcome.positions,
            "trailed": outcome.trailed,
            "closes": outcome.closes,
            "take_profit_sales": outcome.partial_sales,
            "dca_buys": outcome.dca_buys,
            **_coordinates(record),
        }
        if outcome.traded:
            log.info("tick_applied", **fields)
        else:
            log.debug("tick_applied", **fields)

    def _report_configs(self, problems: list[ConfigProblem]) -> None:
        """Log and count each agent config's problem once (the last 100,000 remembered)."""
        for problem in problems:
            if problem in self._reported:
                continue
            self._reported[problem] = None
            if len(self._reported) > FANOUT_MEMORY:
                self._reported.popitem(last=False)
            if problem.error is not None:
                self._metrics.config_problems.labels("invalid").inc()
                log.warning(
                    "agent_config_invalid",
                    agent_id=str(problem.agent_id),
                    error=problem.error,
                    effect="the agent buys nothing (its executions fail with this reason); "
                    "its open positions keep the exit rules they were opened with",
                )
            if problem.unknown_keys:
                self._metrics.config_problems.labels("unknown_keys").inc()
                log.warning(
                    "agent_config_unknown_keys",
                    agent_id=str(problem.agent_id),
                    keys=list(problem.unknown_keys[:20]),
                    effect="ignored (signal-worker agents lint lists every agent's)",
                )

    def _log_signal(
        self, record: ConsumerRecord[bytes, bytes], outcome: SignalOutcome, committed_at: float
    ) -> None:
        counts: dict[str, int] = {}
        for agent in outcome.outcomes:
            status = agent.decision.status.value
            counts[status] = counts.get(status, 0) + 1
        for status, n in counts.items():
            self._metrics.executions.labels(status).inc(n)
        self._report_configs(outcome.config_problems)
        if outcome.conflicts_with is not None:
            self._metrics.conflicting_signals.inc()
            log.warning(
                "signal_key_reused_with_other_payload",
                signal_id=outcome.signal_id,
                first_record=outcome.conflicts_with,
                effect="treated as the signal stored first (nothing executed again)",
                **_coordinates(record),
            )
        if not self._log_info:
            return  # the lines below are info: skip building them per agent
        latency_ms = round((committed_at - record.timestamp / 1000) * 1000, 1)
        bound = log.bind(signal_id=outcome.signal_id, **_coordinates(record))
        for agent in outcome.outcomes:
            bound.info(
                "agent_decided",
                agent_id=str(agent.agent_id),
                status=agent.decision.status.value,
                reason=agent.decision.reason,
                transaction_id=str(agent.transaction_id) if agent.transaction_id else None,
                latency_ms=latency_ms,
            )
        bound.info(
            "signal_processed",
            is_new_signal=outcome.is_new_signal,
            executions=counts,
            already_executed=outcome.already_done,
            latency_ms=latency_ms,
        )


def _deal(parts: list[_Part], lanes: int) -> list[list[_Part]]:
    """Whole partitions into at most `lanes` lanes, the costliest first to the lightest."""
    out: list[list[_Part]] = [[] for _ in range(min(lanes, len(parts)))]
    loads = [0] * len(out)
    for part in sorted(parts, key=lambda p: (-p.cost, p.tp.partition)):
        lightest = loads.index(min(loads))
        out[lightest].append(part)
        loads[lightest] += part.cost
    for lane in out:
        lane.sort(key=lambda p: p.tp.partition)
    return out


def _signal(item: _Item) -> Signal:
    record, message = item.record, item.message
    assert isinstance(message, SignalV1)  # noqa: S101 - only called for signal items
    return message.to_domain(
        coordinates=f"{record.topic}:{record.partition}:{record.offset}",
        received_at=record_time(record),
    )


def _coordinates(record: ConsumerRecord[Any, Any]) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)
