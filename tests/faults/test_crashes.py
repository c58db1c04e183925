"""Scenario 1: the worker process SIGKILLed at five random moments while signals and ticks flow."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from tests.helpers.books import latest_prices, make_book, mint, ticks
from tests.helpers.db import count, stored_offsets, stored_prices
from tests.helpers.kafka import Feed, Topics
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, wait_for, wait_for_count, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

USERS, AGENTS, PER_USER = 20, 10, 100  # 2,000 signals x 10 agents
# The feed publishes 40 chunks 0.5 s apart and holds before the last six until the fifth
# kill: the kills land mid-stream however fast (or slow to restart) the worker is.
TICKS, CHUNKS, HOLD_AT, KILLS, CHUNK_PAUSE_S = 600, 40, 34, 5, 0.5


def _kill_points(rng: random.Random, total: int) -> list[int]:
    """Execution counts to kill at: one in each fifth of 5% to 75% of the stream.

    All of them lie before the feed's hold (85% of the stream).
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
    env = worker_env(services, db_url, topics)

    feed = Feed(
        services.kafka_bootstrap,
        [(topics.signals, signals), (topics.prices, [t.message() for t in published_ticks])],
        chunks=CHUNKS,
        hold_at=HOLD_AT,
        pause_s=CHUNK_PAUSE_S,
    )
    before_hold = feed.before_hold(signals) * AGENTS

    worker = WorkerProcess(env).start()
    feeder = asyncio.create_task(feed.run())
    killed_at: list[int] = []
    try:
        await worker.wait_started()
        for point in _kill_points(rng, total):
            # Past the point, and past the last kill (this worker has committed work too),
            # unless the last kill came when everything before the hold was done.
            after = min(max(point, killed_at[-1] + 1 if killed_at else 0), before_hold)
            await wait_for_count(db_url, EXECUTIONS, after, timeout_s=90)
            await asyncio.sleep(rng.uniform(0, 0.2))
            worker.kill()
            killed_at.append(await count(db_url, EXECUTIONS))
            worker = WorkerProcess(env).start()
            await worker.wait_started()
        feed.release()
        await feeder
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=120)

        async def ticks_done() -> bool:
            offsets = await stored_offsets(db_url, topics.group, topics.prices)
            return sum(offsets.values()) >= TICKS

        await wait_for(ticks_done, timeout_s=60, what="every tick to be applied")
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
        faults=f"{len(killed_at)} SIGKILLs at executions {killed_at}, "
        f"the last {total - before_hold} published after them",
        **ledger.figures,
        seed=seed,
    )
    assert code == 0, worker.tail()
    assert len(killed_at) == KILLS
    assert all(k <= before_hold < total for k in killed_at), "a kill came after the hold"
    assert_exactly_once(ledger)
    assert ledger.executions == total
    # Replayed ticks never put an older price over a newer one.
    assert prices == expected_prices
