"""Values that fit a message but not a table (issue 20, item 6), through the handlers and
`PgStore` into the real tables: a value no numeric column holds is left out where it
arises (one position's trade, one agent's buy, one wallet's snapshot), never a whole tick,
a whole batch or every tenant's snapshot; the tick's price is always stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account
from worker.db.ledger import find_violations
from worker.db.snapshots import hour_of, snapshot_all
from worker.db.store import PgStore
from worker.domain.fills import Fees
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.domain.money import MATH_CONTEXT
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import SignalOutcome, handle_signals
from worker.handlers.ticks import TickOutcome, handle_prices
from worker.settings import TradingSettings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
TRADING = TradingSettings(fees=Fees(Decimal("0.000005"), Decimal(0)))
FIXED: dict[str, Any] = {"positionCalculator": {"randomization": {"enabled": False}}}
# The largest price a message may carry: 18 places, below 10^12.
MAX_PRICE = Decimal("999999999999.999999999999999999")


def _sized(size: Decimal, **sections: Any) -> dict[str, Any]:
    """Randomisation off and every tier's size `size` SOL, capped at `size` per token."""
    tier = {"min": str(size), "max": str(size)}
    return {
        "positionCalculator": {
            "randomization": {"enabled": False},
            "positionSizes": {"small": tier, "medium": tier, "large": tier},
        },
        "purchaseLimits": {"maxPurchasePerToken": str(size), "minimumAgentBalance": "0.1"},
        **sections,
    }


ACTIVE = {
    "stopLoss": {"enabled": True},
    "takeProfit": {"enabled": True, "mode": "aggressive"},
    "dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 10},
}


async def _set_price(conn: asyncpg.Connection, token: str, price_usd: Decimal) -> None:
    await conn.execute(
        "INSERT INTO token_prices (token_address, price_usd, price_ts) VALUES ($1, $2, $3) "
        "ON CONFLICT (token_address) DO UPDATE SET price_usd = $2, price_ts = $3",
        token,
        price_usd,
        T0,
    )


def _signal(user_id: UUID, price_usd: Decimal, key: str = "k") -> Signal:
    return Signal(
        user_id=user_id,
        token_address=TOKEN_A,
        signal_type="Velocity (Dex Boost Detection)",
        signal_strength=3,
        idempotency_key=key,
        created_at=T0,
        price_usd=price_usd,
    )


async def _buy(conn: asyncpg.Connection, user_id: UUID, price_usd: Decimal) -> SignalOutcome:
    async with conn.transaction():
        [outcome] = await handle_signals(
            PgStore(conn), [_signal(user_id, price_usd)], trading=TRADING
        )
    assert isinstance(outcome, SignalOutcome)
    return outcome


async def _ticks(
    conn: asyncpg.Connection, prices: Sequence[tuple[str, Decimal]]
) -> list[TickOutcome]:
    """One chunk of ticks, a second apart after T0."""
    ticks = []
    for i, (token, price) in enumerate(prices, start=1):
        ts = T0 + timedelta(seconds=i)
        ticks.append(PriceTick(token, price, ts))
    async with conn.transaction():
        return await handle_prices(PgStore(conn), ticks, configs=ConfigTexts(), trading=TRADING)


async def _price(conn: asyncpg.Connection, token: str) -> Decimal | None:
    value: Decimal | None = await conn.fetchval(
        "SELECT price_usd FROM token_prices WHERE token_address = $1", token
    )
    return value


# --- the three cases of the issue ---------------------------------------------------------


async def test_a_stop_loss_whose_usd_pnl_no_column_holds_skips_that_position_only(
    db_conn: asyncpg.Connection,
) -> None:
    """SOL/USD at 6e11, then the token at 0.5 USD: a 2 SOL position's stop-loss P/L is
    about -1.2e12 USD (beyond numeric(20,8)); that exit is left out with its reason, the
    0.1 SOL position closes, and the tick's price is stored."""
    await _set_price(db_conn, SOL_MINT, Decimal(100))
    account = await make_account(db_conn, [_sized(Decimal(2)), _sized(Decimal("0.1"))])
    big, small = (a.agent_id for a in account.agents)
    bought = await _buy(db_conn, account.user_id, Decimal(1))
    assert [o.decision.status.value for o in bought.outcomes] == ["success", "success"]

    sol_tick, token_tick = await _ticks(
        db_conn, [(SOL_MINT, Decimal("6e11")), (TOKEN_A, Decimal("0.5"))]
    )

    assert await _price(db_conn, TOKEN_A) == Decimal("0.5")
    assert await _price(db_conn, SOL_MINT) == Decimal("6e11")
    assert token_tick.closes == {"stop_loss": 1}
    [skipped] = token_tick.unstorable
    assert skipped.what == "trade"
    assert "agent_historical_swaps.profit_loss_usd" in skipped.reason
    assert "numeric(20,8)" in skipped.reason
    still_open = await db_conn.fetch("SELECT agent_id FROM agent_positions")
    assert [r["agent_id"] for r in still_open] == [big]
    closed = await db_conn.fetch("SELECT agent_id, profit_loss_usd FROM agent_historical_swaps")
    assert [r["agent_id"] for r in closed] == [small]
    assert closed[0]["profit_loss_usd"] < Decimal("-5e10")
    assert sol_tick.unstorable == []
    assert await find_violations(db_conn) == []


async def test_a_position_valued_beyond_its_column_leaves_out_only_its_wallets_snapshot(
    db_conn: asyncpg.Connection,
) -> None:
    """A token at 9e11 USD with SOL at 1 USD values a 2-token position at 1.8e12 SOL: that
    wallet's snapshot is left out with its reason; every other tenant's is written."""
    await _set_price(db_conn, SOL_MINT, Decimal(1))
    holder = await make_account(db_conn, [_sized(Decimal(2))])
    others = await make_account(db_conn, [FIXED, FIXED])
    await _buy(db_conn, holder.user_id, Decimal(1))
    await _ticks(db_conn, [(TOKEN_A, Decimal("9e11"))])

    hour = hour_of(T0)
    done = await snapshot_all(db_conn, hour)

    wallets = await db_conn.fetchval("SELECT count(*) FROM agent_wallets")
    assert done.written == wallets - 1
    [skipped] = done.skipped
    assert skipped.what == "snapshot"
    assert str(holder.agents[0].agent_id) in skipped.subject
    assert "agent_balance_snapshots.portfolio_balance_sol" in skipped.reason
    rows = await db_conn.fetch(
        "SELECT agent_id FROM agent_balance_snapshots WHERE snapshot_timestamp = $1", hour
    )
    written = {r["agent_id"] for r in rows}
    assert holder.agents[0].agent_id not in written
    assert {a.agent_id for a in others.agents} <= written


async def test_a_buy_whose_values_no_column_holds_fails_that_agent_only(
    db_conn: asyncpg.Connection,
) -> None:
    """SOL/USD at 9e11: a 2 SOL buy is worth 1.8e12 USD (beyond numeric(20,8)) and fails with
    its reason, counted as unstorable; a 0.1 SOL buy of the same signal goes through."""
    await _set_price(db_conn, SOL_MINT, Decimal("9e11"))
    account = await make_account(db_conn, [_sized(Decimal(2)), _sized(Decimal("0.1"))])
    outcome = await _buy(db_conn, account.user_id, Decimal(1000))
    by_agent = {o.agent_id: o for o in outcome.outcomes}
    big, small = (by_agent[a.agent_id] for a in account.agents)
    assert big.decision.status.value == "failed"
    assert big.decision.reason is not None
    assert big.decision.reason.startswith("the buy cannot be stored: a buy of 2")
    assert small.decision.status.value == "success"
    assert [u.subject for u in outcome.unstorable] == [str(big.agent_id)]
    assert await find_violations(db_conn) == []


# --- every numeric path, extreme but valid values -----------------------------------------


def _price_strategy() -> st.SearchStrategy[Decimal]:
    """Valid message prices: 18 places, above 0 and below 10^12, spread over 30 decades."""
    drawn = st.builds(
        lambda m, e: (
            Decimal(m)
            .scaleb(e)
            .quantize(Decimal("1e-18"), rounding=ROUND_DOWN, context=MATH_CONTEXT)
        ),
        st.integers(1, 999),
        st.integers(-20, 9),
    ).filter(lambda d: Decimal(0) < d <= MAX_PRICE)
    edges = st.sampled_from(
        [MAX_PRICE, Decimal("1e-18"), Decimal("6e11"), Decimal("9e11"), Decimal("0.5")]
    )
    return st.one_of(edges, drawn)


SIZES = st.sampled_from(
    [Decimal("0.1"), Decimal(2), Decimal(10) ** 6, Decimal("5e11"), Decimal("999999999998")]
)
DEPOSITS = st.sampled_from(
    [Decimal("0.3"), Decimal(10), Decimal(10) ** 9, Decimal("5e11"), Decimal("999999999999.5")]
)
TICKS = st.lists(
    st.tuples(st.sampled_from([SOL_MINT, TOKEN_A, TOKEN_B]), _price_strategy()),
    min_size=1,
    max_size=5,
)


@asynccontextmanager
async def _rolled_back(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Everything inside undone afterwards: each example starts from the empty ledger."""
    tr = conn.transaction()
    await tr.start()
    try:
        yield
    finally:
        await tr.rollback()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sol_usd=_price_strategy(),
    token_usd=_price_strategy(),
    sizes=st.tuples(SIZES, SIZES),
    deposits=st.tuples(DEPOSITS, DEPOSITS),
    ticks=TICKS,
)
# The cases: the P/L in USD at SOL 6e11; a token at 9e11 USD (the snapshot); the
# largest price on both sides; the smallest token price against the largest SOL price;
# a wallet near 10^12 SOL whose take-profit credit would pass it.
@example(
    sol_usd=Decimal(100),
    token_usd=Decimal(1),
    sizes=(Decimal(2), Decimal("0.1")),
    deposits=(Decimal(10), Decimal(10)),
    ticks=[(SOL_MINT, Decimal("6e11")), (TOKEN_A, Decimal("0.5"))],
)
@example(
    sol_usd=Decimal(1),
    token_usd=Decimal(1),
    sizes=(Decimal(2), Decimal("0.1")),
    deposits=(Decimal(10), Decimal(10)),
    ticks=[(TOKEN_A, Decimal("9e11"))],
)
@example(
    sol_usd=MAX_PRICE,
    token_usd=MAX_PRICE,
    sizes=(Decimal("999999999998"), Decimal(2)),
    deposits=(Decimal("999999999999.5"), Decimal(10)),
    ticks=[(SOL_MINT, Decimal("1e-18")), (TOKEN_A, MAX_PRICE), (TOKEN_A, Decimal("1e-18"))],
)
@example(
    sol_usd=MAX_PRICE,
    token_usd=Decimal("1e-18"),
    sizes=(Decimal("0.1"), Decimal(2)),
    deposits=(Decimal(10), Decimal("0.3")),
    ticks=[(TOKEN_A, MAX_PRICE), (SOL_MINT, Decimal("1e-18"))],
)
@example(
    sol_usd=Decimal(1),
    token_usd=Decimal(1),
    sizes=(Decimal("5e11"), Decimal("5e11")),
    deposits=(Decimal("999999999999.5"), Decimal("999999999999.5")),
    ticks=[(TOKEN_A, Decimal("1.6")), (TOKEN_A, Decimal("3")), (TOKEN_A, Decimal("0.5"))],
)
async def test_extreme_valid_values_never_fail_a_batch_and_keep_the_ledger(
    db_conn: asyncpg.Connection,
    sol_usd: Decimal,
    token_usd: Decimal,
    sizes: tuple[Decimal, Decimal],
    deposits: tuple[Decimal, Decimal],
    ticks: list[tuple[str, Decimal]],
) -> None:
    """Signals, ticks and the snapshot at any valid prices, sizes and balances: nothing
    raises, every tick's price is stored, every execution is written, the ledger holds."""
    async with _rolled_back(db_conn):
        await _set_price(db_conn, SOL_MINT, sol_usd)
        account = await make_account(
            db_conn,
            [_sized(sizes[0], **ACTIVE), _sized(sizes[1])],
            deposits=list(deposits),
        )
        outcome = await _buy(db_conn, account.user_id, token_usd)
        assert len(outcome.outcomes) == 2
        assert outcome.config_problems == []  # both configs valid: every path is open
        await _ticks(db_conn, ticks)
        latest = dict(ticks)  # each token's last tick: all are newer than what is stored
        for token, price in latest.items():
            assert await _price(db_conn, token) == price
        await snapshot_all(db_conn, hour_of(T0))
        assert await find_violations(db_conn) == []
        executions = await db_conn.fetchval("SELECT count(*) FROM signal_executions")
        assert executions == 2
