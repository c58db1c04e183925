"""Users and funded simulation agents, as an operator (or `seed-demo`, or a test) creates them.

A funded simulation wallet is, per contract section 5: a `users` row, an `agents` row, an
`agent_wallets` row (`simulation`), an `agent_balances` row for SOL, and a `DEPOSIT`
transaction of the same amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from worker.domain.ids import simulation_wallet_address
from worker.domain.models import SOL_MINT, SOL_SYMBOL

FIND_USER = "SELECT id FROM users WHERE email = $1"
INSERT_USER = "INSERT INTO users (email) VALUES ($1) RETURNING id"
COUNT_USERS = "SELECT count(*) FROM users"


async def find_user(conn: asyncpg.Connection, email: str) -> UUID | None:
    """The id of the user with this email, if any."""
    user_id: UUID | None = await conn.fetchval(FIND_USER, email)
    return user_id


async def create_user(conn: asyncpg.Connection, email: str) -> UUID:
    """Insert a user (no password: API-only) and return its id."""
    user_id: UUID = await conn.fetchval(INSERT_USER, email)
    return user_id


async def count_users(conn: asyncpg.Connection) -> int:
    """How many users exist."""
    count: int = await conn.fetchval(COUNT_USERS)
    return count


@dataclass(frozen=True, slots=True)
class FundedAgent:
    """An agent with its simulation wallet."""

    agent_id: UUID
    wallet_address: str
    name: str


INSERT_AGENT = """
INSERT INTO agents (user_id, name, trading_mode, trading_config,
                    automated_trading_simulation, automated_trading_live)
VALUES ($1, $2, $3, $4::text::jsonb, $5, $6) RETURNING id
"""
INSERT_WALLET = """
INSERT INTO agent_wallets (wallet_address, agent_id, wallet_type) VALUES ($1, $2, $3)
"""
INSERT_DEPOSIT = """
INSERT INTO agent_transactions (agent_id, wallet_address, transaction_type,
                                transaction_value_usd, transaction_time, output_mint,
                                output_symbol, output_amount, output_price)
VALUES ($1, $2, 'DEPOSIT', $3, now(), $4, $5, $6, 1)
"""
CREDIT_SOL = """
INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (wallet_address, token_address) DO UPDATE
   SET balance = agent_balances.balance + EXCLUDED.balance, last_updated = now()
"""
AGENTS_OF_USER = """
SELECT a.id, a.name, w.wallet_address
  FROM agents a LEFT JOIN agent_wallets w ON w.agent_id = a.id AND w.wallet_type = 'simulation'
 WHERE a.user_id = $1 ORDER BY a.created_at, a.id
"""


async def create_funded_agent(
    conn: asyncpg.Connection,
    user_id: UUID,
    name: str,
    *,
    deposit_sol: Decimal,
    trading_config: dict[str, Any] | None = None,
    trading_mode: str = "simulation",
    automated_simulation: bool = True,
    automated_live: bool = True,
    sol_usd: Decimal = Decimal(0),
) -> FundedAgent:
    """Create an agent with a simulation wallet funded by a `DEPOSIT` of `deposit_sol` SOL."""
    agent_id: UUID = await conn.fetchval(
        INSERT_AGENT,
        user_id,
        name,
        trading_mode,
        None if trading_config is None else orjson.dumps(trading_config).decode(),
        automated_simulation,
        automated_live,
    )
    wallet = simulation_wallet_address(agent_id)
    await conn.execute(INSERT_WALLET, wallet, agent_id, "simulation")
    await deposit(conn, agent_id, wallet, deposit_sol, sol_usd=sol_usd)
    return FundedAgent(agent_id, wallet, name)


async def deposit(
    conn: asyncpg.Connection,
    agent_id: UUID,
    wallet: str,
    amount_sol: Decimal,
    *,
    sol_usd: Decimal = Decimal(0),
) -> None:
    """Credit `amount_sol` SOL to the wallet with its `DEPOSIT` transaction."""
    if amount_sol <= 0:
        return
    await conn.execute(
        INSERT_DEPOSIT,
        agent_id,
        wallet,
        (amount_sol * sol_usd).quantize(Decimal("1e-8")),
        SOL_MINT,
        SOL_SYMBOL,
        amount_sol,
    )
    await conn.execute(CREDIT_SOL, agent_id, wallet, SOL_MINT, SOL_SYMBOL, amount_sol)


async def agents_of_user(conn: asyncpg.Connection, user_id: UUID) -> list[FundedAgent]:
    """The user's agents with their simulation wallets, oldest first."""
    rows = await conn.fetch(AGENTS_OF_USER, user_id)
    return [FundedAgent(r["id"], r["wallet_address"] or "", r["name"]) for r in rows]
