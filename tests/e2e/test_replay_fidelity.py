"""Replay fidelity: a recorded stream through the live worker (real Kafka and PostgreSQL),
then the same record replayed in memory with the same configs: every execution, swap,
balance and closed position identical. And a changed stop loss changes the outcome as the
rules say."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, TOKEN_C, Account, make_account, signal_message
from tests.helpers.kafka import Topics, publish
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, running_worker, wait_for_count
from worker.db.replay import read_agents, read_history, tick_of
from worker.domain.models import SOL_MINT, PriceTick
from worker.domain.records import PriceWrite
from worker.replay.engine import Run, Variant, record_of, replay
from worker.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CONFIGS: list[dict[str, Any] | None] = [
    None,  # the defaults: randomised sizes (the seeds must match), fixed -32% stop
    {"stopLoss": {"mode": "exponential"}, "takeProfit": {"enabled": True, "mode": "aggressive"}},
    {"stopLoss": {"mode": "zones", "defaultPercentage": -20}, "takeProfit": {"enabled": True}},
    {
        "stopLoss": {
            "mode": "custom",
            "trailingLevels": [{"change": 50, "stopLoss": 20}, {"change": 20, "stopLoss": 5}],
        }
    },
    {"signals": {"minScore": 5}},  # skips every signal
    # One DCA buy at most (the cooldown outlasts the stream): live, the cooldown runs on the
    # processing clock (the whole stream in a second), replayed on the ticks' times.
    {
        "dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 3600},
        "stopLoss": {"defaultPercentage": -60},
    },
]
# Each token's path after its buy (USD): A drifts (+10%, -8%), B runs up through every
# take-profit level and falls back, C dips (DCA) and falls. SOL/USD moves in the middle.
PATHS: dict[str, list[str]] = {
    TOKEN_A: ["1.1", "0.92", "0.9"],
    TOKEN_B: ["0.65", "0.85", "1.3", "0.6", "0.3"],
    TOKEN_C: ["1.78", "2.2", "1.7", "1.2"],
}
BUY_PRICES = {TOKEN_A: "1", TOKEN_B: "0.5"}  # C is bought at its stored tick, 2.0


async def _record(settings: Settings, db_url: str, account: Account) -> None:
    """Run the live worker through the stream, phase by phase (each waited for, so the
    live order is the record's time order)."""
    bootstrap = settings.kafka_bootstrap_servers
    # Stamped in the past, a second or ten apart: the record's times come before the
    # moments the worker processes them, as a feed's stamps do.
    start = datetime.now(UTC) - timedelta(minutes=10)

    def tick(token: str, price: str, seconds: int) -> dict[str, Any]:
        ts = start + timedelta(seconds=seconds)
        return {"token_address": token, "price_usd": price, "ts": ts.isoformat()}

    def by_token(value: bytes | dict[str, Any]) -> bytes | None:
        return str(value["token_address"]).encode() if isinstance(value, dict) else None

    async def ticks(values: list[dict[str, Any]], stored: int) -> None:
        await publish(bootstrap, settings.prices_topic, list(values), key=by_token)
        await wait_for_count(db_url, "SELECT count(*) FROM token_price_history", stored)

    async with running_worker(settings):
        await ticks([tick(SOL_MINT, "150", 1), tick(TOKEN_C, "2.0", 1)], 2)
        created = (start + timedelta(seconds=2)).isoformat()
        signals = []
        for token in PATHS:
            message = signal_message(
                account.user_id, token, idempotency_key=f"fidelity-{token}", created_at=created
            )
            if token in BUY_PRICES:
                message["price_usd"] = BUY_PRICES[token]
            else:
                del message["price_usd"]  # bought at the stored tick
            signals.append(message)
        await publish(bootstrap, settings.signals_topic, signals)
        await wait_for_count(
            db_url, "SELECT count(*) FROM signal_executions", len(PATHS) * len(CONFIGS)
        )
        path = [(10 + 10 * i, token, price) for token, prices in PATHS.items()
                for i, price in enumerate(prices)]  # fmt: skip
        # SOL/USD moves at 25 s. Its tick goes alone: live, ticks of several partitions
        # that arrive together are applied by parallel lanes, in no set order, while the
        # replay takes them in time order.
        before = [tick(token, price, s) for s, token, price in path if s < 25]
        after = [tick(token, price, s) for s, token, price in path if s > 25]
        await ticks(before, 2 + len(before))
        await ticks([tick(SOL_MINT, "140", 25)], 3 + len(before))
        await ticks(after, 3 + len(path))


async def _replay(conn: asyncpg.Connection, user_id: UUID, variant: Variant) -> Run:
    agents = await read_agents(conn, None, user_id)
    record = record_of(agents, await read_history(conn, agents))
    assert record is not None
    assert record.open_at == 0
    return await replay(record.start, record.events, variant, Settings())


async def test_a_replay_makes_every_live_trade_again_and_a_tighter_stop_changes_them(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, CONFIGS, deposit_sol=Decimal(20))
    # Funded before the record starts (its stamps lie ten minutes back).
    await db_conn.execute(
        "UPDATE agent_transactions SET transaction_time = now() - interval '1 hour' "
        "WHERE transaction_type = 'DEPOSIT'"
    )
    settings = make_settings(services, db_url, topics)
    await _record(settings, db_url, account)
    run = await _replay(db_conn, account.user_id, Variant("stored config"))
    store = run.store

    live_exec = {
        (r["signal_id"], r["agent_id"]): (r["status"], r["error"])
        for r in await db_conn.fetch(
            "SELECT signal_id, agent_id, status, error FROM signal_executions"
        )
    }
    replay_exec = {k: (v.status.value, v.error) for k, v in store.executions.items()}
    assert replay_exec == live_exec
    assert Counter(s for s, _ in live_exec.values()) == {"success": 15, "skipped": 3}

    swap_sql = """
        SELECT agent_id, signal_id, input_mint, input_amount, output_mint, output_amount,
               network_fee_sol, protocol_fee_sol, is_dca, is_take_profit, transaction_value_usd
          FROM agent_transactions WHERE transaction_type = 'SWAP'"""
    live_swaps = Counter(tuple(r) for r in await db_conn.fetch(swap_sql))
    replay_swaps = Counter(
        (s.agent_id, s.signal_id, s.input_mint, s.input_amount, s.output_mint, s.output_amount,
         s.network_fee_sol, s.protocol_fee_sol, s.is_dca, s.is_take_profit, s.value_usd)
        for s in store.swaps
    )  # fmt: skip
    assert replay_swaps == live_swaps
    kinds = Counter(("dca" if s[8] else "tp" if s[9] else "swap") for s in live_swaps.elements())
    assert kinds["dca"] >= 1 and kinds["tp"] >= 2, kinds  # the stream exercised both

    wallets = {a.wallet_address for a in await read_agents(db_conn, None, account.user_id)}
    live_balances = {
        (r["wallet_address"], r["token_address"]): r["balance"]
        for r in await db_conn.fetch(
            "SELECT wallet_address, token_address, balance FROM agent_balances"
        )
        if r["wallet_address"] in wallets
    }
    assert store.balances == live_balances

    live_closes = Counter(
        tuple(r) for r in await db_conn.fetch(
            "SELECT agent_id, signal_id, close_reason, profit_loss_sol, amount, sale_price "
            "FROM agent_historical_swaps")
    )  # fmt: skip
    replay_closes = Counter(
        (c.position.agent_id, c.position.signal_id, c.close_reason.value, c.pnl.profit_loss_sol,
         c.pnl.amount, c.pnl.sale_price)
        for c, _ in store.closed
    )  # fmt: skip
    assert replay_closes == live_closes
    assert sum(live_closes.values()) >= 5
    live_open = Counter(
        tuple(r) for r in await db_conn.fetch(
            "SELECT agent_id, token_address, remaining_amount, peak_price, "
            "current_stop_loss_percentage FROM agent_positions")
    )  # fmt: skip
    replay_open = Counter(
        (p.row.agent_id, p.row.token_address, p.state.remaining_amount, p.state.peak_price,
         p.state.current_stop_loss_percentage)
        for p in store.positions.values()
    )  # fmt: skip
    assert replay_open == live_open

    # A 5% fixed stop for everyone: token A's fall to -8% (which no live stop reached)
    # now stops out every agent that bought A, at that tick's price.
    tight = await _replay(
        db_conn,
        account.user_id,
        Variant("tight", {"stopLoss": {"mode": "fixed", "defaultPercentage": -5},
                          "takeProfit": {"enabled": False}, "dca": {"enabled": False}}),
    )  # fmt: skip
    assert not [c for c in live_closes if c[0] in {a.agent_id for a in account.agents}
                and _token_of(live_swaps, c) == TOKEN_A]  # fmt: skip
    a_closes = [c for c, _ in tight.store.closed if c.position.token_address == TOKEN_A]
    buyers = {s.agent_id for s in tight.store.swaps if s.output_mint == TOKEN_A}
    assert {c.position.agent_id for c in a_closes} == buyers
    assert len(buyers) == 5
    for c in a_closes:
        assert c.close_reason.value == "stop_loss"
        assert Decimal(-9) < c.pnl.change_percent < Decimal(-7)  # sold at 0.92, fees included


def _token_of(swaps: Counter[tuple[Any, ...]], close: tuple[Any, ...]) -> str | None:
    """The token of a live close, from the buy swap of its agent and signal."""
    for s in swaps:
        if s[0] == close[0] and s[1] == close[1] and s[2] == SOL_MINT and not s[8]:
            return str(s[4])
    return None


def test_recorded_ticks_replay_at_their_recorded_time() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    tick = tick_of(PriceWrite(TOKEN_A, Decimal("1.5"), at))
    assert tick == PriceTick(TOKEN_A, Decimal("1.5"), at)
