"""The metrics the alerts need that the worker measures itself (deploy/prometheus/alerts.yml):
`signal_worker_ready`, `signal_worker_held_price_age_seconds` (worker/runtime/app.py
`watch_health`, worker/db/prices.py `held_price_age_s`) and
`signal_worker_snapshot_failures_total` (`snapshot_hourly`), against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B
from tests.integration.test_report_replay import _trade
from worker.db.prices import held_price_age_s
from worker.metrics import Metrics
from worker.runtime.app import snapshot_hourly, watch_health

pytestmark = pytest.mark.integration


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_held_price_age_is_that_of_the_oldest_price_of_a_held_token(
    db_conn: asyncpg.Connection,
) -> None:
    assert await held_price_age_s(db_conn) == 0  # nothing held
    await _trade(db_conn)
    held = {r[0] for r in await db_conn.fetch("SELECT token_address FROM agent_positions")}
    assert held == {TOKEN_A}  # B was sold by both stops
    await db_conn.execute(
        "UPDATE token_prices SET price_ts = now() - interval '2 hours' WHERE token_address = $1",
        TOKEN_A,
    )
    await db_conn.execute(  # older, but held by no one: not counted
        "UPDATE token_prices SET price_ts = now() - interval '5 hours' WHERE token_address = $1",
        TOKEN_B,
    )
    age = await held_price_age_s(db_conn)
    assert 2 * 3600 <= age < 2 * 3600 + 300
    # A held token without any price: as old as its oldest position.
    await db_conn.execute("DELETE FROM token_prices WHERE token_address = $1", TOKEN_A)
    opened = await db_conn.fetchval(
        "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM agent_positions"
    )
    age = await held_price_age_s(db_conn)
    assert opened <= age < opened + 300


@pytest.mark.parametrize(("reason", "ready"), [(None, 1.0), ("no partitions assigned", 0.0)])
async def test_watch_health_measures_readiness_and_held_price_age(
    db_url: str, db_conn: asyncpg.Connection, reason: str | None, ready: float
) -> None:
    await _trade(db_conn)
    await db_conn.execute("UPDATE token_prices SET price_ts = now() - interval '1 hour'")
    metrics = Metrics()
    stop = asyncio.Event()

    async def check() -> str | None:
        stop.set()  # one round
        return reason

    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        await watch_health(check, pool, stop, metrics)
    assert sample(metrics, "signal_worker_ready") == ready
    age = sample(metrics, "signal_worker_held_price_age_seconds")
    assert age is not None and 3600 <= age < 3600 + 300


async def test_a_readiness_check_that_raises_reads_as_not_ready_and_the_watch_goes_on(
    db_url: str,
) -> None:
    metrics = Metrics()
    metrics.ready.set(1)
    stop = asyncio.Event()
    rounds = 0

    async def check() -> str | None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            stop.set()
        raise RuntimeError("a bug in a check")

    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        await watch_health(check, pool, stop, metrics, every_s=0.01)
    assert rounds == 2  # the first failure did not end it
    assert sample(metrics, "signal_worker_ready") == 0.0


async def test_a_failed_snapshot_is_counted(db_url: str) -> None:
    metrics = Metrics()
    stop = asyncio.Event()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    await pool.close()  # every acquire fails: server trouble as the worker sees it
    task = asyncio.create_task(snapshot_hourly(pool, stop, metrics=metrics))
    while not sample(metrics, "signal_worker_snapshot_failures_total"):
        assert not task.done(), task
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert sample(metrics, "signal_worker_snapshot_failures_total") == 1
