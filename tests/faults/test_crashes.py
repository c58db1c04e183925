"""Scenario 1: the worker process SIGKILLed at five random moments while signals and ticks flow."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from tests.conftest import Services, Topics, make_settings
from tests.faults.conftest import (
    EXECUTIONS,
    Report,
    assert_exactly_once,
    latest_prices,
    make_book,
    measure,
    mint,
    seeded,
    send_all,
    stored_offsets,
    stored_prices,
    ticks,
)
from tests.support import WorkerProcess, count, env_for, wait_for_count

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

USERS, AGENTS, PER_USER = 20, 10, 100  # 2,000 signals x 10 agents
# The feed lasts about 20 s (40 chunks, 0.5 s apart): longer than five kills and restarts
# take, however fast the worker is, so that every kill lands mid-stream.
TICKS, CHUNKS, KILLS, CHUNK_PAUSE_S = 600, 40, 5, 0.5


async def _feed(
    bootstrap: str, topics: Topics, signals: list[dict[str, Any]], prices: list[dict[str, Any]]
) -> None:
    """Publish signals and ticks in chunks, a little at a time, as a live stream would."""
    for c in range(CHUNKS):
        part = slice(c * len(signals) // CHUNKS, (c + 1) * len(signals) // CHUNKS)
        tick_part = slice(c * len(prices) // CHUNKS, (c + 1) * len(prices) // CHUNKS)
        await send_all(bootstrap, topics.signals, signals[part])
        await send_all(bootstrap, topics.prices, prices[tick_part])
        await asyncio.sleep(CHUNK_PAUSE_S)


def _kill_points(rng: random.Random, total: int) -> list[int]:
    """Execution counts to kill at: one in each fifth of 5% to 75% of the stream.

    The last quarter is left alone so that the last kill still lands mid-stream (a batch
    commits up to a few thousand executions at once).
    """
    width = total * 0.7 / KILLS
    return [int(total * 0.05 + width * (k + rng.uniform(0.1, 0.9))) for k in range(KILLS)]


async def test_sigkill_at_five_random_moments_loses_and_doubles_nothing(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("crashes")
    tokens = [mint(rng) for _ in range(30)]
    tick_only = [mint(rng) for _ in range(5)]  # no signal names them: only ticks set them
    book = await make_book(db_conn, USERS, AGENTS)
    signals = book.signals(PER_USER, tokens)
    published_ticks = ticks(rng, tokens + tick_only, TICKS)
    total = len(signals) * AGENTS
    env = env_for(make_settings(services, db_url, topics))

    worker = WorkerProcess(env).start()
    feeder = asyncio.create_task(
        _feed(services.kafka_bootstrap, topics, signals, [t.message() for t in published_ticks])
    )
    killed_at: list[int] = []
    try:
        await worker.wait_started()
        for point in _kill_points(rng, total):
            # Past the point, and past the last kill: this worker has committed work too.
            after = max(point, killed_at[-1] + 1 if killed_at else 0)
            await wait_for_count(db_url, EXECUTIONS, after, timeout_s=90)
            await asyncio.sleep(rng.uniform(0, 0.2))
            worker.kill()
            killed_at.append(await count(db_url, EXECUTIONS))
            worker = WorkerProcess(env).start()
            await worker.wait_started()
        await feeder
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=120)

        async def ticks_done() -> bool:
            offsets = await stored_offsets(db_url, topics.group, topics.prices)
            return sum(offsets.values()) >= TICKS

        deadline = asyncio.get_running_loop().time() + 60
        while not await ticks_done():
            assert asyncio.get_running_loop().time() < deadline, "the ticks were not all applied"
            await asyncio.sleep(0.2)
    finally:
        feeder.cancel()
        code = worker.terminate()

    ledger = await measure(db_conn, book.expected)
    expected_prices = {
        token: price
        for token, price in latest_prices(published_ticks).items()
        if token not in tokens
    }
    prices = await stored_prices(db_conn, expected_prices)
    report(
        "1 crashes",
        records=f"{len(signals)} signals x {AGENTS} agents + {TICKS} ticks",
        faults=f"{len(killed_at)} SIGKILLs at executions {killed_at}",
        executions=ledger.executions,
        lost=ledger.lost,
        duplicated=ledger.duplicated,
        check=ledger.check,
        seed=seed,
    )
    assert code == 0, worker.tail()
    assert len(killed_at) == KILLS
    assert all(k < total for k in killed_at), "a kill came after the end of the stream"
    assert_exactly_once(ledger)
    assert ledger.executions == total
    # Replayed ticks never put an older price over a newer one.
    assert prices == expected_prices
