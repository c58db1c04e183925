"""What commands read and write (`worker.handlers.commands`), inside the consumer's transaction.

Rows made by commands are the rows Nexgent's own API writes for the same action (a `users`
row; an `agents` row with its simulation wallet; a `DEPOSIT` / `WITHDRAWAL`
`agent_transactions` row beside the SOL balance it moves), so its UI shows them; every time
written on them is the command's decision time, never the clock. A change of an agent's
decision settings sets `signal_worker.decided_at` for the transaction, so the config
history's trigger puts the new version in force from that decision time (schema 0011).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.db.base import OnConnection
from worker.domain.commands import AgentState, Transfer
from worker.domain.config_reading import (
    DEFAULT_MAX_CONFIG_BYTES,
    OversizedConfig,
    StoredConfigText,
)
from worker.domain.models import SOL_MINT, SOL_SYMBOL

AGENT_OF = """
SELECT a.id, a.user_id, a.name, a.trading_mode, a.automated_trading_simulation,
       a.automated_trading_live, a.created_at,
       CASE WHEN octet_length(a.trading_config::text) > $2 THEN NULL
            ELSE a.trading_config::text END AS config_text,
       octet_length(a.trading_config::text) AS config_bytes,
       w.wallet_address, b.balance AS sol_balance
  FROM agents a
  LEFT JOIN agent_wallets w ON w.agent_id = a.id AND w.wallet_type = 'simulation'
  LEFT JOIN agent_balances b ON b.wallet_address = w.wallet_address AND b.token_address = $3
 WHERE a.id = $1
"""
USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"
EMAIL_TAKEN = "SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)"
INSERT_USER = """
INSERT INTO users (id, email, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
RETURNING id
"""
AGENT_EXISTS = "SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)"
WALLET_TAKEN = "SELECT EXISTS (SELECT 1 FROM agent_wallets WHERE wallet_address = $1)"
INSERT_AGENT = """
INSERT INTO agents (id, user_id, name, trading_mode, trading_config, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $6)
"""
INSERT_WALLET = """
INSERT INTO agent_wallets (wallet_address, agent_id, wallet_type, created_at, updated_at)
VALUES ($1, $2, 'simulation', $3, $3)
"""
INSERT_SOL_BALANCE = """
INSERT INTO agent_balances (id, agent_id, wallet_address, token_address, token_symbol, balance,
                            last_updated)
VALUES ($1, $2, $3, $4, $5, 0, $6)
ON CONFLICT (wallet_address, token_address) DO NOTHING
"""
DECIDED_AT = "SELECT set_config('signal_worker.decided_at', $1, true)"
UPDATE_AGENT = """
UPDATE agents
   SET name = coalesce($2, name),
       trading_config = CASE WHEN $3 THEN $4::text::jsonb ELSE trading_config END,
       automated_trading_simulation = coalesce($5, automated_trading_simulation),
       automated_trading_live = coalesce($6, automated_trading_live),
       updated_at = GREATEST(updated_at, $7)
 WHERE id = $1
"""
LOCK_SOL = """
SELECT balance FROM agent_balances WHERE wallet_address = $1 AND token_address = $2 FOR UPDATE
"""
MOVE_SOL = """
INSERT INTO agent_balances (id, agent_id, wallet_address, token_address, token_symbol, balance,
                            last_updated)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (wallet_address, token_address) DO UPDATE
   SET balance = agent_balances.balance + EXCLUDED.balance,
       last_updated = GREATEST(agent_balances.last_updated, EXCLUDED.last_updated)
"""
INSERT_TRANSFER = """
INSERT INTO agent_transactions (id, agent_id, wallet_address, transaction_type,
                                transaction_value_usd, transaction_time,
                                input_mint, input_symbol, input_amount, input_price,
                                output_mint, output_symbol, output_amount, output_price,
                                created_at, updated_at)
VALUES ($1, $2, $3, $4::transaction_type, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $6, $6)
ON CONFLICT (id) DO NOTHING
"""
TAKE_SOL = """
UPDATE agent_balances
   SET balance = balance - $3, last_updated = GREATEST(last_updated, $4)
 WHERE wallet_address = $1 AND token_address = $2
"""
OPEN_POSITIONS_OF = """
SELECT p.id, p.token_address
  FROM agent_positions p
  JOIN agent_wallets w ON w.wallet_address = p.wallet_address AND w.wallet_type = 'simulation'
 WHERE p.agent_id = $1 AND ($2::varchar IS NULL OR p.token_address = $2)
 ORDER BY p.token_address, p.id
"""
RESULT_OF = """
SELECT command, status, reason, changes::text AS changes, payload::text AS payload, event_at
  FROM command_results WHERE user_id = $1 AND idempotency_key = $2
"""
INSERT_RESULT = """
INSERT INTO command_results (user_id, idempotency_key, command, status, reason, agent_id,
                             payload, changes, event_at, source_record)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9, $10)
ON CONFLICT (user_id, idempotency_key) DO NOTHING
"""
LOCK_COMMAND_KEY = "SELECT pg_advisory_xact_lock(hashtextextended($1, 23))"


class CommandQueries(OnConnection):
    """The statements of `worker.handlers.commands`."""

    __slots__ = ()

    async def lock_command(self, user_id: UUID, key: str) -> None:
        """Serialise with another transaction applying the same command (a redelivery to a
        worker that took the partition over while the first still ran)."""
        await self.conn.execute(LOCK_COMMAND_KEY, f"{user_id}:{key}")

    async def command_result(self, user_id: UUID, key: str) -> dict[str, Any] | None:
        """The stored result of the command (user, key), if any."""
        row = await self.conn.fetchrow(RESULT_OF, user_id, key)
        return None if row is None else dict(row)

    async def insert_command_result(
        self,
        *,
        user_id: UUID,
        key: str,
        command: str,
        status: str,
        reason: str | None,
        agent_id: UUID | None,
        payload: str,
        changes: str | None,
        at: datetime,
        record: str | None,
    ) -> None:
        """Record a command's outcome (once per (user, key))."""
        await self.conn.execute(
            INSERT_RESULT, user_id, key, command, status, reason, agent_id, payload, changes,
            at, record,
        )  # fmt: skip

    async def user_exists(self, user_id: UUID) -> bool:
        """True when `user_id` names a user."""
        return bool(await self.conn.fetchval(USER_EXISTS, user_id))

    async def email_taken(self, email: str) -> bool:
        """True when a user has this email."""
        return bool(await self.conn.fetchval(EMAIL_TAKEN, email))

    async def insert_user(self, user_id: UUID, email: str, at: datetime) -> bool:
        """Create the user (no password: it acts through commands and API keys); False when
        its id or email was taken meanwhile (by a transaction that committed after the
        checks: another worker's, an operator's), nothing written then."""
        return await self.conn.fetchval(INSERT_USER, user_id, email, at) is not None

    async def agent_state(
        self, agent_id: UUID, max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> AgentState | None:
        """The agent, its simulation wallet and SOL (None: no such agent)."""
        row = await self.conn.fetchrow(AGENT_OF, agent_id, max_config_bytes, SOL_MINT)
        if row is None:
            return None
        text: StoredConfigText = row["config_text"]
        if row["config_bytes"] is not None and row["config_bytes"] > max_config_bytes:
            text = OversizedConfig(row["config_bytes"], max_config_bytes)
        return AgentState(
            row["id"], row["user_id"], row["name"], row["trading_mode"],
            row["automated_trading_simulation"], row["automated_trading_live"],
            row["created_at"], text, row["wallet_address"], row["sol_balance"],
        )  # fmt: skip

    async def agent_exists(self, agent_id: UUID) -> bool:
        """True when `agent_id` names an agent (of any user)."""
        return bool(await self.conn.fetchval(AGENT_EXISTS, agent_id))

    async def wallet_taken(self, wallet: str) -> bool:
        """True when some agent has this wallet address."""
        return bool(await self.conn.fetchval(WALLET_TAKEN, wallet))

    async def insert_agent(
        self,
        *,
        agent_id: UUID,
        user_id: UUID,
        name: str,
        trading_mode: str,
        config_text: str,
        wallet: str,
        balance_id: UUID,
        at: datetime,
    ) -> None:
        """The agent (created at `at`: its first config version is in force from then), its
        simulation wallet and a SOL balance row of 0."""
        await self.conn.execute(
            INSERT_AGENT, agent_id, user_id, name, trading_mode, config_text, at
        )
        await self.conn.execute(INSERT_WALLET, wallet, agent_id, at)
        await self.conn.execute(
            INSERT_SOL_BALANCE, balance_id, agent_id, wallet, SOL_MINT, SOL_SYMBOL, at
        )

    async def update_agent(
        self,
        agent_id: UUID,
        at: datetime,
        *,
        name: str | None = None,
        config_text: str | None = None,
        set_config: bool = False,
        automated_simulation: bool | None = None,
        automated_live: bool | None = None,
    ) -> None:
        """Change the agent's columns given; a new config version is in force from `at`."""
        await self.conn.execute(DECIDED_AT, at.isoformat())
        await self.conn.execute(
            UPDATE_AGENT, agent_id, name, set_config, config_text, automated_simulation,
            automated_live, at,
        )  # fmt: skip
        await self.conn.execute(DECIDED_AT, "")

    async def lock_sol(self, wallet: str) -> Decimal | None:
        """Lock the wallet's SOL balance row and read it (None: it has none)."""
        balance: Decimal | None = await self.conn.fetchval(LOCK_SOL, wallet, SOL_MINT)
        return balance

    async def insert_transfer(self, transfer: Transfer, balance_id: UUID) -> None:
        """The transfer's transaction and its move of the wallet's SOL (a withdrawal never
        takes the balance below zero: the column's check refuses it)."""
        t = transfer
        deposit = t.kind == "DEPOSIT"
        sol = (SOL_MINT, SOL_SYMBOL, t.amount, t.sol_usd)
        none = (None, None, None, None)
        await self.conn.execute(
            INSERT_TRANSFER, t.id, t.agent_id, t.wallet_address, t.kind, t.value_usd, t.at,
            *(none if deposit else sol), *(sol if deposit else none),
        )  # fmt: skip
        if deposit:
            await self.conn.execute(
                MOVE_SOL, balance_id, t.agent_id, t.wallet_address, SOL_MINT, SOL_SYMBOL,
                t.amount, t.at,
            )  # fmt: skip
        else:
            await self.conn.execute(TAKE_SOL, t.wallet_address, SOL_MINT, t.amount, t.at)

    async def open_positions_of(
        self, agent_id: UUID, token: str | None
    ) -> Sequence[tuple[UUID, str]]:
        """The agent's open simulation positions (id, token), in `token` only when given."""
        rows = await self.conn.fetch(OPEN_POSITIONS_OF, agent_id, token)
        return [(r["id"], r["token_address"]) for r in rows]
