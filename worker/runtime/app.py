"""Composition root of `signal-worker run`: pool, topics, consumer, HTTP, signals, drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import itertools
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker import version
from worker.db.migrations import default_schema_dir, load_migrations, require_migrated
from worker.db.pool import connection, create_pool
from worker.db.prices import held_price_age_s, price_history_upkeep
from worker.db.snapshots import hour_of, snapshot_all
from worker.db.store import PgStore
from worker.errors import ServiceUnavailable, WorkerError
from worker.metrics import Metrics
from worker.pipeline.consumer import Pipeline
from worker.pipeline.deadletters import DeadLetters
from worker.pipeline.kafka import (
    DLQ_HEADROOM_BYTES,
    FETCH_OPTIONS,
    GROUP_OPTIONS,
    client_options,
    ensure_topics,
    make_producer,
    start_client,
)
from worker.pipeline.markers import Markers
from worker.pipeline.relay import Relay, event_batch_bytes
from worker.pipeline.telemetry import report_snapshots
from worker.retry import SERVICE_ERRORS, describe, set_retry_observer
from worker.runtime.http import HealthServer, ReadyCheck
from worker.settings import Settings

log = structlog.get_logger(__name__)
_T = TypeVar("_T")


async def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    """`signal-worker run`: the worker until SIGTERM/SIGINT, then drain and return 0."""
    del args
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _request_stop, stop, sig)
    return await run_worker(settings, stop)


# The cyclic garbage collector's first-generation threshold (Python's default: 700). The
# worker allocates in bursts (thousands of rows and Decimals per batch, almost none of them
# in reference cycles): at the default, a batch over 10,000 positions triggers dozens of
# collections, each walking the young objects; here one or two.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer cyclic-GC passes for a service that allocates in bursts: a higher first
    threshold, and what start-up created (modules, settings, pools) frozen out of every
    collection (`gc.freeze`). Memory stays bounded: cycles are still collected."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@dataclass
class _Parts:
    """What start-up has opened so far, so that shutdown closes exactly that."""

    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None
    relay_producer: AIOKafkaProducer | None = None
    marker_producer: AIOKafkaProducer | None = None
    pipeline: Pipeline | None = None
    relay: Relay | None = None
    http: HealthServer | None = None


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    *,
    metrics: Metrics | None = None,
    started: asyncio.Future[int] | None = None,
) -> int:
    """Run until `stop` is set, then drain: finish in-flight work, commit, close; return 0.

    `started`, when given, receives the HTTP port once the consumer has started. A stop
    during start-up (a service still unreachable) ends the start-up at once, with exit 0.
    """
    metrics = metrics or Metrics()
    set_retry_observer(lambda cause: metrics.retries.labels(cause).inc())
    log.info(
        "worker_starting",
        version=version(),
        database=settings.db.masked_url(),
        kafka=settings.kafka_bootstrap_servers,
        group=settings.consumer_group,
        topics=settings.kafka.input_topics,
    )
    parts = _Parts()
    try:
        running = await _unless_stopped(_start(settings, metrics, parts), stop)
        if running is None:
            log.info("worker_stopped_during_startup")
            return 0
        pipeline, pool, port = running
        log.info("worker_started", http_port=port)
        if started is not None and not started.done():
            started.set_result(port)
        await _serve(pipeline, pool, stop, settings, metrics, parts.relay)
        log.info("worker_draining")
    finally:
        await _close(parts, settings.shutdown_timeout_s)
    log.info("worker_stopped")
    return 0


async def _start(
    settings: Settings, metrics: Metrics, parts: _Parts
) -> tuple[Pipeline, asyncpg.Pool, int]:
    """Open everything, recording each part in `parts` as it opens; the serving parts."""
    timeout_s = settings.startup_timeout_s
    # The worker's transactions write trade events to the outbox (schema 0013's triggers)
    # only when the relay publishes them.
    events = {"signal_worker.events": "on" if settings.events_enabled else "off"}
    parts.pool = await create_pool(settings.db, timeout_s=timeout_s, server_settings=events)
    async with connection(parts.pool) as conn:
        await require_migrated(conn, load_migrations(default_schema_dir()))
    limits = await ensure_topics(
        settings.kafka,
        timeout_s=timeout_s,
        events_topic=settings.events_topic_name if settings.events_enabled else None,
    )
    dlq_max_bytes = limits.dlq
    parts.producer = make_producer(
        settings.kafka, max_request_bytes=dlq_max_bytes + DLQ_HEADROOM_BYTES
    )
    await start_client(parts.producer, settings.kafka, timeout_s=timeout_s, progress=True)
    dead_letters = DeadLetters(parts.producer, settings.dlq_topic, metrics, max_bytes=dlq_max_bytes)
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka),
        **FETCH_OPTIONS,
        **GROUP_OPTIONS,
        group_id=settings.consumer_group,
        max_poll_records=settings.kafka_fetch_max_records,
    )
    markers = None
    if settings.order_markers:
        # Its own producer, lingering for nothing: a marker is what a waiting signal waits for.
        parts.marker_producer = make_producer(settings.kafka, linger_ms=0)
        await start_client(parts.marker_producer, settings.kafka, timeout_s=timeout_s)
        markers = Markers(
            parts.marker_producer,
            settings.consumer_group,
            metrics,
            interval_s=settings.order_marker_interval_ms / 1000,
            pending_s=settings.lateness_ms / 1000,
        )
    parts.pipeline = Pipeline(
        settings, parts.pool, consumer, dead_letters, metrics, stores=PgStore, markers=markers
    )
    if settings.events_enabled:
        # Its own producer: record batches as large as the events topic takes, and a flush
        # (at each take-over) that waits for events only, not for dead letters.
        parts.relay_producer = make_producer(
            settings.kafka, max_batch_bytes=event_batch_bytes(limits.events)
        )
        await start_client(parts.relay_producer, settings.kafka, timeout_s=timeout_s)
        parts.relay = Relay(settings, parts.relay_producer, metrics, topic_limit=limits.events)
    # The port before the group: a second worker beside a running one (the port taken)
    # stops here, without joining the group and setting off a rebalance of the first.
    parts.http = HealthServer(
        settings.http_port,
        metrics.registry,
        _readiness(parts.pipeline, parts.pool, parts.relay),
        host=settings.http_host,
        max_connections=settings.http_max_connections,
        request_timeout_s=settings.http_request_timeout_s,
    )
    await _listen(parts.http, settings)
    parts.pipeline.subscribe()
    await start_client(parts.pipeline.consumer, settings.kafka, timeout_s=timeout_s, progress=True)
    return parts.pipeline, parts.pool, parts.http.port


async def _listen(http: HealthServer, settings: Settings) -> None:
    """Start the HTTP server; a port already taken is one `WorkerError` naming HTTP_PORT."""
    try:
        await http.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise WorkerError(
            f"HTTP port {settings.http_port} on {settings.http_host} is taken (is another "
            "worker running here?): set HTTP_PORT to a free port (0 picks one)"
        ) from exc


async def _unless_stopped(work: Coroutine[Any, Any, _T], stop: asyncio.Event) -> _T | None:
    """Run `work` unless `stop` comes first (then cancel it and return None)."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopped.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _serve(
    pipeline: Pipeline,
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    settings: Settings,
    metrics: Metrics,
    relay: Relay | None = None,
) -> None:
    relaying = asyncio.create_task(relay.run(stop), name="relay") if relay else None
    snapshots = asyncio.create_task(
        snapshot_hourly(
            pool, stop, price_history_days=settings.price_history_days, metrics=metrics
        ),
        name="snapshots",
    )
    health = asyncio.create_task(
        watch_health(_readiness(pipeline, pool, relay), pool, stop, metrics), name="health"
    )
    try:
        await pipeline.run(stop)
    except SERVICE_ERRORS as exc:
        # Retries ran out; no offset was stored past the failed batch, so a restart
        # redoes it. One line for the operator, non-zero exit.
        log.exception("worker_gave_up", error=describe(exc))
        raise ServiceUnavailable(
            f"stopped after retries ran out: {describe(exc)}; a restart resumes from the "
            "last committed batch"
        ) from exc
    finally:
        stop.set()
        if relaying is not None:
            # A short grace to publish what the drain committed, then cancelled: in an
            # outage its connect, flush or sends could outlast the drain (what it sent and
            # did not mark is found on the topic by the next relay).
            try:
                await asyncio.wait_for(asyncio.shield(relaying), RELAY_GRACE_S)
            except TimeoutError:
                relaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relaying
        await snapshots
        health.cancel()  # its measures need not finish; the drain must not wait for them
        with contextlib.suppress(asyncio.CancelledError):
            await health


UPKEEP_RETRY_S = (60.0, 120.0, 300.0, 600.0)  # then every 10 minutes, until the hour
RELAY_GRACE_S = 2.0  # at shutdown, for the relay's last round


async def snapshot_hourly(
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    price_history_days: int = 30,
    metrics: Metrics | None = None,
) -> None:
    """Snapshot every wallet, and keep the price history's partitions (made a week ahead,
    those older than `price_history_days` dropped: `price_history_upkeep`), at start-up and
    at each UTC hour until `stop` is set.

    Upserts and idempotent DDL, so several workers doing it at once are fine. A failed
    snapshot is logged and redone at the next hour. The upkeep never waits in front of the
    pipeline: each step gives up after a short lock timeout, and an upkeep that could not
    finish is tried again after 1, 2, 5, then every 10 minutes within the hour (a tick with
    no partition of its day lands in the history's default partition meanwhile, and is
    moved into its day's partition when that is made).
    """
    while not stop.is_set():
        now = datetime.now(UTC)
        hour = hour_of(now)
        try:
            async with connection(pool) as conn:
                done = await snapshot_all(conn, hour)
            report_snapshots(done, hour, metrics)
        except SERVICE_ERRORS as exc:
            log.warning("snapshots_failed", hour=hour.isoformat(), error=describe(exc))
            if metrics is not None:
                metrics.snapshot_failures.inc()
        next_hour = hour + timedelta(hours=1)
        await _upkeep_within(pool, stop, price_history_days, next_hour)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), (next_hour - datetime.now(UTC)).total_seconds())


async def _upkeep_within(
    pool: asyncpg.Pool, stop: asyncio.Event, keep_days: int, deadline: datetime
) -> None:
    """`price_history_upkeep` until it is done, retried after `UPKEEP_RETRY_S`, until
    `deadline` or `stop`."""
    for attempt in itertools.count():
        why: str | None
        try:
            async with connection(pool) as conn:
                done = await price_history_upkeep(conn, keep_days)
            why = done.postponed
            if done.created or done.dropped or done.moved:
                log.info("price_history_upkept", created=done.created, dropped=done.dropped,
                         moved=done.moved)  # fmt: skip
        except SERVICE_ERRORS as exc:
            why = describe(exc)
        if why is None:
            return
        delay = UPKEEP_RETRY_S[min(attempt, len(UPKEEP_RETRY_S) - 1)]
        left = (deadline - datetime.now(UTC)).total_seconds()
        log.warning("price_history_upkeep_postponed", reason=why,
                    retry_in_s=delay if delay < left else None)  # fmt: skip
        if delay >= left:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return


HEALTH_EVERY_S = 15.0  # how often `watch_health` measures


async def watch_health(
    ready: ReadyCheck,
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    metrics: Metrics,
    *,
    every_s: float = HEALTH_EVERY_S,
) -> None:
    """Every HEALTH_EVERY_S until `stop`: `signal_worker_ready` (what /readyz would answer)
    and `signal_worker_held_price_age_seconds`, for the alerts. Measured here, not at each
    scrape: a scrape must not wait for an unreachable server, and the compose stack probes
    only /healthz. A failed price-age read keeps the last value (the readiness says why)."""
    while not stop.is_set():
        try:
            metrics.ready.set(0 if await ready() is not None else 1)
        except Exception as exc:  # noqa: BLE001 - a measure must not end the watch
            # Not ready as far as anyone can tell: the alert on it must be able to fire.
            metrics.ready.set(0)
            log.warning("readiness_unmeasured", error=describe(exc))
        try:
            async with asyncio.timeout(5), connection(pool) as conn:
                metrics.held_price_age.set(await held_price_age_s(conn))
        except SERVICE_ERRORS as exc:  # TimeoutError among them (an OSError)
            log.debug("held_price_age_unmeasured", error=describe(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. a stored value the read refuses
            log.warning("held_price_age_unmeasured", error=describe(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("shutdown_requested", signal=sig.name)
    stop.set()


def _readiness(pipeline: Pipeline, pool: asyncpg.Pool, relay: Relay | None = None) -> ReadyCheck:
    async def ready() -> str | None:
        if not pipeline.has_assignment():
            return "no partitions assigned"
        if (blocked := pipeline.offsets.blocked_reason()) is not None:
            return blocked
        try:
            async with asyncio.timeout(2):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except SERVICE_ERRORS as exc:
            return f"database unreachable: {describe(exc)}"
        try:
            # A metadata round trip: the assignment outlives a broker that went away.
            async with asyncio.timeout(2):
                await pipeline.consumer.topics()
        except SERVICE_ERRORS as exc:
            return f"Kafka unreachable: {describe(exc)}"
        # Both answer, yet work waits for the server: a lock, a timeout, a full disk; or
        # for a partition that holds back the order.
        behind = relay.reason() if relay is not None else None
        return pipeline.troubles.reason() or pipeline.order_reason() or behind

    return ready


async def _stop_consumer(pipeline: Pipeline) -> None:
    """Leave the group and stop fetching, even when aiokafka re-raises its own cancellation.

    Its fetcher awaits the fetch tasks it has just cancelled (aio-libs/aiokafka#647, #983):
    with the broker away at shutdown one is pending, and its CancelledError escapes
    `stop()`. Only a cancellation of this task (the close timeout) is passed on.
    """
    try:
        await pipeline.consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("kafka_consumer_stop_cut_short")


async def _close(parts: _Parts, timeout_s: float) -> None:
    """Leave the group, flush the producer, close the HTTP server and the pool, bounded."""
    try:
        # Half of the budget went to the batch in flight (`Pipeline.run`); this is the rest.
        async with asyncio.timeout(timeout_s / 2):
            if parts.pipeline is not None:
                await _stop_consumer(parts.pipeline)
            if parts.producer is not None:
                await parts.producer.stop()
            if parts.relay_producer is not None:
                await parts.relay_producer.stop()
            if parts.marker_producer is not None:
                await parts.marker_producer.stop()
            if parts.http is not None:
                await parts.http.stop()
            if parts.pool is not None:
                await parts.pool.close()
    except TimeoutError:
        log.warning("shutdown_timed_out", timeout_s=timeout_s)
        if parts.pool is not None:
            parts.pool.terminate()
