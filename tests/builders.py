"""Rows for the schema's own tests, written the plain SQL way (no worker code in between):
a user, an agent, a wallet, a balance, a signal, a transaction, a position, and whole graphs
of them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from worker.domain.models import SOL_MINT, Signal, Subscriber

MINT = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
OTHER_MINT = "EKpQGSJtjMFqKZ9KQanSqYXRcF8fBopzLHYxdM65zcjm"
TINY = Decimal("0.000000000000000001")
HUGE_PRICE = Decimal("123456789012.123456789012345678")


async def add_user(conn: asyncpg.Connection) -> UUID:
    email = f"{uuid.uuid4().hex}@example.com"
    user_id: UUID = await conn.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
    return user_id


async def add_agent(
    conn: asyncpg.Connection,
    user_id: UUID,
    *,
    mode: str = "simulation",
    config: Any = None,
    simulation_on: bool = True,
    live_on: bool = True,
) -> UUID:
    agent_id: UUID = await conn.fetchval(
        """
        INSERT INTO agents (user_id, name, trading_mode, trading_config,
                            automated_trading_simulation, automated_trading_live)
        VALUES ($1, 'agent', $2, $3::jsonb, $4, $5) RETURNING id
        """,
        user_id,
        mode,
        None if config is None else json.dumps(config),
        simulation_on,
        live_on,
    )
    return agent_id


async def add_wallet(conn: asyncpg.Connection, agent_id: UUID, wallet_type: str) -> str:
    address = f"sim_{uuid.uuid4().hex}"
    await conn.execute(
        "INSERT INTO agent_wallets (wallet_address, agent_id, wallet_type) VALUES ($1, $2, $3)",
        address,
        agent_id,
        wallet_type,
    )
    return address


async def add_balance(
    conn: asyncpg.Connection, agent_id: UUID, wallet: str, token: str, amount: Decimal
) -> None:
    await conn.execute(
        """
        INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance)
        VALUES ($1, $2, $3, 'SYM', $4)
        """,
        agent_id,
        wallet,
        token,
        amount,
    )


async def add_signal(conn: asyncpg.Connection, user_id: UUID | None) -> int:
    signal_id: int = await conn.fetchval(
        """
        INSERT INTO trading_signals (token_address, signal_type, signal_strength, user_id,
                                     idempotency_key)
        VALUES ($1, 'Velocity (Dex Boost Detection)', 3, $2, $3) RETURNING id
        """,
        MINT,
        user_id,
        uuid.uuid4().hex,
    )
    return signal_id


async def add_transaction(
    conn: asyncpg.Connection, agent_id: UUID, wallet: str, signal_id: int | None
) -> UUID:
    tx_id: UUID = await conn.fetchval(
        """
        INSERT INTO agent_transactions (
            agent_id, wallet_address, transaction_type, transaction_value_usd, transaction_time,
            signal_id, input_mint, input_symbol, input_amount, input_price,
            output_mint, output_symbol, output_amount, output_price,
            protocol_fee_sol, network_fee_sol
        )
        VALUES ($1, $2, 'SWAP', 15, now(), $3, $4, 'SOL', 0.1, 1, $5, 'TOK', 1000, 0.0001, 0,
                0.000005)
        RETURNING id
        """,
        agent_id,
        wallet,
        signal_id,
        SOL_MINT,
        MINT,
    )
    return tx_id


async def add_position(
    conn: asyncpg.Connection, agent_id: UUID, wallet: str, token: str, tx_id: UUID | None = None
) -> UUID:
    if tx_id is None:
        tx_id = await add_transaction(conn, agent_id, wallet, None)
    position_id: UUID = await conn.fetchval(
        """
        INSERT INTO agent_positions (agent_id, wallet_address, token_address, token_symbol,
                                     purchase_transaction_id, purchase_price, purchase_amount,
                                     total_invested_sol)
        VALUES ($1, $2, $3, 'TOK', $4, 0.0001, 1000, 0.100005) RETURNING id
        """,
        agent_id,
        wallet,
        token,
        tx_id,
    )
    return position_id


@dataclass(frozen=True)
class Graph:
    """One user with every kind of row hanging off it."""

    user_id: UUID
    agent_id: UUID
    wallet: str
    signal_id: int
    tx_id: UUID


async def add_graph(conn: asyncpg.Connection) -> Graph:
    user_id = await add_user(conn)
    await conn.execute(
        """
        INSERT INTO api_keys (user_id, name, key_hash, key_prefix, scopes)
        VALUES ($1, 'ci', $2, 'nex_abcd', ARRAY['signals'])
        """,
        user_id,
        uuid.uuid4().hex,
    )
    agent_id = await add_agent(conn, user_id)
    wallet = await add_wallet(conn, agent_id, "simulation")
    await add_balance(conn, agent_id, wallet, SOL_MINT, Decimal("0.899995"))
    await add_balance(conn, agent_id, wallet, MINT, Decimal(1000))
    signal_id = await add_signal(conn, user_id)
    tx_id = await add_transaction(conn, agent_id, wallet, signal_id)
    await add_position(conn, agent_id, wallet, MINT, tx_id)
    await conn.execute(
        """
        INSERT INTO signal_executions (signal_id, agent_id, status, transaction_id)
        VALUES ($1, $2, 'success', $3)
        """,
        signal_id,
        agent_id,
        tx_id,
    )
    await conn.execute(
        """
        INSERT INTO agent_historical_swaps (
            agent_id, wallet_address, token_address, token_symbol, amount, purchase_price,
            sale_price, change_percent, profit_loss_usd, profit_loss_sol, purchase_time,
            sale_time, purchase_transaction_id, signal_id, close_reason
        )
        VALUES ($1, $2, $3, 'TOK', 10, 0.0001, 0.0002, 100, 0.15, 0.001, now(), now(), $4, $5,
                'take_profit')
        """,
        agent_id,
        wallet,
        MINT,
        tx_id,
        signal_id,
    )
    await conn.execute(
        """
        INSERT INTO agent_balance_snapshots (
            agent_id, wallet_address, snapshot_timestamp, portfolio_balance_sol, sol_balance,
            positions_value_sol, unrealized_pnl_sol
        )
        VALUES ($1, $2, date_trunc('hour', now()), 1, 0.9, 0.1, -0.000005)
        """,
        agent_id,
        wallet,
    )
    await conn.execute(
        """
        INSERT INTO token_prices (token_address, price_usd, price_ts) VALUES ($1, 150, now())
        ON CONFLICT DO NOTHING
        """,
        SOL_MINT,
    )
    await conn.execute(
        """
        INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
        VALUES ('signal-worker', 'trading-signals', 0, 42)
        ON CONFLICT DO NOTHING
        """
    )
    return Graph(user_id, agent_id, wallet, signal_id, tx_id)


async def count(conn: asyncpg.Connection, table: str) -> int:
    n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return n


@dataclass(frozen=True)
class Fleet:
    user_id: UUID
    expected: list[Subscriber]


async def add_fleet(conn: asyncpg.Connection) -> Fleet:
    """One user's agents in every wallet situation, plus another user's agent."""
    user_id = await add_user(conn)
    config = {"signals": {"minScore": 3}, "purchaseLimits": {"minimumAgentBalance": 0.5}}
    expected: list[Subscriber] = []

    # Simulation wallet with SOL and two positions, one in the signal's token; its live
    # wallet's positions do not count.
    full = await add_agent(conn, user_id, config=config)
    sim = await add_wallet(conn, full, "simulation")
    live = await add_wallet(conn, full, "live")
    await add_balance(conn, full, sim, SOL_MINT, Decimal("1.5"))
    await add_balance(conn, full, sim, MINT, Decimal(1000))
    await add_balance(conn, full, live, SOL_MINT, Decimal(7))
    await add_position(conn, full, sim, MINT)
    await add_position(conn, full, sim, OTHER_MINT)
    await add_position(conn, full, live, "LiveOnlyMint1111111111111111111111111111111")
    expected.append(
        Subscriber(
            full,
            "simulation",
            True,
            True,
            sim,
            Decimal("1.5"),
            2,
            True,
        )
    )

    # No wallet at all.
    bare = await add_agent(conn, user_id)
    expected.append(Subscriber(bare, "simulation", True, True, None, None, 0, False))

    # Live mode with a simulation wallet holding the smallest amount of SOL: the fan-out
    # reads the simulation wallet whatever the mode (the mode is the config version's; a
    # live one fails before the wallet is looked at).
    mismatched = await add_agent(conn, user_id, mode="live", config={})
    other_sim = await add_wallet(conn, mismatched, "simulation")
    await add_balance(conn, mismatched, other_sim, SOL_MINT, TINY)
    expected.append(Subscriber(mismatched, "live", True, True, other_sim, TINY, 0, False))

    # A wallet with a token but no SOL row; automated simulation trading off.
    no_sol = await add_agent(conn, user_id, simulation_on=False)
    no_sol_wallet = await add_wallet(conn, no_sol, "simulation")
    await add_balance(conn, no_sol, no_sol_wallet, OTHER_MINT, Decimal(5))
    await add_position(conn, no_sol, no_sol_wallet, OTHER_MINT)
    expected.append(Subscriber(no_sol, "simulation", False, True, no_sol_wallet, None, 1, False))

    # Live mode with only a live wallet: no simulation wallet to read.
    live_agent = await add_agent(conn, user_id, mode="live", live_on=False)
    live_wallet = await add_wallet(conn, live_agent, "live")
    await add_balance(conn, live_agent, live_wallet, SOL_MINT, Decimal(3))
    expected.append(Subscriber(live_agent, "live", True, False, None, None, 0, False))

    # Someone else's agent, holding the token: never a subscriber.
    stranger = await add_user(conn)
    theirs = await add_agent(conn, stranger)
    their_wallet = await add_wallet(conn, theirs, "simulation")
    await add_balance(conn, theirs, their_wallet, SOL_MINT, Decimal(2))
    await add_position(conn, theirs, their_wallet, MINT)

    return Fleet(user_id, sorted(expected, key=lambda s: s.agent_id))


def assert_exact_balances(subscribers: list[Subscriber]) -> None:
    # Equality alone would not notice a float: 1.5 == Decimal("1.5").
    balances = [s.sol_balance for s in subscribers if s.sol_balance is not None]
    assert len(balances) == 2
    assert all(type(b) is Decimal for b in balances)


def make_signal(user_id: UUID, key: str = "key-1", **fields: Any) -> Signal:
    values: dict[str, Any] = {
        "user_id": user_id,
        "token_address": MINT,
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 4,
        "idempotency_key": key,
        "created_at": datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        **fields,
    }
    return Signal(**values)
