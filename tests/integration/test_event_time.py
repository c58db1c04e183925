"""Issue 22 through `PgStore` and the real tables: rows are decided and stamped at the
event's decision time, named by the event (not by the serial signal id), and the decision
times are stored (schema 0007) so that `replay` reads them back.

Each comparison runs the same input twice in one database, the first run rolled back:
sequences are not rolled back, so the second run's signals get other serial ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, TOKEN_C, Account, make_account
from worker.db.replay import read_signals, read_ticks, tick_of
from worker.db.store import PgStore
from worker.domain.ids import buy_transaction_id, position_id
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import SignalOutcome, handle_signals
from worker.handlers.ticks import handle_prices
from worker.settings import Settings

pytestmark = pytest.mark.integration

TRADING = Settings().trading
T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
STALE = {
    "positionCalculator": {"randomization": {"enabled": False}},
    "staleTrade": {
        "enabled": True,
        "minHoldTimeMinutes": 1,
        "minProfitPercent": -5,
        "maxProfitPercent": 5,
    },
    "dca": {"enabled": False},
}
DCA = {
    "positionCalculator": {"randomization": {"enabled": False}},
    "stopLoss": {"enabled": False},
    "dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 10},
}
RANDOM = {"positionCalculator": {"randomization": {"enabled": True}}}

SWAPS = """
SELECT id, agent_id, position_id, transaction_time, created_at, updated_at, input_mint,
       input_amount, output_amount, is_dca, is_take_profit, signal_id IS NOT NULL AS has_signal
  FROM agent_transactions WHERE transaction_type = 'SWAP' ORDER BY id
"""
POSITIONS = """
SELECT id, agent_id, purchase_transaction_id, purchase_price, purchase_amount,
       remaining_amount, total_invested_sol, dca_count, last_dca_time, created_at, updated_at,
       dca_transaction_ids, peak_price, lowest_price
  FROM agent_positions ORDER BY id
"""
CLOSES = """
SELECT position_id, sale_transaction_id, purchase_transaction_id, close_reason, purchase_time,
       sale_time, amount, profit_loss_sol
  FROM agent_historical_swaps ORDER BY position_id
"""
BALANCES = "SELECT wallet_address, token_address, balance FROM agent_balances ORDER BY 1, 2"


def _ms(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def _signal(user_id: UUID, token: str, key: str, at: datetime = T0) -> Signal:
    return Signal(
        user_id=user_id,
        token_address=token,
        signal_type="Velocity (Dex Boost Detection)",
        signal_strength=3,
        idempotency_key=key,
        created_at=at,
        price_usd=Decimal(1),
    )


async def _ledger(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: [tuple(r) for r in await conn.fetch(sql)]
        for name, sql in (
            ("swaps", SWAPS),
            ("positions", POSITIONS),
            ("closes", CLOSES),
            ("balances", BALANCES),
        )
    }


async def _run_rolled_back(
    conn: asyncpg.Connection, work: Callable[[], Awaitable[None]]
) -> tuple[dict[str, list[tuple[Any, ...]]], list[int]]:
    """The ledger `work` writes and the serial ids of the signals it stored; undone after."""
    tx = conn.transaction()
    await tx.start()
    try:
        await work()
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM trading_signals ORDER BY id")]
        return await _ledger(conn), ids
    finally:
        await tx.rollback()


async def _sol_price(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO token_prices (token_address, price_usd, price_ts) VALUES ($1, 100, $2)",
        SOL_MINT,
        T0 - timedelta(seconds=1),
    )


async def test_the_same_signals_stored_in_another_order_make_the_same_rows(
    db_conn: asyncpg.Connection,
) -> None:
    # 100 SOL each: every buy is in the large tier whatever came before, so the order of
    # application changes no size; only what names and sizes the rows could.
    account = await make_account(db_conn, [RANDOM, RANDOM], deposit_sol=Decimal(100))
    await _sol_price(db_conn)
    signals = [
        _signal(account.user_id, TOKEN_A, "a", T0),
        _signal(account.user_id, TOKEN_B, "b", _ms(1)),
        _signal(account.user_id, TOKEN_C, "c", _ms(2)),
    ]
    store = PgStore(db_conn)

    def stored(order: Sequence[int]) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            for i in order:  # one by one: each insert takes the next serial id
                [result] = await handle_signals(store, [signals[i]], trading=TRADING)
                assert isinstance(result, SignalOutcome)

        return work

    first, first_ids = await _run_rolled_back(db_conn, stored([0, 1, 2]))
    second, second_ids = await _run_rolled_back(db_conn, stored([2, 0, 1]))
    assert not set(first_ids) & set(second_ids)  # other serial ids
    assert second == first
    assert len(first["swaps"]) == len(first["positions"]) == 6
    # Named by (user, key, agent); stamped at the signal's time; sizes drawn per signal.
    agent = account.agents[0].agent_id
    expected = {
        (buy_transaction_id(account.user_id, key, agent), position_id(account.user_id, key, agent))
        for key in "abc"
    }
    assert {(r[0], r[2]) for r in first["swaps"] if r[1] == agent} == expected
    assert {r[3] for r in first["swaps"]} == {T0, _ms(1), _ms(2)}
    assert len({r[7] for r in first["swaps"] if r[1] == agent}) == 3


# Two DCA dips in A, the second 1 ms before and exactly at the end of the 10 s cooldown;
# B flat 1 ms before and exactly at the end of the 60 s hold.
TICKS = [
    PriceTick(TOKEN_A, Decimal("0.89"), _ms(20_000)),
    PriceTick(TOKEN_A, Decimal("0.70"), _ms(29_999)),
    PriceTick(TOKEN_A, Decimal("0.70"), _ms(30_000)),
    PriceTick(TOKEN_B, Decimal("1.00"), _ms(59_999)),
    PriceTick(TOKEN_B, Decimal("1.00"), _ms(60_000)),
]


async def _buy_then(
    conn: asyncpg.Connection, account: Account, chunks: list[list[PriceTick]]
) -> Callable[[], Awaitable[None]]:
    store = PgStore(conn)

    async def work() -> None:
        signals = [_signal(account.user_id, TOKEN_A, "a"), _signal(account.user_id, TOKEN_B, "b")]
        await handle_signals(store, signals, trading=TRADING)
        configs = ConfigTexts()
        for chunk in chunks:
            await handle_prices(store, chunk, configs=configs, trading=TRADING)

    return work


async def test_holds_and_cooldowns_end_on_the_tick_in_one_chunk_or_one_by_one(
    db_conn: asyncpg.Connection,
) -> None:
    account = await make_account(db_conn, [STALE, DCA])
    await _sol_price(db_conn)
    single, _ = await _run_rolled_back(
        db_conn, await _buy_then(db_conn, account, [[t] for t in TICKS])
    )
    chunked, _ = await _run_rolled_back(db_conn, await _buy_then(db_conn, account, [TICKS]))
    assert chunked == single
    stale_agent, dca_agent = (a.agent_id for a in account.agents)
    [close] = single["closes"]
    assert (close[0], close[3], close[4], close[5]) == (
        position_id(account.user_id, "b", stale_agent),
        "stale_trade",
        T0,
        _ms(60_000),
    )
    dca_rows = [r for r in single["swaps"] if r[9]]
    assert {r[1] for r in dca_rows} == {dca_agent}
    assert sorted((r[3], r[4]) for r in dca_rows) == [
        (_ms(20_000), _ms(20_000)),
        (_ms(30_000), _ms(30_000)),
    ]
    [dca_position] = [r for r in single["positions"] if r[0] == position_id(
        account.user_id, "a", dca_agent
    )]  # fmt: skip
    assert (dca_position[7], dca_position[8], dca_position[10]) == (2, _ms(30_000), _ms(30_000))


async def test_decision_times_are_stored_and_read_back_for_replay(
    db_conn: asyncpg.Connection,
) -> None:
    account = await make_account(db_conn, [STALE])
    await _sol_price(db_conn)
    store = PgStore(db_conn)
    raised = _ms(5_000)
    signal = replace(_signal(account.user_id, TOKEN_A, "raised", T0), at=raised)
    plain = _signal(account.user_id, TOKEN_A, "plain", _ms(1))
    async with db_conn.transaction():
        await handle_signals(store, [signal, plain], trading=TRADING)
        await handle_prices(
            store,
            [PriceTick(TOKEN_A, Decimal("1.1"), _ms(2_000), at=_ms(6_000))],
            configs=ConfigTexts(),
            trading=TRADING,
        )
    # A row from before schema 0007 (or another writer): no event_at.
    await db_conn.execute(
        "INSERT INTO token_price_history (token_address, price_usd, price_ts) VALUES ($1, 1.2, $2)",
        TOKEN_A,
        _ms(7_000),
    )
    by_key = {
        s.idempotency_key: s for s in await read_signals(db_conn, [account.user_id], None, None)
    }
    assert (by_key["raised"].created_at, by_key["raised"].at) == (T0, raised)
    assert by_key["plain"].decision_time == _ms(1)
    ticks = [tick_of(p) for p in await read_ticks(db_conn, [TOKEN_A], None, None)]
    assert [(t.ts, t.at, t.decision_time) for t in ticks] == [
        (_ms(2_000), _ms(6_000), _ms(6_000)),
        (_ms(7_000), None, _ms(7_000)),
    ]
    # The buy of the raised signal was made at its decision time.
    times = await db_conn.fetch(
        "SELECT transaction_time FROM agent_transactions WHERE id = $1",
        buy_transaction_id(account.user_id, "raised", account.agents[0].agent_id),
    )
    assert [r["transaction_time"] for r in times] == [raised]
