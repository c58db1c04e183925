"""Price-tick exits against the real broker and database, for positions opened by signals.

Every position here is opened by a real signal at 1 USD per token with SOL at 100 USD
(0.01 SOL per token) by an agent with 10 SOL and randomisation off: the large tier's 2.0
SOL, so 200 tokens for 2.000005 SOL with the 0.000005 SOL network fee (no protocol fee).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import (
    TOKEN_A,
    TOKEN_B,
    TOKEN_C,
    Account,
    make_account,
    set_sol_price,
    signal_message,
)
from tests.helpers.kafka import Topics, publish
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, running_worker, wait_for_count
from worker.db.ledger import find_violations
from worker.domain.config import resolve_config
from worker.domain.exits import stop_loss_target
from worker.domain.models import SOL_MINT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FIXED_SIZE = {"positionCalculator": {"randomization": {"enabled": False}}}
INVESTED = Decimal("2.000005")
FEE = Decimal("0.000005")


def _config(**sections: Any) -> dict[str, Any]:
    return {**FIXED_SIZE, **sections}


@dataclass
class Market:
    """A worker with one agent holding one position, and a way to send ticks."""

    services: Services
    topics: Topics
    db_url: str
    conn: asyncpg.Connection
    agent_id: Any
    ticks_sent: int = 0
    clock: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def tick(self, price_usd: str, *, ts: datetime | None = None) -> None:
        """Publish one tick for TOKEN_A and wait until the worker has processed it."""
        if ts is None:
            self.clock += timedelta(seconds=1)
            ts = self.clock
        await publish(
            self.services.kafka_bootstrap,
            self.topics.prices,
            [{"token_address": TOKEN_A, "price_usd": price_usd, "ts": ts.isoformat()}],
            key=lambda _v: TOKEN_A.encode(),
        )
        self.ticks_sent += 1
        await wait_for_count(
            self.db_url,
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1",
            self.ticks_sent,
            self.topics.prices,
        )

    async def position(self) -> asyncpg.Record | None:
        """The agent's open position, if any."""
        return await self.conn.fetchrow(
            "SELECT * FROM agent_positions WHERE agent_id = $1", self.agent_id
        )

    async def history(self) -> list[asyncpg.Record]:
        """The agent's full exits."""
        return await self.conn.fetch(
            "SELECT * FROM agent_historical_swaps WHERE agent_id = $1", self.agent_id
        )

    async def sales(self) -> list[asyncpg.Record]:
        """The agent's sales, oldest first."""
        return await self.conn.fetch(
            "SELECT * FROM agent_transactions WHERE agent_id = $1 AND transaction_type = 'SWAP' "
            "AND input_mint = $2 ORDER BY created_at, id",
            self.agent_id,
            TOKEN_A,
        )


async def _buy_token_a(
    services: Services, db_url: str, topics: Topics, conn: asyncpg.Connection, account: Account
) -> None:
    """With SOL at 100 USD, one signal for TOKEN_A at 1 USD: every agent opens a position."""
    await set_sol_price(conn, "100")
    await publish(
        services.kafka_bootstrap,
        topics.signals,
        [signal_message(account.user_id, TOKEN_A, price_usd="1")],
    )
    await wait_for_count(db_url, "SELECT count(*) FROM agent_positions", len(account.agents))


@contextlib.asynccontextmanager
async def market(
    services: Services,
    db_url: str,
    topics: Topics,
    conn: asyncpg.Connection,
    config: dict[str, Any],
) -> AsyncIterator[Market]:
    account = await make_account(conn, [config])
    async with running_worker(make_settings(services, db_url, topics)):
        await _buy_token_a(services, db_url, topics, conn, account)
        m = Market(services, topics, db_url, conn, account.agents[0].agent_id)
        pos = await m.position()
        assert pos is not None
        assert (pos["purchase_amount"], pos["total_invested_sol"]) == (Decimal(200), INVESTED)
        yield m
    assert await find_violations(conn) == []


CUSTOM_LEVELS = {"mode": "custom", "trailingLevels": [{"change": 40, "stopLoss": 25}]}
MODES: dict[str, dict[str, Any]] = {
    "fixed": {"mode": "fixed"},
    "exponential": {"mode": "exponential"},
    "zones": {"mode": "zones"},
    "custom": CUSTOM_LEVELS,
}


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_fall_through_the_stop_closes_with_its_pnl(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, mode: str
) -> None:
    async with market(services, db_url, topics, db_conn, _config(stopLoss=MODES[mode])) as m:
        await m.tick("0.70")  # -30%: above the -32% stop
        assert await m.position() is not None
        await m.tick("0.67")  # -33%: through it
        assert await m.position() is None
        [exit_row] = await m.history()
    # 200 tokens at 0.0067 SOL = 1.34 SOL gross, 1.339995 net; cost 2.000005.
    assert exit_row["close_reason"] == "stop_loss"
    assert exit_row["profit_loss_sol"] == Decimal("1.339995") - INVESTED
    assert exit_row["profit_loss_usd"] == (Decimal("1.339995") - INVESTED) * 100
    assert exit_row["amount"] == 200
    assert exit_row["purchase_price"] == Decimal("0.01")
    assert exit_row["sale_price"] == Decimal("0.006699975")  # 1.339995 / 200


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_rise_then_a_fall_closes_at_the_ratcheted_stop(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, mode: str
) -> None:
    config = _config(stopLoss=MODES[mode])
    async with market(services, db_url, topics, db_conn, config) as m:
        await m.tick("1.5")  # +50%
        pos = await m.position()
        assert pos is not None
        expected_sl = stop_loss_target(Decimal(50), resolve_config(config))
        assert pos["current_stop_loss_percentage"] == expected_sl > Decimal(-32)
        assert pos["peak_price"] == Decimal("0.015")
        stop_usd = 1 + expected_sl / 100
        await m.tick(str(stop_usd + Decimal("0.05")))  # lower, above the stop: it holds
        pos = await m.position()
        assert pos is not None and pos["current_stop_loss_percentage"] == expected_sl
        below = str(stop_usd - Decimal("0.01"))
        await m.tick(below)
        assert await m.position() is None
        [exit_row] = await m.history()
    assert exit_row["close_reason"] == "stop_loss"
    # Sold far above the initial stop (0.68 USD): the ratcheted one fired.
    assert Decimal(below) > Decimal("0.68")
    gross = Decimal(200) * Decimal(below) / 100
    assert exit_row["profit_loss_sol"] == gross - FEE - INVESTED


async def test_take_profit_levels_sell_the_right_amounts_and_keep_the_moon_bag(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    # Moderate levels: +50% sells 25%, +150% 25%, +300% 25%, +400% 15% of the 200 tokens;
    # moon bag: at +300% keep 10% (20 tokens).
    config = _config(takeProfit={"enabled": True})
    async with market(services, db_url, topics, db_conn, config) as m:
        await m.tick("2.6")  # +160%: two levels from one tick: 50 + 50 tokens
        pos = await m.position()
        assert pos is not None
        assert (pos["remaining_amount"], pos["take_profit_levels_hit"]) == (100, 2)
        assert pos["moon_bag_activated"] is False
        [sale] = await m.sales()
        assert sale["input_amount"] == 100 and sale["is_take_profit"] is True
        assert sale["output_amount"] == Decimal("2.6")  # 100 tokens x 0.026 SOL
        await m.tick("5")  # +400%: 25% + 15% = 80 tokens wanted, capped at 100 - bag 20
        pos = await m.position()
        assert pos is not None
        assert pos["remaining_amount"] == 20
        assert pos["moon_bag_activated"] is True and pos["moon_bag_amount"] == 20
        assert pos["take_profit_levels_hit"] == 4
        assert [s["input_amount"] for s in await m.sales()] == [100, 80]
        balance = await db_conn.fetchval(
            "SELECT balance FROM agent_balances WHERE agent_id = $1 AND token_address = $2",
            m.agent_id,
            TOKEN_A,
        )
        assert balance == 20
        await m.tick("6")  # every level hit: the bag waits for the stop or a stale close
        assert [s["input_amount"] for s in await m.sales()] == [100, 80]


async def test_dca_updates_the_average_and_respects_cooldown_and_count(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    config = _config(
        dca={"enabled": True, "mode": "moderate", "maxDCACount": 2, "cooldownSeconds": 30},
        stopLoss={"enabled": False},
    )
    async with market(services, db_url, topics, db_conn, config) as m:
        await m.tick("0.8")  # -20%: buy 0.008 x 200 x 75% = 1.2 SOL -> 150 tokens
        pos = await m.position()
        assert pos is not None
        assert pos["dca_count"] == 1
        assert pos["purchase_amount"] == 350 and pos["remaining_amount"] == 350
        invested = INVESTED + Decimal("1.2") + FEE
        assert pos["total_invested_sol"] == invested
        assert pos["purchase_price"] == (invested / 350).quantize(
            Decimal("1e-18"), rounding="ROUND_DOWN"
        )
        await m.tick("0.5")  # far below the new average, but inside the cooldown
        pos = await m.position()
        assert pos is not None and pos["dca_count"] == 1
        await db_conn.execute(
            "UPDATE agent_positions SET last_dca_time = now() - "
            "interval '1 hour' WHERE agent_id = $1",
            m.agent_id,
        )
        await m.tick("0.5")  # cooldown over: the second and last level
        pos = await m.position()
        assert pos is not None and pos["dca_count"] == 2
        await db_conn.execute(
            "UPDATE agent_positions SET last_dca_time = now() - "
            "interval '1 hour' WHERE agent_id = $1",
            m.agent_id,
        )
        await m.tick("0.2")  # maxDCACount reached: no third buy
        pos = await m.position()
        assert pos is not None and pos["dca_count"] == 2
        buys = await db_conn.fetchval(
            "SELECT count(*) FROM agent_transactions WHERE agent_id = $1 AND is_dca", m.agent_id
        )
        assert buys == 2


async def test_a_stale_position_closes_after_its_hold_time_inside_its_window(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    # Stop loss off: after +20% a trailing stop would close the +5% tick itself.
    config = _config(
        staleTrade={
            "enabled": True,
            "minHoldTimeMinutes": 60,
            "minProfitPercent": 1,
            "maxProfitPercent": 10,
        },
        stopLoss={"enabled": False},
    )
    async with market(services, db_url, topics, db_conn, config) as m:
        await m.tick("1.05")  # +5%, inside the window, but held for seconds only
        assert await m.position() is not None
        await db_conn.execute(
            "UPDATE agent_positions SET created_at = now() - "
            "interval '2 hours' WHERE agent_id = $1",
            m.agent_id,
        )
        await m.tick("1.2")  # +20%: old enough, but outside the window
        assert await m.position() is not None
        await m.tick("1.05")  # +5%: closes
        assert await m.position() is None
        [exit_row] = await m.history()
    assert exit_row["close_reason"] == "stale_trade"
    assert exit_row["profit_loss_sol"] == Decimal("2.1") - FEE - INVESTED


async def test_the_same_tick_twice_sells_once_and_an_older_tick_changes_nothing(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    config = _config(takeProfit={"enabled": True})
    async with market(services, db_url, topics, db_conn, config) as m:
        ts = m.clock + timedelta(seconds=10)
        await m.tick("1.6", ts=ts)  # +60%: sells 50 tokens
        await m.tick("1.6", ts=ts)  # the same tick again
        assert [s["input_amount"] for s in await m.sales()] == [50]
        before = await m.position()
        await m.tick("0.5", ts=ts - timedelta(seconds=5))  # older: ignored
        after = await m.position()
        assert before is not None and after is not None
        assert dict(after) == dict(before)
        stored = await db_conn.fetchval(
            "SELECT price_usd FROM token_prices WHERE token_address = $1", TOKEN_A
        )
        assert stored == Decimal("1.6")


async def test_one_tick_trails_the_quiet_positions_and_sells_the_one_it_stops_out(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    """The two passes of a tick: quiet positions (most) are trailed from a few columns, the
    others read whole and planned; here one stop fires among positions that stay."""
    tight = _config(stopLoss={"enabled": True, "defaultPercentage": -5, "mode": "fixed"})
    loose = _config(
        stopLoss={"enabled": True, "defaultPercentage": -50, "mode": "fixed"},
        dca={"enabled": False},
    )
    account = await make_account(db_conn, [loose, tight, loose])
    async with running_worker(make_settings(services, db_url, topics)):
        await _buy_token_a(services, db_url, topics, db_conn, account)
        await publish(
            services.kafka_bootstrap,
            topics.prices,
            [{"token_address": TOKEN_A, "price_usd": "0.9", "ts": datetime.now(UTC).isoformat()}],
            key=lambda _v: TOKEN_A.encode(),
        )
        await wait_for_count(db_url, "SELECT count(*) FROM agent_historical_swaps", 1)
    rows = await db_conn.fetch("SELECT agent_id, lowest_price, peak_price FROM agent_positions")
    closed = await db_conn.fetch("SELECT agent_id, close_reason FROM agent_historical_swaps")
    tight_agent = account.agents[1].agent_id
    assert [(r["agent_id"], r["close_reason"]) for r in closed] == [(tight_agent, "stop_loss")]
    assert sorted(r["agent_id"] for r in rows) == sorted(
        a.agent_id for a in account.agents if a.agent_id != tight_agent
    )
    for r in rows:  # trailed by the quiet pass: the low fell to 0.009 SOL, the peak stayed
        assert (r["lowest_price"], r["peak_price"]) == (Decimal("0.009"), Decimal("0.01"))
    assert await find_violations(db_conn) == []


# Two more mints, so that one batch of ticks can move five tokens each its own way.
TOKEN_D = "JUPyiwrYJFskUPiHa7hkeR8VUtAeFoSYbKedZNsDvCN"
TOKEN_E = "EKpQGSJtjMFqKZ9KQanSqYXRcF8fBopzLHYxdM65zcjm"


async def test_one_batch_of_ticks_trades_each_kind_next_to_quiet_positions(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    """Each of five tokens is held by a trader (every rule on) and by a quiet agent (a deep
    stop, a trailing start far away, no stale close); one batch of ticks makes the trader's
    position in each token do one kind of thing (stop-loss sale, take-profit sale, DCA buy,
    stale close, stop raised) while the quiet agent's position in the same token only
    trails."""
    trader = _config(
        stopLoss={"enabled": True, "mode": "fixed", "defaultPercentage": -30},
        takeProfit={"enabled": True},
        dca={"enabled": True},
        staleTrade={"enabled": True, "minHoldTimeMinutes": 60},
    )
    quiet = _config(
        stopLoss={
            "enabled": True,
            "defaultPercentage": -50,
            "mode": "custom",
            "trailingLevels": [{"change": 1000, "stopLoss": 500}],
        },
        staleTrade={"enabled": False},
    )
    account = await make_account(db_conn, [trader, quiet], deposit_sol=Decimal(100))
    trader_id, quiet_id = (a.agent_id for a in account.agents)
    tokens = [TOKEN_A, TOKEN_B, TOKEN_C, TOKEN_D, TOKEN_E]
    # USD per token, bought at 1 USD with SOL at 100 USD (0.01 SOL per token).
    ticks = {
        TOKEN_A: "0.7",  # -30%: at the trader's stop
        TOKEN_B: "1.5",  # +50%: the first take-profit level (50 of 200 tokens)
        TOKEN_C: "0.8",  # -20%: the first DCA level (0.008 x 200 x 75% = 1.2 SOL)
        TOKEN_D: "1.05",  # +5% of a position held for 2 hours: a stale close
        TOKEN_E: "1.3",  # +30%: no trade, the fixed stop rises to +20%
    }
    async with running_worker(make_settings(services, db_url, topics)):
        await set_sol_price(db_conn, "100")
        await publish(
            services.kafka_bootstrap,
            topics.signals,
            [signal_message(account.user_id, token, price_usd="1") for token in tokens],
        )
        await wait_for_count(db_url, "SELECT count(*) FROM agent_positions", 2 * len(tokens))
        await db_conn.execute(
            "UPDATE agent_positions SET created_at = now() - interval '2 hours' "
            "WHERE token_address = $1",
            TOKEN_D,
        )
        now = datetime.now(UTC).isoformat()
        await publish(
            services.kafka_bootstrap,
            topics.prices,
            [{"token_address": t, "price_usd": p, "ts": now} for t, p in ticks.items()],
            key=lambda v: str(v["token_address"]).encode() if isinstance(v, dict) else None,
        )
        await wait_for_count(
            db_url,
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1",
            len(ticks),
            topics.prices,
        )

    positions = {
        (r["agent_id"], r["token_address"]): r
        for r in await db_conn.fetch("SELECT * FROM agent_positions")
    }
    closed = {
        r["token_address"]: r["close_reason"]
        for r in await db_conn.fetch(
            "SELECT token_address, close_reason FROM agent_historical_swaps WHERE agent_id = $1",
            trader_id,
        )
    }
    assert closed == {TOKEN_A: "stop_loss", TOKEN_D: "stale_trade"}
    take_profit = positions[(trader_id, TOKEN_B)]
    assert (take_profit["remaining_amount"], take_profit["take_profit_levels_hit"]) == (150, 1)
    dca = positions[(trader_id, TOKEN_C)]
    assert (dca["dca_count"], dca["purchase_amount"]) == (1, 350)  # 1.2 SOL buys 150 tokens
    raised = positions[(trader_id, TOKEN_E)]
    assert (raised["current_stop_loss_percentage"], raised["peak_price"]) == (
        Decimal(20),
        Decimal("0.013"),
    )
    # The quiet agent's five positions: all open, untouched but for the trailed peak and low.
    for token, usd in ticks.items():
        row = positions[(quiet_id, token)]
        price = Decimal(usd) / 100
        assert row["current_stop_loss_percentage"] == Decimal(-50)
        assert row["peak_price"] == max(Decimal("0.01"), price)
        assert row["lowest_price"] == min(Decimal("0.01"), price)
        assert row["purchase_amount"] == row["remaining_amount"] == 200
        assert (row["dca_count"], row["take_profit_levels_hit"]) == (0, 0)
    sales = await db_conn.fetch(
        "SELECT input_mint, input_amount, is_take_profit FROM agent_transactions "
        "WHERE agent_id = $1 AND transaction_type = 'SWAP' AND output_mint = $2 "
        "ORDER BY input_mint",
        trader_id,
        SOL_MINT,
    )
    assert sorted(
        (s["input_mint"], s["input_amount"], s["is_take_profit"]) for s in sales
    ) == sorted([(TOKEN_A, 200, False), (TOKEN_B, 50, True), (TOKEN_D, 200, False)])
    quiet_swaps = await db_conn.fetchval(
        "SELECT count(*) FROM agent_transactions WHERE agent_id = $1 AND transaction_type = 'SWAP'",
        quiet_id,
    )
    assert quiet_swaps == len(tokens)  # its five buys, nothing since
    assert await find_violations(db_conn) == []
