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
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar
from uuid import UUID

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from worker.db.bounds import Bound, read_bounds
from worker.db.events import DeadLetterEvent, insert_dead_letter_events
from worker.db.pool import connection
from worker.errors import InvalidMessage
from worker.handlers.commands import handle_commands
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import UnknownUser, handle_signals
from worker.handlers.ticks import handle_prices
from worker.messages import PriceTickV1, SignalV1
from worker.metrics import Metrics
from worker.pipeline.batching import (
    COMMANDS,
    SIGNALS,
    TICKS,
    Chunk,
    Fanouts,
    Item,
    KafkaRecord,
    chunks,
    commands_of,
    deal,
    decode,
    ordered_chunks,
    parts_of,
    placing,
    record_time,
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
from worker.pipeline.markers import Markers, OrderMarker
from worker.pipeline.order_writes import OrderWrites, Published
from worker.pipeline.ordering import names, read_to_end
from worker.pipeline.rebalance import OffsetKeeper
from worker.pipeline.telemetry import Outcome, Reporter, Troubles, coordinates
from worker.pipeline.timeline import Entry, Promise, runs
from worker.ports import PipelineStore
from worker.retry import describe
from worker.settings import Settings

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
Batch = dict[TopicPartition, list[KafkaRecord]]
# The order's wait for a partition is logged once it has lasted this long, and then again
# after as long.
WAIT_REPORT_S = 10.0
# Bounds unchanged are written again after this long (`worker.db.bounds.EXCLUDED_FRESH_S`).
REPUBLISH_S = 3.0
# Records waiting for their turn take at most about this much memory (their keys and
# values): beyond it, no partition with records waiting is fetched.
ORDER_BUFFER_MAX_BYTES = 64 * 1024 * 1024
# A partition's fetch is answered at least this often while the broker answers (aiokafka's
# fetch wait, 500 ms, and some slack); beyond it, its end holds only as of its last answer.
FETCH_ANSWERED = timedelta(milliseconds=750)
# After this long waiting on the same partitions, `/readyz` says so.
ORDER_STALL_S = 30.0
# How long a fetch waits for records when other workers share the group: between fetches
# the worker tells them where its partitions stand and reads where theirs do.
SHARED_POLL_MS = 20


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
        markers: Markers | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._pool = pool
        self.consumer = consumer
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._stores = stores  # the store of one transaction's connection
        # Writes order markers into idle partitions that hold users' records back (None:
        # `ORDER_MARKERS` off; the clock alone lets them go).
        self._markers = markers
        # Set by a stop signal or a rebalance: a batch waiting to retry gives up at once.
        self._interrupt = asyncio.Event()
        self.offsets = OffsetKeeper(
            consumer,
            pool,
            settings.kafka,
            metrics,
            lateness=timedelta(milliseconds=settings.lateness_ms),
            on_revoking=self._interrupt.set,
            # No write of the order lands after the partitions went to another owner.
            on_revoke=lambda: self._order_writes.forget(),
        )
        # Partitions not fetched because their records wait in numbers (`_pause_full`).
        self._paused: set[TopicPartition] = set()
        self._paused_in = 0  # the offset keeper's generation `_paused` belongs to
        # Whether other workers own partitions of the topics, and the bounds last told them.
        self._shared = False
        self._published: dict[tuple[str, int], Bound] = {}
        self._published_at = 0.0
        # Since when records have waited for their turn without a pause (None: none wait),
        # and the partitions they waited for at the last report.
        self._waiting_since: float | None = None
        self._waiting_on: list[str] = []
        self._waiting_reported = 0.0
        self.troubles = Troubles(metrics)
        self._retried = Retrier(settings, self._interrupt, self.troubles)
        # The order's promises and bounds, written beside the work they allow.
        self._order_writes = OrderWrites(pool, self._kafka.consumer_group, self._retried)
        self._fanouts = Fanouts()
        self._report = Reporter(metrics, log_level=settings.log_level, fanouts=self._fanouts)
        # Dead letters sent while decoding, by record, until the transaction that moves the
        # offset past them writes their events.
        self._dead_events: dict[str, DeadLetter] = {}
        # Agents' configs by row version, for ticks (see `worker.handlers.config_cache`).
        self._config_texts = ConfigTexts()
        self._stop = asyncio.Event()
        # What each input topic carries.
        self._kinds = {
            self._kafka.signals_topic: SIGNALS,
            self._kafka.prices_topic: TICKS,
            self._kafka.commands_topic: COMMANDS,
        }

    def subscribe(self) -> None:
        """Subscribe to the signal and price topics, the offset keeper as rebalance listener."""
        self.consumer.subscribe(self._kafka.input_topics, listener=self.offsets)

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
            await self._order_writes.settle()
            if self._markers is not None:
                await self._markers.close()
        await self.offsets.commit_kafka()

    async def _interrupt_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._interrupt.set()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.offsets.revoking:
                self._interrupt.clear()
            self.offsets.check_fatal()
            # With other workers, their progress is read between fetches: wait less.
            fetched = await self.consumer.getmany(
                timeout_ms=self._poll_ms(),
                max_records=self._kafka.fetch_max_records,
            )
            try:
                async with self.offsets.working():
                    released = await self._order(fetched)
                    if not released:
                        continue
                    grace_s = self._settings.shutdown_timeout_s / 2
                    await until_stopped(self._process_released(released), self._stop, grace_s)
            except StopRequested as exc:
                if stop.is_set():
                    log.warning("batch_abandoned_at_shutdown", reason=str(exc))
                    break
                # A rebalance came while the batch waited for the server: nothing of its
                # unfinished lanes was stored; read them again from where they stand.
                log.warning("batch_abandoned_for_rebalance", reason=str(exc))
                await self._order_writes.settle()
                self.offsets.rewind()
                continue
            finally:
                await self.offsets.commit_kafka_if_due()
                await self.offsets.recheck_if_due()

    async def _order(self, fetched: Batch) -> list[Entry[TopicPartition]]:
        """Decode the fetch into the order (`worker.pipeline.timeline`), dead-letter what is
        invalid, and return what the order lets go now."""
        timeline = self.offsets.timeline
        dead: list[DeadLetter] = []
        now = datetime.now(UTC)
        taken = time.monotonic()
        await self.offsets.recheck_if_below(fetched)
        for tp, records in fetched.items():
            if self.offsets.is_blocked(tp) or not timeline.is_open(tp):
                continue  # not ours now, or not consumed: nothing is stored
            unstored = self.offsets.unstored(tp, records)
            honoured = self._place(tp, unstored, now=now, taken=taken, dead=dead)
            # The worker's own markers are not counted as consumed (dead-lettered ones are).
            self._metrics.records_consumed.labels(tp.topic).inc(len(records) - honoured)
        for letter in dead:
            self._dead_events[_coordinates_of(letter.record)] = letter
        if dead:
            # Acknowledged before any transaction can store an offset past them.
            await self._retried(
                "dead-letters",
                lambda: f"dead letters of {len(dead)} record(s)",
                lambda: self._dead_letters.send(dead),
            )
        caught_up = await self._read_to_end(timeline.sources())
        moved = timeline.promise(caught_up)
        elsewhere = await self._share(moved)
        prices = {tp: b for tp, b in elsewhere.items() if tp.topic == self._kafka.prices_topic}
        groups: dict[int | None, list[Bound]] = {}
        for tp, bound in elsewhere.items():
            if tp.topic in self._kafka.user_topics:
                groups.setdefault(tp.partition, []).append(bound)
        released = timeline.release(
            elsewhere=elsewhere, elsewhere_prices=prices, elsewhere_groups=groups
        )
        self._pause_full()
        buffered = len(timeline)
        self._metrics.order_buffered.set(buffered)
        if buffered:
            self._want_markers(caught_up, elsewhere)
        if buffered and not released:
            self._waiting_since = self._waiting_since or time.monotonic()
            self._report_waiting(elsewhere)
        else:
            self._waiting_since = None
            self._waiting_on = []
        return released

    def _place(
        self,
        tp: TopicPartition,
        records: list[KafkaRecord],
        *,
        now: datetime,
        taken: float,
        dead: list[DeadLetter],
    ) -> int:
        """Decode a fetch's records of `tp` into the order; their dead letters to `dead`;
        returns how many were order markers honoured."""
        timeline = self.offsets.timeline
        ahead = timedelta(seconds=self._settings.price_max_future_s)
        kind = self._kinds.get(tp.topic, TICKS)
        # Markers are honoured where workers write them: the prices and commands topics.
        items, bad = decode(records, kind=kind, now=now, max_ahead=ahead, markers=kind != SIGNALS)
        dead.extend(bad)
        honoured = 0
        for record, decoded in zip(records, items, strict=True):
            size = record.serialized_value_size + max(record.serialized_key_size, 0)
            item = None if decoded is None else replace(decoded, taken=taken)
            where = placing(item, record, tp, kind=kind, latest=now + ahead)
            if item is not None and isinstance(item.message, OrderMarker):
                honoured += 1
                item = None  # placed at its time, applied as nothing
            entry = timeline.place(tp, record.offset, *where, (record, item), size)
            if entry.moved and item is not None:  # a dead letter is decided at no time
                self._metrics.order_marker_moved.labels(tp.topic).inc()
            if entry.late:
                self._metrics.late_records.labels(tp.topic).inc()
                log.warning(
                    "record_late",
                    **coordinates(record),
                    event_time=entry.event_time.isoformat(),
                    decided_at=entry.at.isoformat(),
                )
        return honoured

    def _want_markers(
        self,
        caught_up: Mapping[TopicPartition, datetime],
        elsewhere: Mapping[TopicPartition, Bound],
    ) -> None:
        """Ask for the markers that let the earliest waiting user's record go when every
        partition that holds it back can take one (`Timeline.wanted_markers`): idle price
        and commands partitions, this worker's or another's (their owner reads the marker
        and reports past it). The signals topic is left to its producers."""
        if self._markers is None:
            return
        kafka = self._kafka
        writable = (kafka.prices_topic, kafka.commands_topic)
        remote = {
            tp: (bound, None if tp.topic == kafka.prices_topic else tp.partition)
            for tp, bound in elsewhere.items()
            if tp.topic == kafka.prices_topic or tp.topic in kafka.user_topics
        }
        wanted = self.offsets.timeline.wanted_markers(
            caught_up.keys(),
            datetime.now(UTC),
            markable=lambda tp: tp.topic in writable,
            elsewhere=remote,
        )
        if wanted:
            self._markers.want(wanted)

    def _poll_ms(self) -> int:
        """How long the next fetch may wait for records: less when other workers share the
        group (their progress is read between fetches), and no longer than until the first
        record waiting for its turn can go if nothing else comes (its time plus
        `LATENESS_MS`: a partition read to its end then holds nothing earlier)."""
        wait = SHARED_POLL_MS if self._shared else 200
        retry_at = None if self._markers is None else self._markers.retry_at
        if retry_at is not None:  # a marker held back for its interval: ask again then
            wait = max(1, min(wait, int((retry_at - time.monotonic()) * 1000) + 1))
        first = self.offsets.timeline.first_key()
        if first is not None:
            due = first[0] + timedelta(milliseconds=self._settings.lateness_ms)
            until = (due - datetime.now(UTC)).total_seconds() * 1000
            wait = max(1, min(wait, int(until) + 1))
        return wait

    async def _read_to_end(self, tps: list[TopicPartition]) -> dict[TopicPartition, datetime]:
        """The partitions of `tps` read to their end, each with when that end holds: now,
        while the broker answers.

        A partition read to its end and not paused has a fetch waiting at the broker (a long
        poll, answered as soon as a record is appended, else after the fetch wait), so
        while its fetches are answered "nothing more" holds up to now,
        less the time a record takes from its producer to the worker, which `LATENESS_MS`
        covers. (Not the time of the last fetch response: an idle partition's long poll
        answers only every fetch wait, so its promise would lag by that much and every
        signal with it.) A paused partition is not fetched: its end is not known to be its
        end."""
        paused = self.consumer.paused()
        now = datetime.now(UTC)
        seen: dict[TopicPartition, datetime] = {}
        for tp in await read_to_end(self.consumer, [tp for tp in tps if tp not in paused]):
            polled = self.consumer.last_poll_timestamp(tp)
            last = datetime.fromtimestamp(polled / 1000, UTC) if polled else now
            # Answered within a fetch wait: the long poll stands, "nothing more" holds now;
            # else the broker is not answering, and it holds only when it last answered.
            seen[tp] = now if now - last <= FETCH_ANSWERED else min(last, now)
        return seen

    async def _share(self, moved: Mapping[TopicPartition, Promise]) -> dict[TopicPartition, Bound]:
        """Store the promises that moved (before anything is released on their strength);
        with other workers in the group, tell them where this worker's partitions stand
        (`order_bounds`) and learn where theirs do ({} when this worker owns every
        partition)."""
        kafka = self._kafka
        everything: set[TopicPartition] = set()
        for topic in kafka.input_topics:
            ids = self.consumer.partitions_for_topic(topic) or set()
            everything |= {TopicPartition(topic, p) for p in ids}
        assigned = self.consumer.assignment()
        others = everything - set(assigned)
        self._shared = bool(others)
        promises = {(tp.topic, tp.partition): v for tp, v in moved.items()}
        mine: dict[tuple[str, int], Bound] = {}
        blocked: dict[tuple[str, int], bool] = {}
        if others:
            mine = {(tp.topic, tp.partition): b for tp, b in self.offsets.timeline.bounds().items()}
            blocked = {
                (tp.topic, tp.partition): True for tp in assigned if self.offsets.is_blocked(tp)
            }
            mine.update(dict.fromkeys(blocked))
        # Again when unchanged, now and then: a partition left out of the order stays out
        # only while its owner keeps saying so (`worker.db.bounds`).
        publish = bool(others) and (
            mine != self._published or time.monotonic() - self._published_at > REPUBLISH_S
        )
        if not (promises or publish or others):
            return {}

        def published() -> None:
            self._published, self._published_at = mine, time.monotonic()

        # Stored before anything released now commits, not before it starts (`order_writes`).
        self._order_writes.write(promises, Published(mine, blocked, published) if publish else None)
        if not others:
            return {}

        async def exchange() -> tuple[dict[tuple[str, int], Bound], set[tuple[str, int]]]:
            async with connection(self._pool) as conn:
                return await read_bounds(conn, kafka.consumer_group)

        bounds, excluded = await self._retried(
            "order-read", lambda: "the other workers' places in the order", exchange
        )
        return {
            tp: bounds.get((tp.topic, tp.partition))
            for tp in others
            if (tp.topic, tp.partition) not in excluded
        }

    def _pause_full(self) -> None:
        """Stop fetching a partition whose records wait in numbers, or any partition with
        records waiting once they take `ORDER_BUFFER_MAX_BYTES` in all (memory stays
        bounded); fetch it again once they went. A partition that holds the others back has
        none waiting, so this never stops the order."""
        timeline = self.offsets.timeline
        limit = max(100, 2 * self._kafka.fetch_max_records)
        too_big = timeline.buffered_bytes() > ORDER_BUFFER_MAX_BYTES
        if self._paused_in != self.offsets.generation:
            # A rebalance came: the partitions are assigned afresh (not paused by this).
            self._paused_in = self.offsets.generation
            self._paused.clear()
        for tp in timeline.sources():
            waiting = timeline.buffered(tp)
            full = waiting >= limit or (too_big and waiting > 0)
            if full and tp not in self._paused:
                with contextlib.suppress(IllegalStateError):
                    self.consumer.pause(tp)
                self._paused.add(tp)
            elif not full and tp in self._paused:
                self._paused.discard(tp)
                if not self.offsets.is_blocked(tp):
                    with contextlib.suppress(IllegalStateError):
                        self.consumer.resume(tp)
        self._paused &= set(timeline.sources())

    def _report_waiting(self, elsewhere: dict[TopicPartition, Bound]) -> None:
        """Say which partitions the order waits for, when it has waited a while (the log,
        and `/readyz` after `ORDER_STALL_S`)."""
        since = self._waiting_since
        if since is None or time.monotonic() - since < WAIT_REPORT_S:
            return
        if time.monotonic() - self._waiting_reported < WAIT_REPORT_S:
            return
        timeline = self.offsets.timeline
        waiting = set(timeline.waiting_on())
        first = timeline.first_key()
        remote = {
            tp
            for tp, bound in elsewhere.items()
            if bound is None or first is None or not first < bound
        }
        if not (waiting or remote):
            return
        self._waiting_reported = time.monotonic()
        self._waiting_on = names(waiting) + [f"{n} (another worker's)" for n in names(remote)]
        log.warning(
            "order_waits_for_partitions",
            partitions=self._waiting_on,
            waited_s=round(time.monotonic() - since, 1),
            buffered=len(timeline),
            hint="a partition not read to its end (or another worker's not yet applied up to "
            "this point) holds back the records after it in event time",
        )

    def order_reason(self) -> str | None:
        """Why `/readyz` fails because the order has waited for `ORDER_STALL_S` on the same
        partitions; None otherwise."""
        since = self._waiting_since
        if since is None or not self._waiting_on:
            return None
        waited = time.monotonic() - since
        if waited < ORDER_STALL_S:
            return None
        return (
            f"records wait {waited:.0f}s for their turn in event-time order: nothing is "
            f"applied until {', '.join(self._waiting_on)} can no longer bring anything "
            "earlier (a partition not read to its end, or another worker's not advancing)"
        )

    async def _process_released(self, entries: list[Entry[TopicPartition]]) -> None:
        """Apply released records in their order: each run of ticks in one lane, in order;
        each run of signals dealt by partition into lanes side by side (one user's signals
        stay on one partition, and users do not affect each other)."""
        signals = self._kafka.signals_topic
        now = time.monotonic()
        for run in runs(entries, kind=lambda e: e.source.topic):
            if run[0].source.topic != signals:
                # Ticks (they act on every user) and commands (rare): one lane, in order.
                await self._run_lanes([ordered_chunks(run)])
                continue
            parts = parts_of(run)
            items = [i for p in parts for i in p.items]
            await self._learn_fanouts(items)
            for part in parts:
                part.costs = [self._fanouts.cost(item) for item in part.items]
                for item in part.items:
                    if item is not None:
                        self._metrics.signal_wait.observe(max(0.0, now - item.taken))
            lanes = deal(parts, self._settings.pipeline_concurrency)
            await self._run_lanes([chunks(lane) for lane in lanes])

    async def _run_lanes(self, lanes: list[Iterable[Chunk]]) -> None:
        """The lanes side by side; every lane finishes (commits or gives up) before a
        failure is raised, so one lane's outage never rolls back another's finished work."""
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

    async def _process_lane(self, lane: Iterable[Chunk], key: str) -> None:
        started = time.perf_counter()
        for chunk in lane:
            outcomes = await self._retried(key, partial(where, chunk), partial(self._commit, chunk))
            committed_at = time.time()
            for record in chunk.dead_lettered:
                self._dead_events.pop(_coordinates_of(record), None)
            self.offsets.stored(chunk.next_offsets, chunk.last_at)
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
                    await self._finish(conn, chunk, dead)
            except StopRequested:
                raise  # the batch is abandoned, not any record's fault
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
                await self._finish(conn, chunk, dead)
            return outcomes

    async def _finish(self, conn: asyncpg.Connection, chunk: Chunk, dead: list[DeadLetter]) -> None:
        await self.offsets.store(conn, chunk.next_offsets, chunk.last_at)
        # The dead-letter events of the records this transaction moves past (those of the
        # fetch's decoding, then the handlers'), with the offset (`worker.db.events`).
        letters = [
            letter
            for record in chunk.dead_lettered
            if (letter := self._dead_events.get(_coordinates_of(record))) is not None
        ]
        await insert_dead_letter_events(conn, [_event_of(d) for d in (*letters, *dead)])
        if dead:
            # Acknowledged by the broker before the offset moves past them (the commit).
            await self._dead_letters.send(dead)
        # The promises this work was released on are stored before it commits.
        await self._order_writes.durable()

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
        if isinstance(items[0].message, PriceTickV1):
            return await self._apply_ticks(conn, items), []
        return await self._apply_commands(conn, items), []

    async def _apply_commands(
        self, conn: asyncpg.Connection, items: list[Item]
    ) -> list[tuple[Item, Outcome]]:
        """A chunk's commands, one after the other (each is a few statements)."""
        results = await handle_commands(
            self._stores(conn), commands_of(items), trading=self._settings.trading
        )
        for item, result in zip(items, results, strict=True):
            if result.reused:  # the key of another command: this one is not done
                log.warning(
                    "command_key_reused",
                    **coordinates(item.record),
                    command=result.command,
                    key_used_by=result.stored,
                    hint="the result under this key is the earlier command's; send it "
                    "with another idempotency key",
                )
                continue
            log.info(
                "command_duplicate" if result.duplicate else f"command_{result.outcome.status}",
                **coordinates(item.record),
                command=result.command,
                reason=result.outcome.reason,
            )
        return [(item, None) for item in items]

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


def _coordinates_of(record: KafkaRecord) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


def _event_of(letter: DeadLetter) -> DeadLetterEvent:
    """A dead letter's event: its record's key as the user when that is a user id."""
    record = letter.record
    user_id = None
    if record.key is not None and len(record.key) <= 64:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            user_id = UUID(record.key.decode("ascii"))
    try:
        at = record_time(record)
    except InvalidMessage:
        at = datetime(1970, 1, 1, tzinfo=UTC)
    return DeadLetterEvent(_coordinates_of(record), user_id, at, letter.reason, letter.kind)
