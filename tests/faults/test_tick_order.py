"""Scenario 10: ticks and signals in the unlucky orders, and ticks from the future.

Before: a SOL/USD tick published before 300 signals was not seen by them when the worker
started (the fetch's price and signal lanes ran side by side, so all 3,000 executions
failed with "no SOL/USD price"); a tick whose `ts` lay in the future froze its token's
price until then. Now a fetch's ticks commit before its signals are decided, and a tick
too far ahead of its record's time or the clock is dead-lettered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.kafka import Topics, read_all, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    assert_ran_through,
    env_for,
    make_settings,
    wait_for,
    wait_for_count,
)
from worker.domain.models import SOL_MINT

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

USERS, AGENTS, PER_USER = 30, 10, 10  # 300 signals x 10 agents
BUSY_TICKS = 1500


async def test_signals_see_the_ticks_before_them_and_future_ticks_are_refused(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("tick-order")
    book = await make_book(db_conn, USERS, AGENTS, deposit_sol=Decimal(100))
    await db_conn.execute("DELETE FROM token_prices")  # no SOL/USD price but the tick's
    tokens = [mint(rng) for _ in range(USERS * PER_USER)]
    cold = book.signals(PER_USER, tokens)
    for s in cold:
        s["price_usd"] = "0.5"
    now = datetime.now(UTC)
    sol_tick = {"token_address": SOL_MINT, "price_usd": "150", "ts": now.isoformat()}
    # A busy feed: the SOL tick comes first, then many ticks of other tokens, so the price
    # lanes' transactions take a while; signals decided beside them, not after, would not
    # see the SOL price (as all 3,000 did not, before).
    busy = [
        {"token_address": mint(rng), "price_usd": "1", "ts": now.isoformat()}
        for _ in range(BUSY_TICKS)
    ]
    # Published before the worker starts, all of it arrives in one fetch.
    await send_all(services.kafka_bootstrap, topics.prices, [sol_tick, *busy])
    await send_all(services.kafka_bootstrap, topics.signals, cold)

    # The group has stored offsets for the signal partitions only (say, it has never seen a
    # tick): they are read from at once, while the price partitions first look up where to
    # start. Without the hold the first fetches hold only signals.
    await db_conn.executemany(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
        "VALUES ($1, $2, $3, 0)",
        [(topics.group, topics.signals, p) for p in range(3)],
    )
    settings = make_settings(services, db_url, topics, kafka_fetch_max_records=10_000)
    worker = WorkerProcess(env_for(settings)).start()
    try:
        await worker.wait_started()
        await wait_for_count(db_url, EXECUTIONS, len(cold) * AGENTS, timeout_s=120)
        cold_status = await db_conn.fetch(
            "SELECT status, count(*) AS n, min(error) AS error FROM signal_executions "
            "GROUP BY status"
        )

        # Steady state: a token's tick, then signals without a price, back to back.
        token = mint(rng)
        tick_at = datetime.now(UTC)
        await send_all(
            services.kafka_bootstrap,
            topics.prices,
            [{"token_address": token, "price_usd": "2", "ts": tick_at.isoformat()}],
        )
        warm = book.signals(1, [token], start=PER_USER)
        for s in warm:
            s.pop("price_usd", None)  # the token's price comes from the tick alone
        await send_all(services.kafka_bootstrap, topics.signals, warm)
        await wait_for_count(db_url, EXECUTIONS, (len(cold) + len(warm)) * AGENTS)
        fills = await db_conn.fetch(
            "SELECT DISTINCT output_price FROM agent_transactions WHERE output_mint = $1", token
        )

        # Ticks from the future, then a real one: only the real one is stored.
        future = mint(rng)
        await send_all(
            services.kafka_bootstrap,
            topics.prices,
            [
                {"token_address": future, "price_usd": "9", "ts": "9999-12-30T00:00:00Z"},
                {
                    "token_address": future,
                    "price_usd": "8",
                    "ts": (datetime.now(UTC) + timedelta(minutes=50)).isoformat(),
                },
                {"token_address": future, "price_usd": "3", "ts": datetime.now(UTC).isoformat()},
                # An older tick than the stored one: changes nothing, is counted.
                {
                    "token_address": future,
                    "price_usd": "4",
                    "ts": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
                },
            ],
        )

        async def stored() -> bool:
            price = await db_conn.fetchval(
                "SELECT price_usd FROM token_prices WHERE token_address = $1", future
            )
            return price is not None

        # Dead letters are acknowledged before the offset moves past them: they are all
        # there once the real tick (published after them) is stored.
        await wait_for(stored, timeout_s=30, what="the real tick to be stored")
        future_price = await db_conn.fetchval(
            "SELECT price_usd FROM token_prices WHERE token_address = $1", future
        )
        dead = await read_all(services.kafka_bootstrap, topics.dlq)
        _, metrics = await worker.get("/metrics")
        alive = worker.is_alive()
    finally:
        code = worker.terminate()

    ledger = await measure(db_conn, book.expected)
    statuses = {r["status"]: r["n"] for r in cold_status}
    errors = [r["error"] for r in cold_status if r["error"]]
    report(
        "10 tick order",
        records=f"1 SOL tick, {BUSY_TICKS} others, then {len(cold)} signals x {AGENTS} agents "
        f"cold, 1 tick then "
        f"{len(warm)} signals warm, 4 ticks (2 from the future, 1 stale)",
        faults=f"cold executions {statuses}, warm fill prices {[r[0] for r in fills]}, "
        f"{len(dead)} dead letters",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert_ran_through(worker, code, alive=alive)
    assert statuses == {"success": len(cold) * AGENTS}, (statuses, errors)
    # 2 USD / 150 USD per SOL: every warm buy filled at the tick's price.
    assert [r[0] for r in fills] == [Decimal("0.013333333333333333")]
    assert future_price == Decimal(3)
    reasons = sorted(dict(r.headers)["error"].decode() for r in dead)
    assert len(reasons) == 2, reasons
    assert "more than 60s ahead" in reasons[0] or "more than 60s ahead" in reasons[1], reasons
    assert "signal_worker_stale_ticks_total 1.0" in metrics
    assert_exactly_once(ledger)
