"""The ledger invariants of contract section 6, as queries that return every violation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from worker.domain.models import SOL_MINT


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: its number in contract section 6 and the rows involved."""

    invariant: int
    message: str


DUPLICATE_EXECUTIONS = """
SELECT signal_id, agent_id, count(*) AS n FROM signal_executions
 GROUP BY signal_id, agent_id HAVING count(*) > 1 ORDER BY signal_id, agent_id
"""
DUPLICATE_SIGNALS = """
SELECT user_id, idempotency_key, count(*) AS n, array_agg(id ORDER BY id) AS ids
  FROM trading_signals WHERE user_id IS NOT NULL AND idempotency_key IS NOT NULL
 GROUP BY user_id, idempotency_key HAVING count(*) > 1 ORDER BY user_id, idempotency_key
"""
EXECUTION_TRANSACTIONS = """
SELECT e.id, e.signal_id, e.agent_id, e.status, e.transaction_id, t.id AS tx_found,
       t.signal_id AS tx_signal_id
  FROM signal_executions e LEFT JOIN agent_transactions t ON t.id = e.transaction_id
 WHERE (e.status = 'success' AND (t.id IS NULL OR t.signal_id IS DISTINCT FROM e.signal_id))
    OR (e.status <> 'success' AND e.transaction_id IS NOT NULL)
 ORDER BY e.signal_id, e.agent_id
"""
# Every transaction as signed balance moves: (wallet, token, amount, time). The SOL mint is
# $1 (a swap's fees are paid in SOL). What the ledger says each balance is: `check` compares
# it with the balances; `replay` sums it up to a time for each wallet's SOL then.
LEDGER_MOVES = """
    SELECT wallet_address, output_mint AS token, output_amount AS amount, transaction_time
      FROM agent_transactions
     WHERE transaction_type IN ('DEPOSIT', 'SWAP') AND output_mint IS NOT NULL
    UNION ALL
    SELECT wallet_address, input_mint, -input_amount, transaction_time
      FROM agent_transactions
     WHERE transaction_type IN ('SWAP', 'WITHDRAWAL', 'BURN') AND input_mint IS NOT NULL
    UNION ALL
    SELECT wallet_address, $1, -(coalesce(network_fee_sol, 0) + coalesce(protocol_fee_sol, 0)),
           transaction_time
      FROM agent_transactions WHERE transaction_type = 'SWAP'
"""
BALANCE_MISMATCHES = f"""
WITH moves AS ({LEDGER_MOVES}), expected AS (
    SELECT wallet_address, token, sum(amount) AS amount
      FROM moves WHERE wallet_address IS NOT NULL GROUP BY wallet_address, token
)
SELECT coalesce(b.wallet_address, e.wallet_address) AS wallet_address,
       coalesce(b.token_address, e.token) AS token_address,
       b.balance, coalesce(e.amount, 0) AS expected
  FROM agent_balances b
  FULL JOIN expected e ON e.wallet_address = b.wallet_address AND e.token = b.token_address
 WHERE coalesce(b.balance, 0) <> coalesce(e.amount, 0) OR b.balance < 0
 ORDER BY 1, 2
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
POSITION_MISMATCHES = """
SELECT p.id, p.agent_id, p.wallet_address, p.token_address,
       coalesce(p.remaining_amount, p.purchase_amount) AS remaining, b.balance
  FROM agent_positions p
  LEFT JOIN agent_balances b
         ON b.wallet_address = p.wallet_address AND b.token_address = p.token_address
 WHERE coalesce(p.remaining_amount, p.purchase_amount) IS DISTINCT FROM coalesce(b.balance, 0)
 ORDER BY p.id
"""

# Per closed position: the SOL its sales returned (net of fees) minus what its buys cost.
EXIT_PNL_MISMATCHES = """
WITH flows AS (
    SELECT position_id,
           sum(CASE WHEN output_mint = $1 THEN output_amount - coalesce(network_fee_sol, 0)
                                              - coalesce(protocol_fee_sol, 0) ELSE 0 END)
         - sum(CASE WHEN input_mint = $1 THEN input_amount + coalesce(network_fee_sol, 0)
                                             + coalesce(protocol_fee_sol, 0) ELSE 0 END)
             AS cash
      FROM agent_transactions
     WHERE transaction_type = 'SWAP' AND position_id IS NOT NULL
     GROUP BY position_id
)
SELECT h.id, h.position_id, h.profit_loss_sol, f.cash
  FROM agent_historical_swaps h LEFT JOIN flows f ON f.position_id = h.position_id
 WHERE h.position_id IS NOT NULL
   AND (f.position_id IS NULL OR h.profit_loss_sol <> f.cash)
 ORDER BY h.id
"""
# Positions that traded and are gone, with no historical swap for their full exit.
EXITS_WITHOUT_HISTORY = """
SELECT t.position_id, t.agent_id, count(*) AS swaps
  FROM agent_transactions t
 WHERE t.position_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM agent_positions p WHERE p.id = t.position_id)
   AND NOT EXISTS (SELECT 1 FROM agent_historical_swaps h WHERE h.position_id = t.position_id)
 GROUP BY t.position_id, t.agent_id
 ORDER BY t.position_id
"""


def _execution(r: asyncpg.Record) -> str:
    if r["status"] != "success":
        what = f"is {r['status']} but references transaction {r['transaction_id']}"
    elif r["tx_found"] is None:
        what = "references no transaction"
    else:
        what = f"references transaction {r['transaction_id']} of signal {r['tx_signal_id']}"
    return f"execution {r['id']} (signal {r['signal_id']}, agent {r['agent_id']}) {what}"


def _exit_pnl(r: asyncpg.Record) -> str:
    what = (
        "has no swaps"
        if r["cash"] is None
        else f"but its swaps returned {r['cash']} SOL net of their cost"
    )
    return (
        f"historical swap {r['id']} (position {r['position_id']}) records "
        f"profit_loss_sol {r['profit_loss_sol']} {what}"
    )


_CHECKS: list[tuple[int, str, bool, Callable[[asyncpg.Record], str]]] = [
    (1, DUPLICATE_EXECUTIONS, False,
     lambda r: f"{r['n']} executions for signal {r['signal_id']} and agent {r['agent_id']}"),
    (1, DUPLICATE_SIGNALS, False,
     lambda r: f"signals {list(r['ids'])} share user {r['user_id']} and idempotency key "
               f"{r['idempotency_key']!r}"),
    (2, EXECUTION_TRANSACTIONS, False, _execution),
    (3, BALANCE_MISMATCHES, True,
     lambda r: f"wallet {r['wallet_address']} token {r['token_address']}: balance "
               f"{r['balance']} but its transactions give {r['expected']}"),
    (4, POSITION_MISMATCHES, False,
     lambda r: f"position {r['id']} (agent {r['agent_id']}, wallet {r['wallet_address']}, "
               f"token {r['token_address']}) has {r['remaining']} remaining but the balance "
               f"is {r['balance']}"),
    (5, EXIT_PNL_MISMATCHES, True, _exit_pnl),
    (5, EXITS_WITHOUT_HISTORY, False,
     lambda r: f"position {r['position_id']} (agent {r['agent_id']}) is closed with "
               f"{r['swaps']} swaps but has no historical swap"),
]  # fmt: skip


async def find_violations(conn: asyncpg.Connection) -> list[Violation]:
    """Every violation of the ledger invariants on this database, in invariant order."""
    found: list[Violation] = []
    for invariant, sql, needs_sol_mint, describe in _CHECKS:
        rows = await (conn.fetch(sql, SOL_MINT) if needs_sol_mint else conn.fetch(sql))
        found.extend(Violation(invariant, describe(r)) for r in rows)
    return found
