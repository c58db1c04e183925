"""`signal-worker check` and `snapshot` on a real trade history, intact and broken by hand."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import (
    TOKEN_A,
    TOKEN_B,
    make_account,
    set_price,
    set_sol_price,
    signal_message,
)
from tests.helpers.cli import CliRun, run_cli
from tests.helpers.db import connected, create_database, drop_database
from tests.helpers.kafka import create_test_topics, delete_topics, publish
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, running_worker, wait_for_count
from worker.db.snapshots import hour_of, snapshot_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass(frozen=True)
class History:
    """A database with buys, a take-profit sale and a full exit, closed to connections."""

    services: Services
    name: str


@pytest.fixture(scope="module")
async def history(services: Services, template_db: str) -> AsyncIterator[History]:
    url = await create_database(services, template_db)
    topics = await create_test_topics(services)
    conn = await asyncpg.connect(url)
    try:
        config = {
            "positionCalculator": {"randomization": {"enabled": False}},
            "takeProfit": {"enabled": True},
        }
        picky = {**config, "signals": {"minScore": 2}}
        account = await make_account(conn, [picky, config])
        await set_sol_price(conn, "100")
        async with running_worker(make_settings(services, url, topics)):
            await publish(
                services.kafka_bootstrap,
                topics.signals,
                [
                    signal_message(account.user_id, TOKEN_A, price_usd="1", signal_strength=3),
                    signal_message(account.user_id, TOKEN_B, price_usd="1", signal_strength=1),
                ],
            )
            await wait_for_count(url, "SELECT count(*) FROM signal_executions", 4)
            ts = datetime.now(UTC)
            ticks = [(TOKEN_A, "1.6", ts), (TOKEN_A, "0.5", ts + timedelta(seconds=1))]
            await publish(
                services.kafka_bootstrap,
                topics.prices,
                [{"token_address": t, "price_usd": p, "ts": at.isoformat()} for t, p, at in ticks],
                key=lambda _v: TOKEN_A.encode(),
            )
            await wait_for_count(url, "SELECT count(*) FROM agent_historical_swaps", 2)
        await set_price(conn, TOKEN_B, "2")
    finally:
        await conn.close()
        await delete_topics(
            services.kafka_bootstrap, [topics.signals, topics.prices, topics.dlq, topics.commands]
        )
    name = url.rsplit("/", 1)[1]
    yield History(services, name)
    await drop_database(services, url)


@pytest.fixture
async def copy(history: History) -> AsyncIterator[str]:
    """A copy of the history for one test to alter."""
    url = await create_database(history.services, history.name)
    yield url
    await drop_database(history.services, url)


async def check(url: str) -> CliRun:
    return await run_cli({"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}, "check", timeout_s=60)


async def test_check_passes_on_the_history(copy: str) -> None:
    async with connected(copy) as conn:
        kinds = await conn.fetch("SELECT status, count(*) FROM signal_executions GROUP BY 1")
        sales = await conn.fetchval(
            "SELECT count(*) FROM agent_transactions WHERE input_mint = $1", TOKEN_A
        )
    assert {r["status"]: r["count"] for r in kinds} == {"success": 3, "skipped": 1}
    assert sales == 4  # two take-profit sales, two stop-loss closes
    result = await check(copy)
    assert result.code == 0, result
    assert result.stdout.strip() == "check: all ledger invariants hold"


BREAKS = {
    "duplicate_execution": (
        1,
        "ALTER TABLE signal_executions DROP CONSTRAINT signal_executions_signal_id_agent_id_key;"
        "INSERT INTO signal_executions (signal_id, agent_id, status) "
        "SELECT signal_id, agent_id, 'skipped' FROM signal_executions WHERE status = 'skipped' "
        "LIMIT 1 RETURNING 'signal ' || signal_id || ' and agent ' || agent_id",
    ),
    "duplicate_signal": (
        1,
        "ALTER TABLE trading_signals DROP CONSTRAINT trading_signals_user_id_idempotency_key_key;"
        "INSERT INTO trading_signals (user_id, idempotency_key, token_address, signal_type, "
        "signal_strength) SELECT user_id, idempotency_key, token_address, signal_type, "
        "signal_strength FROM trading_signals LIMIT 1 RETURNING 'idempotency key ' || "
        "quote_literal(idempotency_key)",
    ),
    "success_without_transaction": (
        2,
        "UPDATE signal_executions SET transaction_id = NULL WHERE id = (SELECT id FROM "
        "signal_executions WHERE status = 'success' LIMIT 1) RETURNING 'execution ' || id",
    ),
    "skipped_with_transaction": (
        2,
        "UPDATE signal_executions SET transaction_id = (SELECT id FROM agent_transactions "
        "LIMIT 1) WHERE id = (SELECT id FROM signal_executions WHERE status = 'skipped' "
        "LIMIT 1) RETURNING 'execution ' || id",
    ),
    "sol_balance_off": (
        3,
        "UPDATE agent_balances SET balance = balance + 0.000000000000000001 WHERE id = "
        "(SELECT id FROM agent_balances WHERE token_symbol = 'SOL' LIMIT 1) "
        "RETURNING 'wallet ' || wallet_address",
    ),
    "negative_balance": (
        3,
        "ALTER TABLE agent_balances DROP CONSTRAINT agent_balances_balance_check;"
        "INSERT INTO agent_transactions (agent_id, wallet_address, transaction_type, "
        "transaction_value_usd, transaction_time, input_mint, input_amount) SELECT agent_id, "
        "wallet_address, 'WITHDRAWAL', 0, now(), token_address, balance + 1 FROM agent_balances "
        "WHERE token_symbol = 'SOL' LIMIT 1;"
        "UPDATE agent_balances b SET balance = balance - (balance + 1) WHERE id = (SELECT id "
        "FROM agent_balances WHERE token_symbol = 'SOL' LIMIT 1) RETURNING 'wallet ' || "
        "wallet_address",
    ),
    "position_off": (
        4,
        "UPDATE agent_positions SET remaining_amount = remaining_amount - 1 WHERE id = "
        "(SELECT id FROM agent_positions LIMIT 1) RETURNING 'position ' || id",
    ),
    "exit_pnl_off": (
        5,
        "UPDATE agent_historical_swaps SET profit_loss_sol = profit_loss_sol + 0.00000001 "
        "WHERE id = (SELECT id FROM agent_historical_swaps LIMIT 1) "
        "RETURNING 'historical swap ' || id",
    ),
    "exit_without_history": (
        5,
        "DELETE FROM agent_historical_swaps WHERE id = (SELECT id FROM agent_historical_swaps "
        "LIMIT 1) RETURNING 'position ' || position_id",
    ),
}


@pytest.mark.parametrize("name", list(BREAKS))
async def test_check_fails_naming_the_row_of_each_broken_invariant(copy: str, name: str) -> None:
    invariant, sql = BREAKS[name]
    async with connected(copy) as conn:
        *setup, returning = sql.split(";")
        for statement in setup:
            await conn.execute(statement)
        named = await conn.fetchval(returning)
    assert named
    result = await check(copy)
    assert result.code == 1, result
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"invariant {invariant}:") and named in line for line in lines), (
        named,
        result.stdout,
    )
    assert lines[-1].startswith("check: ") and "violation" in lines[-1]
    assert not any("Traceback" in line for line in result.stderr), result.stderr


async def test_snapshots_write_one_row_per_wallet_and_hour_even_when_concurrent(
    copy: str,
) -> None:
    hour = hour_of(datetime.now(UTC))
    conns = [await asyncpg.connect(copy) for _ in range(3)]
    try:
        # The worker that made the history snapshotted at its start-up, maybe in the hour
        # before this one: start from none.
        await conns[0].execute("DELETE FROM agent_balance_snapshots")
        await asyncio.gather(*(snapshot_all(c, hour) for c in conns))
        await snapshot_all(conns[0], hour)
        rows = await conns[0].fetch(
            "SELECT s.*, w.agent_id AS w_agent FROM agent_balance_snapshots s "
            "JOIN agent_wallets w USING (wallet_address)"
        )
        wallets = await conns[0].fetchval("SELECT count(*) FROM agent_wallets")
        position = await conns[0].fetchrow(
            "SELECT * FROM agent_positions WHERE token_address = $1", TOKEN_B
        )
        assert position is not None
        sol = await conns[0].fetchval(
            "SELECT balance FROM agent_balances WHERE wallet_address = $1 AND token_symbol = 'SOL'",
            position["wallet_address"],
        )
    finally:
        for c in conns:
            await c.close()
    assert len(rows) == wallets == 2
    assert {r["snapshot_timestamp"] for r in rows} == {hour}
    snap = next(r for r in rows if r["wallet_address"] == position["wallet_address"])
    # TOKEN_B, bought after TOKEN_A left 7.999995 SOL (the medium tier: 1.0 SOL): 100 tokens
    # at 0.01 SOL for 1.000005 SOL, now 2 USD = 0.02 SOL each.
    assert position["purchase_amount"] == 100
    assert snap["sol_balance"] == sol
    assert snap["positions_value_sol"] == Decimal(2)
    assert snap["unrealized_pnl_sol"] == Decimal(2) - Decimal("1.000005")
    assert snap["portfolio_balance_sol"] == sol + 2
    assert uuid.UUID(str(snap["agent_id"])) == snap["w_agent"]


async def test_the_snapshot_command_writes_this_hour(copy: str) -> None:
    env = {"DATABASE_URL": copy, "PATH": "/usr/bin:/bin"}
    result = await run_cli(env, "snapshot", timeout_s=60)
    assert result.code == 0, result.stderr
    assert "snapshot: 2 wallet snapshot(s)" in result.stdout
