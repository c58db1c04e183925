"""Composition root of `signal-worker run`: pool, topics, consumer, HTTP, signals, drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from aiokafka.errors import KafkaError

from worker.consumer import Pipeline
from worker.db.pool import connection, create_pool
from worker.db.snapshots import hour_of, snapshot_all
from worker.errors import ServiceUnavailable
from worker.http import HealthServer, ReadyCheck
from worker.kafka import ensure_topics, make_producer, start_client
from worker.metrics import Metrics
from worker.retry import describe, set_retry_observer
from worker.settings import Settings

log = structlog.get_logger(__name__)


async def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    """`signal-worker run`: the worker until SIGTERM/SIGINT, then drain and return 0."""
    del args
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _request_stop, stop, sig)
    return await run_worker(settings, stop)


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    *,
    metrics: Metrics | None = None,
    started: asyncio.Future[int] | None = None,
) -> int:
    """Run until `stop` is set, then drain: finish in-flight work, commit, close; return 0.

    `started`, when given, receives the HTTP port once the consumer has started.
    """
    metrics = metrics or Metrics()
    set_retry_observer(metrics.retries.inc)
    log.info(
        "worker_starting",
        database=settings.db.masked_url(),
        kafka=settings.kafka_bootstrap_servers,
        group=settings.consumer_group,
        topics=[settings.signals_topic, settings.prices_topic],
    )
    pool = await create_pool(settings.db, timeout_s=settings.startup_timeout_s)
    pipeline: Pipeline | None = None
    http: HealthServer | None = None
    producer = make_producer(settings.kafka)
    try:
        await ensure_topics(settings.kafka, timeout_s=settings.startup_timeout_s)
        await start_client(producer, settings.kafka, timeout_s=settings.startup_timeout_s)
        pipeline = Pipeline(settings, pool, producer, metrics)
        pipeline.subscribe()
        await start_client(pipeline.consumer, settings.kafka, timeout_s=settings.startup_timeout_s)
        http = HealthServer(settings.http_port, metrics.registry, _readiness(pipeline, pool))
        await http.start()
        log.info("worker_started", http_port=http.port)
        if started is not None and not started.done():
            started.set_result(http.port)
        snapshots = asyncio.create_task(snapshot_hourly(pool, stop), name="snapshots")
        try:
            await pipeline.run(stop)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as exc:
            # Retries ran out; no offset was stored past the failed batch, so a restart
            # redoes it. One line for the operator, non-zero exit.
            log.exception("worker_gave_up", error=describe(exc))
            raise ServiceUnavailable(
                f"stopped after retries ran out: {describe(exc)}; a restart resumes from the "
                "last committed batch"
            ) from exc
        finally:
            stop.set()
            await snapshots
        log.info("worker_draining")
    finally:
        await _close(pipeline, producer, pool, http, settings.shutdown_timeout_s)
    log.info("worker_stopped")
    return 0


async def snapshot_hourly(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Snapshot every wallet at start-up and at each UTC hour until `stop` is set.

    Upserts, so several workers doing it at once write one row per wallet and hour. A
    failure is logged and retried at the next hour: snapshots never stop the pipeline.
    """
    while not stop.is_set():
        now = datetime.now(UTC)
        hour = hour_of(now)
        try:
            async with connection(pool) as conn:
                rows = await snapshot_all(conn, hour)
            log.info("snapshots_written", hour=hour.isoformat(), wallets=rows)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("snapshots_failed", hour=hour.isoformat(), error=describe(exc))
        next_hour = hour + timedelta(hours=1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), (next_hour - datetime.now(UTC)).total_seconds())


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("shutdown_requested", signal=sig.name)
    stop.set()


def _readiness(pipeline: Pipeline, pool: asyncpg.Pool) -> ReadyCheck:
    async def ready() -> str | None:
        if not pipeline.has_assignment():
            return "no partitions assigned"
        try:
            async with asyncio.timeout(2):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"database unreachable: {describe(exc)}"
        return None

    return ready


async def _close(
    pipeline: Pipeline | None,
    producer: object,
    pool: asyncpg.Pool,
    http: HealthServer | None,
    timeout_s: float,
) -> None:
    """Leave the group, flush the producer, close the pool and the HTTP server, bounded."""
    try:
        async with asyncio.timeout(timeout_s):
            if pipeline is not None:
                await pipeline.consumer.stop()
            await producer.stop()  # type: ignore[attr-defined]
            if http is not None:
                await http.stop()
            await pool.close()
    except TimeoutError:
        log.warning("shutdown_timed_out", timeout_s=timeout_s)
        pool.terminate()
