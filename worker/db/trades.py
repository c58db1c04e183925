"""Ledger writes: swap transactions, balance moves and positions, set-based (one statement each).

Repositories never open transactions; the handler wraps these in its own. Amounts come in
already quantized by `worker.domain.money`, so what is written is exactly what was computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from worker.db.base import OnConnection
from worker.db.bulk import Bulk, Column
from worker.domain.exit_rules import ExitRules
from worker.domain.ledger import BalanceDelta, NewPosition, SwapRow, merge_deltas
from worker.domain.models import SOL_MINT
from worker.errors import DomainError

SWAPS: Bulk[SwapRow] = Bulk(
    "t",
    [
        Column("id", "uuid", "id"),
        Column("agent_id", "uuid", "agent_id"),
        Column("wallet", "varchar", "wallet_address"),
        Column("value_usd", "numeric", "value_usd"),
        Column("at", "timestamptz", "time"),
        Column("signal_id", "int", "signal_id"),
        Column("in_mint", "varchar", "input_mint"),
        Column("in_symbol", "varchar", "input_symbol"),
        Column("in_amount", "numeric", "input_amount"),
        Column("in_price", "numeric", "input_price"),
        Column("out_mint", "varchar", "output_mint"),
        Column("out_symbol", "varchar", "output_symbol"),
        Column("out_amount", "numeric", "output_amount"),
        Column("out_price", "numeric", "output_price"),
        Column("is_dca", "bool", "is_dca"),
        Column("is_tp", "bool", "is_take_profit"),
        Column("nfee", "numeric", "network_fee_sol"),
        Column("pfee", "numeric", "protocol_fee_sol"),
        Column("position_id", "uuid", "position_id"),
    ],
)
INSERT_SWAPS = SWAPS.sql("""
INSERT INTO agent_transactions (
    id, agent_id, wallet_address, transaction_type, transaction_value_usd, transaction_time,
    signal_id, fees, input_mint, input_symbol, input_amount, input_price,
    output_mint, output_symbol, output_amount, output_price,
    is_dca, is_take_profit, network_fee_sol, protocol_fee_sol, position_id, created_at,
    updated_at)
SELECT t.id, t.agent_id, t.wallet, 'SWAP', t.value_usd, t.at,
       t.signal_id, t.nfee + t.pfee, t.in_mint, t.in_symbol, t.in_amount, t.in_price,
       t.out_mint, t.out_symbol, t.out_amount, t.out_price,
       t.is_dca, t.is_tp, t.nfee, t.pfee, t.position_id, t.at, t.at
  FROM {rows}
""")


DEBITS: Bulk[BalanceDelta] = Bulk(
    "d",
    [
        Column("wallet", "varchar", "wallet_address"),
        Column("token", "varchar", "token_address"),
        Column("delta", "numeric", "delta"),
    ],
)
APPLY_DEBITS = DEBITS.sql("""
UPDATE agent_balances b
   SET balance = b.balance + d.delta, last_updated = now()
  FROM {rows}
 WHERE b.wallet_address = d.wallet AND b.token_address = d.token
""")
CREDITS: Bulk[BalanceDelta] = Bulk(
    "d",
    [
        Column("agent_id", "uuid", "agent_id"),
        Column("wallet", "varchar", "wallet_address"),
        Column("token", "varchar", "token_address"),
        Column("symbol", "varchar", "token_symbol"),
        Column("delta", "numeric", "delta"),
    ],
)
APPLY_CREDITS = CREDITS.sql("""
INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance,
                            last_updated)
SELECT d.agent_id, d.wallet, d.token, d.symbol, d.delta, now()
  FROM {rows}
ON CONFLICT (wallet_address, token_address) DO UPDATE
   SET balance = agent_balances.balance + EXCLUDED.balance,
       token_symbol = EXCLUDED.token_symbol,
       last_updated = now()
""")


LOCK_USERS_SOL_BALANCES = """
SELECT b.wallet_address
  FROM agent_balances b JOIN agents a ON a.id = b.agent_id
 WHERE a.user_id = ANY($1::uuid[]) AND b.token_address = $2
 ORDER BY b.wallet_address
   FOR UPDATE OF b
"""


POSITIONS: Bulk[NewPosition] = Bulk(
    "p",
    [
        Column("id", "uuid", "id"),
        Column("agent_id", "uuid", "agent_id"),
        Column("wallet", "varchar", "wallet_address"),
        Column("token", "varchar", "token_address"),
        Column("symbol", "varchar", "token_symbol"),
        Column("tx", "uuid", "purchase_transaction_id"),
        Column("price", "numeric", "state.purchase_price"),
        Column("amount", "numeric", "state.purchase_amount"),
        Column("invested", "numeric", "state.total_invested_sol"),
        Column("sl", "numeric", "state.current_stop_loss_percentage"),
        Column("peak", "numeric", "state.peak_price"),
        Column("low", "numeric", "state.lowest_price"),
        Column("at", "timestamptz", "state.created_at"),
        Column("rules", "uuid", "exit_rules_id"),
    ],
)
INSERT_POSITIONS = POSITIONS.sql("""
INSERT INTO agent_positions (
    id, agent_id, wallet_address, token_address, token_symbol, purchase_transaction_id,
    purchase_price, purchase_amount, remaining_amount, total_invested_sol, lowest_price,
    current_stop_loss_percentage, peak_price, last_stop_loss_update, created_at, updated_at,
    exit_rules_id)
SELECT p.id, p.agent_id, p.wallet, p.token, p.symbol, p.tx,
       p.price, p.amount, p.amount, p.invested, p.low,
       p.sl, p.peak, CASE WHEN p.sl IS NULL THEN NULL ELSE p.at END, p.at, p.at, p.rules
  FROM {rows}
""")


RULE_SETS: Bulk[ExitRules] = Bulk(
    "r", [Column("id", "uuid", "id"), Column("rules", "text", "json")]
)
INSERT_EXIT_RULES = RULE_SETS.sql("""
INSERT INTO exit_rule_sets (id, rules)
SELECT r.id, r.rules::jsonb FROM {rows}
 ORDER BY r.id
ON CONFLICT (id) DO NOTHING
""")


class TradeWrites(OnConnection):
    """The ledger writes of a trade: swaps, balance moves, positions and their exit rules."""

    __slots__ = ()

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        """Insert `SWAP` transactions in one statement."""
        if not swaps:
            return
        await self.conn.execute(INSERT_SWAPS, *SWAPS.args(swaps))

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        """Add each delta to its (wallet, token) balance row; credits create missing rows.

        Deltas for the same (wallet, token) are summed first (`merge_deltas`): one statement
        may touch a row once. Debits are plain updates (an upsert would check its negative
        insert row against the CHECK first); a debit of a missing row, or one that would leave
        a balance negative, fails the transaction, which is what a broken ledger must do.
        """
        debits, credits = merge_deltas(deltas)
        if debits:
            status = await self.conn.execute(APPLY_DEBITS, *DEBITS.args(debits))
            if int(status.split()[-1]) != len(debits):
                raise DomainError(
                    f"a debit names a balance row that does not exist ({len(debits)} debits, "
                    f"{status.split()[-1]} rows updated)"
                )
        if credits:
            await self.conn.execute(APPLY_CREDITS, *CREDITS.args(credits))

    async def lock_users_sol_balances(self, user_ids: Sequence[UUID]) -> None:
        """Lock the SOL balance rows of every wallet of the users, in wallet-address order.

        Every writer of a wallet (buys, sales, DCA) takes its SOL row first and in this order,
        so concurrent signal and price processing cannot deadlock on each other.
        """
        await self.conn.execute(LOCK_USERS_SOL_BALANCES, list(set(user_ids)), SOL_MINT)

    async def insert_positions(self, positions: Sequence[NewPosition]) -> None:
        """Insert new positions in their opening state (all of `purchase_amount` held) in one go."""
        if not positions:
            return
        await self.conn.execute(INSERT_POSITIONS, *POSITIONS.args(positions))

    async def insert_exit_rules(self, rules: Sequence[ExitRules]) -> None:
        """Store the exit rule sets that new positions point at (each id once, ever)."""
        if not rules:
            return
        await self.conn.execute(INSERT_EXIT_RULES, *RULE_SETS.args(rules))
