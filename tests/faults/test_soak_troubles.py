"""Scenario 12: a soak. Two workers in one group run a paced stream of signals and ticks
while they are SIGKILLed and SIGTERMed in turn and, all along, the database's own troubles
are injected: SOL balance rows held past `lock_timeout`, positions held past
`statement_timeout`. Every record goes through exactly once: lost 0, duplicated 0, nothing
dead-lettered, every token's newest price stored, `check` ok.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import Tick, latest_prices, make_book, mint, ticks
from tests.helpers.db import connected, stored_prices
from tests.helpers.kafka import create_test_topics, delete_topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, log_events, wait_for, wait_for_count, worker_env
from worker.domain.models import SOL_MINT

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

USERS, AGENTS, PER_USER = 12, 5, 40  # 480 signals x 5 agents
CHUNKS = 40  # the stream, published a slice every PAUSE_S
PAUSE_S = 0.5
KILLS, TERMS = 3, 2
HOLD_S = 2.0  # each injected lock is held this long, past the timeouts below


async def _hold(db_url: str, sql: str, *args: object) -> None:
    async with connected(db_url) as conn, conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute("SET LOCAL lock_timeout = 0")
        await conn.fetch(sql, *args)
        await asyncio.sleep(HOLD_S)


async def _inject_troubles(db_url: str, rng: random.Random, done: asyncio.Event) -> int:
    """Hold SOL balances or positions, in turn, until `done`; how many holds."""
    holds = 0
    while not done.is_set():
        if holds % 2 == 0:
            sql = "SELECT 1 FROM agent_balances WHERE token_address = $1 FOR UPDATE"
            await _hold(db_url, sql, SOL_MINT)
        else:
            await _hold(db_url, "SELECT 1 FROM agent_positions FOR UPDATE")
        holds += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(0.2, 1.0))
    return holds


async def _publish(
    bootstrap: str,
    signals_topic: str,
    prices_topic: str,
    signals: list[dict[str, Any]],
    price_ticks: list[Tick],
) -> None:
    for c in range(CHUNKS):
        await send_all(bootstrap, prices_topic, [t.message() for t in price_ticks[c::CHUNKS]])
        await send_all(bootstrap, signals_topic, signals[c::CHUNKS])
        await asyncio.sleep(PAUSE_S)


async def test_two_workers_under_kills_terms_and_database_timeouts_lose_and_double_nothing(
    services: Services, db_url: str, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("soak-troubles")
    topics = await create_test_topics(services, partitions=6)
    tokens = [mint(rng) for _ in range(15)]
    book = await make_book(db_conn, USERS, AGENTS)
    signals = book.signals(PER_USER, tokens)
    price_ticks = ticks(rng, tokens, 1200)
    total = len(signals) * AGENTS
    name = await db_conn.fetchval("SELECT current_database()")
    await db_conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '500ms'")
    await db_conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '1s'")
    env = worker_env(services, db_url, topics)
    every: list[WorkerProcess] = []
    workers = [WorkerProcess(env).start() for _ in range(2)]
    every.extend(workers)
    done = asyncio.Event()
    codes: list[int] = []
    try:
        for w in workers:
            await w.wait_started()
        troubles = asyncio.create_task(_inject_troubles(db_url, rng, done))
        publisher = asyncio.create_task(
            _publish(services.kafka_bootstrap, topics.signals, topics.prices, signals, price_ticks)
        )
        faults = ["kill"] * KILLS + ["term"] * TERMS
        rng.shuffle(faults)
        for fault in faults:
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            i = rng.randrange(2)
            if fault == "kill":
                workers[i].kill()
            else:
                codes.append(workers[i].terminate())
            workers[i] = WorkerProcess(env).start()
            every.append(workers[i])
            await workers[i].wait_started()
        await publisher
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=180)
        done.set()
        holds = await troubles
        # Every tick is in once the newest of each token is stored.
        newest = latest_prices(price_ticks)

        async def prices_in() -> bool:
            return await stored_prices(db_conn, newest) == newest

        with contextlib.suppress(AssertionError):  # the assertion below says what differs
            await wait_for(prices_in, timeout_s=60, what="the newest price of every token")
        prices = await stored_prices(db_conn, newest)
    finally:
        done.set()
        codes.extend(w.terminate() for w in workers)
        await delete_topics(
            services.kafka_bootstrap, [topics.signals, topics.prices, topics.dlq, topics.commands]
        )
    ledger = await measure(db_conn, book.expected)
    dead = sum(len(log_events(w, "record_dead_lettered")) for w in every)
    retried = sum(len(log_events(w, "retrying_after_transient_error")) for w in every)
    report(
        "12 soak: kills, terms and database timeouts",
        records=f"{len(signals)} signals x {AGENTS} agents, {len(price_ticks)} ticks, 6 partitions",
        faults=f"{KILLS} SIGKILLs, {TERMS} SIGTERMs, {holds} lock holds of {HOLD_S}s past "
        f"lock_timeout=500ms / statement_timeout=1s, {retried}+ retry lines",
        dead_letters=dead,
        prices=f"{sum(prices.get(t) == p for t, p in newest.items())}/{len(newest)} newest",
        **ledger.figures,
        exits=codes,
        seed=seed,
    )
    assert dead == 0
    assert holds >= 4, "the troubles were not injected"
    assert prices == newest
    assert all(code == 0 for code in codes), codes
    assert_exactly_once(ledger)
