"""The events relay's cost and delay: what a throughput run with the relay on adds.

After the pipeline's last commit, `settle` waits for the relay to drain the outbox (no row
unpublished), then reads the whole events topic back and pairs every record with its
outbox row by event id.

The delay is measured directly, not from the relay's histogram
(`signal_worker_event_delay_seconds`, whose p99 would be interpolated within buckets as
coarse as 1 s to 2.5 s): per event, from its outbox row's `created_at` to the Kafka
timestamp of its record. The topic keeps the producer's CreateTime, which aiokafka sets
when the relay hands the record to `send` (the broker's acknowledgement follows within
milliseconds); under LogAppendTime it would be the broker's append, just as fine. Both
clocks are this machine's. `created_at` is `now()` of the effect's transaction, i.e. its
start: the figure includes the transaction's own length, so it bounds the commit-to-Kafka
delay from above. The relay's histogram (created_at to after the mark) is reported beside
it as a check. Each event is counted once (its first record); a record read twice is
counted as a duplicate, an outbox row never read as missing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.infra import PARTITIONS, BenchError, WorkerProcess
from benchmarks.scrape import Histogram, scrape

DELAY = "signal_worker_event_delay_seconds"
UNPUBLISHED_GAUGE = "signal_worker_events_unpublished"
PUBLISHED = "signal_worker_events_published_total"
DRAIN_POLL_S = 0.05
DRAIN_LIMIT_S = 600.0
TARGET_RATIO = 0.85  # throughput with the relay on / off: within 15%

UNPUBLISHED = "SELECT count(*) FROM event_outbox WHERE published_at IS NULL"
# The poll while draining: the first entry of the partial index of the unpublished, not a
# count of them all (which, every 50 ms over a backlog of 100,000s, slowed the relay down).
ANY_UNPUBLISHED = "SELECT EXISTS (SELECT 1 FROM event_outbox WHERE published_at IS NULL)"
CREATED = "SELECT event_id::text AS id, extract(epoch FROM created_at) AS t FROM event_outbox"


@dataclass(frozen=True)
class Delivery:
    """The events topic read back against the outbox."""

    delays_ms: list[float]  # per event: its record's timestamp - its row's created_at
    events: int  # outbox rows
    records: int  # records read from the topic
    duplicates: int  # records of an event read before
    missing: int  # outbox rows with no record
    unknown: int  # records without an outbox row (or without an event-id header)


def deliveries(records: Iterable[tuple[str | None, int]], created: Mapping[str, float]) -> Delivery:
    """Pair records (event id, timestamp in epoch ms) with the outbox's `created` (event id
    -> created_at, epoch s): each event's delay in ms, from its first record."""
    seen: set[str] = set()
    delays: list[float] = []
    count = duplicates = unknown = 0
    for event_id, timestamp_ms in records:
        count += 1
        if event_id is None or event_id not in created:
            unknown += 1
        elif event_id in seen:
            duplicates += 1
        else:
            seen.add(event_id)
            delays.append(timestamp_ms - created[event_id] * 1000)
    return Delivery(
        delays_ms=delays,
        events=len(created),
        records=count,
        duplicates=duplicates,
        missing=len(created) - len(seen),
        unknown=unknown,
    )


def ratio(on: float, off: float) -> float:
    """`on` / `off` (throughput with the relay on over off); NaN when off is not positive."""
    return on / off if off > 0 else math.nan


def within_target(on: float, off: float) -> bool:
    """Whether the relay costs at most 15% of the throughput (on >= 0.85 x off)."""
    r = ratio(on, off)
    return not math.isnan(r) and r >= TARGET_RATIO


@dataclass(frozen=True)
class RelayRun:
    """What the relay did in a throughput run with it on."""

    behind: int  # events unpublished when the pipeline's last record committed
    drain_s: float  # from then to none unpublished
    delivery: Delivery
    timestamp_type: str  # of the events topic's records: CreateTime or LogAppendTime
    histogram: Histogram | None  # the relay's own signal_worker_event_delay_seconds
    published_metric: int | None  # signal_worker_events_published_total
    unpublished_metric: int | None  # the gauge once drained


async def settle(
    conn: asyncpg.Connection, worker: WorkerProcess, bootstrap: str, topic: str
) -> RelayRun:
    """Wait for the outbox to drain (the worker still running), read the relay's metrics,
    then the events topic against the outbox."""
    started = time.monotonic()
    behind = int(await conn.fetchval(UNPUBLISHED))
    while await conn.fetchval(ANY_UNPUBLISHED):
        if time.monotonic() - started > DRAIN_LIMIT_S:
            left = int(await conn.fetchval(UNPUBLISHED))
            raise BenchError(f"the relay left {left:,} events unpublished after {DRAIN_LIMIT_S}s")
        worker.check_alive()
        await asyncio.sleep(DRAIN_POLL_S)
    drain_s = time.monotonic() - started
    metrics = await scrape(worker.http_port)
    # The gauge is set after each round of the relay (every 50 ms when idle).
    for _ in range(50):
        if metrics is None or metrics.total(UNPUBLISHED_GAUGE) == 0:
            break
        await asyncio.sleep(DRAIN_POLL_S)
        metrics = await scrape(worker.http_port)
    created = {r["id"]: float(r["t"]) for r in await conn.fetch(CREATED)}
    read, kind = await read_events(bootstrap, topic)
    # With no retention (the default) the relay deleted its outbox rows as it published:
    # each record's `committed-at` header is its row's created_at.
    for event_id, _, committed_ms in read:
        if event_id is not None and committed_ms is not None:
            created.setdefault(event_id, committed_ms / 1000)
    records = [(event_id, timestamp) for event_id, timestamp, _ in read]
    return RelayRun(
        behind=behind,
        drain_s=drain_s,
        delivery=deliveries(records, created),
        timestamp_type=kind,
        histogram=metrics.histogram(DELAY) if metrics is not None else None,
        published_metric=int(metrics.total(PUBLISHED)) if metrics is not None else None,
        unpublished_metric=int(metrics.total(UNPUBLISHED_GAUGE)) if metrics is not None else None,
    )


async def read_events(
    bootstrap: str, topic: str
) -> tuple[list[tuple[str | None, int, int | None]], str]:
    """Every record of `topic` up to its current end: (event-id header, timestamp ms,
    committed-at header ms), and the records' timestamp type."""
    # The reset that `assign` starts can land after a seek of ours that only set a strategy
    # (`seek_to_beginning`) and move the partition again: with the default `latest` it put a
    # partition at its end unread (4 runs in 8 waited 300 s), with `earliest` back at its
    # start after records were read (read twice: 300,609 records of 300,267). So each
    # partition is placed at its first offset by `seek` (which ends the pending reset), and
    # each record is kept by its offset: one read twice is still one record.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    await asyncio.sleep(0)  # let its background task start (stop() fails on one that did not)
    by_offset: dict[tuple[int, int], tuple[str | None, int, int | None]] = {}
    kind = "none read"
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        deadline = time.monotonic() + 300
        left = {tp for tp in partitions if ends[tp] > starts[tp]}
        while left:
            if time.monotonic() > deadline:
                raise BenchError(f"could not read {topic} to its end within 300 s")
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=5000)
            for tp, got in batch.items():
                for record in got:
                    if record.offset >= ends[tp]:
                        continue
                    headers = dict(record.headers or ())
                    event_id = headers.get("event-id")
                    committed = headers.get("committed-at")
                    by_offset[(tp.partition, record.offset)] = (
                        None if event_id is None else event_id.decode(),
                        record.timestamp,
                        None if committed is None else int(committed),
                    )
                    kind = "LogAppendTime" if record.timestamp_type == 1 else "CreateTime"
            for tp in list(left):  # every partition, not only those that returned records
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        expected = sum(ends[tp] - starts[tp] for tp in partitions)
        if len(by_offset) != expected:
            raise BenchError(
                f"read {len(by_offset):,} records of {topic}, which holds {expected:,}"
            )
        records = [by_offset[k] for k in sorted(by_offset)]
    finally:
        await consumer.stop()
    return records, kind
