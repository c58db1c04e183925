"""Scenarios 2 and 3: PostgreSQL, then Kafka, stopped mid-stream and started again.

Both run against the suite's own services (`own_services`), never the shared ones, and the
worker must ride the outage out in the same process: wait, retry, carry on, exit 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.helpers.books import Book, make_book, mint
from tests.helpers.db import connected, count
from tests.helpers.kafka import Feed, Topics, create_test_topics, delete_topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import OwnServices, stop_own
from tests.helpers.workers import (
    WorkerProcess,
    repeated_lines,
    starts,
    terminate_within,
    wait_for,
    wait_for_count,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

USERS, AGENTS, PER_USER = 5, 4, 200  # 1,000 signals before the outage, 1,000 more
OUTAGE_S = 10
DRAIN_BOUND_S = 10


@pytest.fixture
async def own_topics(own_services: OwnServices) -> AsyncIterator[Topics]:
    """Fresh topics on the suite's own broker."""
    names = await create_test_topics(own_services.services)
    yield names
    own_services.start("kafka")
    await delete_topics(
        own_services.services.kafka_bootstrap,
        [names.signals, names.prices, names.dlq, names.commands],
    )


async def _book(db_url: str) -> Book:
    async with connected(db_url) as conn:
        return await make_book(conn, USERS, AGENTS)


async def _ready_status(worker: WorkerProcess) -> tuple[int, str]:
    return await worker.get("/readyz")


async def _wait_ready(worker: WorkerProcess, timeout_s: float = 60) -> None:
    body = ""

    async def ready() -> bool:
        nonlocal body
        status, body = await _ready_status(worker)
        return status == 200

    try:
        await wait_for(ready, timeout_s=timeout_s, what="/readyz to say 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: /readyz still says {body!r}") from None


async def test_database_outage_mid_stream_waits_retries_and_carries_on(
    own_services: OwnServices, own_db_url: str, own_topics: Topics, report: Report
) -> None:
    own = own_services
    seed, rng = seeded("database-outage")
    tokens = [mint(rng) for _ in range(20)]
    book = await _book(own_db_url)
    before = book.signals(PER_USER, tokens)
    during = book.signals(PER_USER, tokens, start=PER_USER)
    total = (len(before) + len(during)) * AGENTS
    worker = WorkerProcess(worker_env(own.services, own_db_url, own_topics)).start()
    seen_503: list[str] = []
    try:
        await worker.wait_started()
        await _wait_ready(worker)
        await send_all(own.services.kafka_bootstrap, own_topics.signals, before)
        await wait_for_count(own_db_url, EXECUTIONS, len(before) * AGENTS // 4)
        at_stop = await count(own_db_url, EXECUTIONS)
        await stop_own(own, "postgres")
        stopped = asyncio.get_running_loop().time()
        # The stream goes on while the database is away.
        await send_all(own.services.kafka_bootstrap, own_topics.signals, during)
        while asyncio.get_running_loop().time() - stopped < OUTAGE_S:
            status, body = await _ready_status(worker)
            if status == 503:
                seen_503.append(body)
            await asyncio.sleep(0.5)
        assert worker.is_alive(), f"the worker exited during the outage:\n{worker.tail()}"
        await asyncio.to_thread(own.start, "postgres")
        await wait_for_count(own_db_url, EXECUTIONS, total, timeout_s=120)
        await _wait_ready(worker)
        alive = worker.is_alive()
    finally:
        own.start("postgres")
        code = worker.terminate()

    async with connected(own_db_url) as conn:
        ledger = await measure(conn, book.expected)
    retries = sum('"retrying_after_transient_error"' in line for line in worker.lines)
    report(
        "2 database outage",
        records=f"{len(before) + len(during)} signals x {AGENTS} agents",
        faults=f"PostgreSQL stopped {OUTAGE_S}s at {at_stop} executions, "
        f"{len(seen_503)} x /readyz 503, {retries} retries",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert seen_503, "/readyz never said 503 while PostgreSQL was down"
    assert all("database" in body for body in seen_503), seen_503
    assert alive, "the worker exited after the outage"
    assert starts(worker) == 1, "the worker restarted"
    assert code == 0, worker.tail()
    assert at_stop < total
    assert_exactly_once(ledger)


async def test_broker_outage_mid_stream_waits_retries_and_carries_on(
    own_services: OwnServices, own_db_url: str, own_topics: Topics, report: Report
) -> None:
    own = own_services
    seed, rng = seeded("broker-outage")
    tokens = [mint(rng) for _ in range(20)]
    book = await _book(own_db_url)
    stream = book.signals(PER_USER * 3, tokens)
    total = len(stream) * AGENTS
    # The broker stops as the feed reaches its hold, two thirds in; the rest comes after.
    feed = Feed(own.services.kafka_bootstrap, [(own_topics.signals, stream)], 30, hold_at=20)
    before = feed.before_hold(stream)
    worker = WorkerProcess(worker_env(own.services, own_db_url, own_topics)).start()
    statuses: list[tuple[int, str]] = []
    feeder: asyncio.Task[None] | None = None
    try:
        await worker.wait_started()
        await _wait_ready(worker)
        feeder = asyncio.create_task(feed.run())
        await feed.held.wait()
        await stop_own(own, "kafka")
        at_stop = await count(own_db_url, EXECUTIONS)
        stopped = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - stopped < OUTAGE_S:
            statuses.append(await _ready_status(worker))
            await asyncio.sleep(0.5)
        assert worker.is_alive(), f"the worker exited during the outage:\n{worker.tail()}"
        await asyncio.to_thread(own.start, "kafka")
        feed.release()
        await feeder
        await wait_for_count(own_db_url, EXECUTIONS, total, timeout_s=150)
        await _wait_ready(worker)
        alive = worker.is_alive()
    finally:
        if feeder is not None:
            feeder.cancel()
        own.start("kafka")
        code = worker.terminate()
    lines, most, kind = repeated_lines(worker)

    async with connected(own_db_url) as conn:
        ledger = await measure(conn, book.expected)
    report(
        "3 broker outage",
        records=f"{len(stream)} signals x {AGENTS} agents",
        faults=f"Kafka stopped {OUTAGE_S}s with {at_stop} of the {before * AGENTS} executions "
        f"published before it written, /readyz during it {sorted({s for s, _ in statuses})}",
        log=f"{lines} warning/error lines, at most {most} of one kind ({kind})",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    # Contract section 2: /readyz is "connected to Kafka and PostgreSQL".
    assert any(s == 503 and "kafka" in body.lower() for s, body in statuses), (
        f"/readyz never said 503 for Kafka while the broker was down: {statuses}"
    )
    # A lasting condition is said once per interval (60 s, longer than this run), with a
    # count: the first line of each kind, and at most one more (an interval boundary).
    assert most <= 2, f"{most} lines of one kind in one outage: {kind}"
    assert alive, "the worker exited after the outage"
    assert starts(worker) == 1, "the worker restarted"
    assert code == 0, worker.tail()
    assert at_stop <= before * AGENTS < total, "the broker stopped after the stream's end"
    assert_exactly_once(ledger)


async def test_sigterm_during_a_broker_outage_still_drains_and_exits_0(
    own_services: OwnServices,
    own_topics: Topics,
    db_url: str,
    db_conn: asyncpg.Connection,
    report: Report,
) -> None:
    """Beyond the seven: the offsets live in PostgreSQL, so a broker outage must not hold
    up a shutdown (the database here is the shared one, which no test stops)."""
    own = own_services
    seed, rng = seeded("sigterm-in-broker-outage")
    tokens = [mint(rng) for _ in range(20)]
    book = await make_book(db_conn, USERS, AGENTS)
    stream = book.signals(PER_USER * 2, tokens)
    total = len(stream) * AGENTS
    env = worker_env(own.services, db_url, own_topics)
    # Half the stream is published before the broker stops, the rest only after the restart.
    half = len(stream) // 2
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        await send_all(own.services.kafka_bootstrap, own_topics.signals, stream[:half])
        await wait_for_count(db_url, EXECUTIONS, total // 10)
        await stop_own(own, "kafka")
        at_stop = await count(db_url, EXECUTIONS)
    finally:
        # The bound of contract section 1's drain: `terminate` raises if it takes longer.
        code = terminate_within(worker, DRAIN_BOUND_S)
        await asyncio.to_thread(own.start, "kafka")
    at_exit = await count(db_url, EXECUTIONS)

    second = WorkerProcess(env).start()
    try:
        await second.wait_started()
        await send_all(own.services.kafka_bootstrap, own_topics.signals, stream[half:])
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=120)
    finally:
        second_code = second.terminate()
    ledger = await measure(db_conn, book.expected)
    report(
        "3b SIGTERM in a broker outage",
        records=f"{len(stream)} signals x {AGENTS} agents",
        faults=f"Kafka stopped at {at_stop} executions, SIGTERM, {at_exit} at exit, restarted",
        **ledger.figures,
        exit=f"{code}, {second_code}",
        seed=seed,
    )
    assert code == 0, worker.tail()
    assert second_code == 0, second.tail()
    assert at_exit <= half * AGENTS < total
    assert_exactly_once(ledger)


async def test_sigterm_while_a_batch_retries_in_a_database_outage_exits_0_in_time(
    own_services: OwnServices, own_db_url: str, own_topics: Topics, report: Report
) -> None:
    """Retries watch the stop signal: with PostgreSQL down and a batch retrying, SIGTERM
    ends the retries at once, the batch is abandoned (nothing of it stored) and the worker
    exits 0 within the drain bound; the next worker redoes the batch."""
    own = own_services
    seed, rng = seeded("sigterm-in-database-outage")
    tokens = [mint(rng) for _ in range(20)]
    book = await _book(own_db_url)
    before = book.signals(PER_USER, tokens)
    during = book.signals(PER_USER, tokens, start=PER_USER)
    total = (len(before) + len(during)) * AGENTS
    env = worker_env(own.services, own_db_url, own_topics)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        await send_all(own.services.kafka_bootstrap, own_topics.signals, before)
        await wait_for_count(own_db_url, EXECUTIONS, len(before) * AGENTS)
        await stop_own(own, "postgres")
        await send_all(own.services.kafka_bootstrap, own_topics.signals, during)

        def retrying() -> bool:
            # A batch of the signals (its partition and offsets waiting), not the order's
            # own writes, which retry beside the batches (`worker.pipeline.order_writes`).
            return any(
                '"retrying_after_transient_error"' in line and ".signals:" in line
                for line in worker.lines
            )

        async def is_retrying() -> bool:
            return retrying()

        await wait_for(is_retrying, timeout_s=30, what="the worker to retry a batch")
    finally:
        # The bound of contract section 1's drain: `terminate` raises if it takes longer.
        code = terminate_within(worker, DRAIN_BOUND_S)
        await asyncio.to_thread(own.start, "postgres")
    abandoned = [line for line in worker.lines if '"batch_abandoned_at_shutdown"' in line]
    gave_up = [line for line in worker.lines if '"worker_gave_up"' in line]

    second = WorkerProcess(env).start()
    try:
        await second.wait_started()
        await wait_for_count(own_db_url, EXECUTIONS, total, timeout_s=120)
    finally:
        second_code = second.terminate()
    async with connected(own_db_url) as conn:
        ledger = await measure(conn, book.expected)
    report(
        "2b SIGTERM while a batch retries in a database outage",
        records=f"{len(before) + len(during)} signals x {AGENTS} agents",
        faults=f"PostgreSQL stopped after {len(before) * AGENTS} executions, SIGTERM while "
        f"retrying, {len(abandoned)} batch(es) abandoned",
        **ledger.figures,
        exit=f"{code}, {second_code}",
        seed=seed,
    )
    assert code == 0, worker.tail()
    assert gave_up == [], "the worker gave up instead of draining"
    assert abandoned, worker.tail()
    assert second_code == 0, second.tail()
    assert_exactly_once(ledger)
