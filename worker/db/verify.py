"""What `replay --verify` reads of the live ledger: the rows a replay of a range makes,
as `LedgerRow`s keyed as `worker.replay.verify` keys the replayed ones. Read-only.

In range: the executions and swaps of the replayed signals (by id) of the selected agents,
the swaps before `until`; the positions opened from those signals (closed before `until`,
or open now when `with_open`); the balances of the agents' wallets at `until` (the balance
now less the moves recorded from `until` on; now when None), zero balances left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from worker.db.ledger import LEDGER_MOVES
from worker.domain.ledger_rows import (
    BALANCES,
    EXECUTIONS,
    POSITIONS,
    TRANSACTIONS,
    LedgerRow,
    signal_name,
    transaction_kind,
)
from worker.domain.models import SOL_MINT

SIGNAL_NAME = "s.user_id, coalesce(s.idempotency_key, 'signal-' || s.id) AS signal_key"
SELECT_EXECUTIONS = f"""
SELECT {SIGNAL_NAME}, e.agent_id, e.status, e.error, e.transaction_id
  FROM signal_executions e JOIN trading_signals s ON s.id = e.signal_id
 WHERE e.signal_id = ANY($1::int[]) AND e.agent_id = ANY($2::uuid[])
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
SELECT_SWAPS = f"""
SELECT {SIGNAL_NAME}, t.id, t.agent_id, t.input_mint, t.input_amount, t.input_price,
       t.output_mint, t.output_amount, t.output_price, t.transaction_value_usd,
       t.network_fee_sol, t.protocol_fee_sol, t.transaction_time, t.position_id, t.is_dca,
       t.is_take_profit
  FROM agent_transactions t JOIN trading_signals s ON s.id = t.signal_id
 WHERE t.transaction_type = 'SWAP' AND t.signal_id = ANY($1::int[])
   AND t.agent_id = ANY($2::uuid[])
   AND ($3::timestamptz IS NULL OR t.transaction_time < $3)
 ORDER BY t.agent_id, t.signal_id, t.transaction_time, t.created_at, t.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
SELECT_CLOSED = f"""
SELECT {SIGNAL_NAME}, h.agent_id, h.token_address, h.position_id, h.close_reason, h.amount,
       h.purchase_price, h.sale_price, h.change_percent, h.profit_loss_usd,
       h.profit_loss_sol, h.purchase_time, h.sale_time
  FROM agent_historical_swaps h JOIN trading_signals s ON s.id = h.signal_id
 WHERE h.signal_id = ANY($1::int[]) AND h.agent_id = ANY($2::uuid[])
   AND ($3::timestamptz IS NULL OR h.sale_time < $3)
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
SELECT_OPEN = f"""
SELECT {SIGNAL_NAME}, p.id, p.agent_id, p.token_address, p.purchase_price, p.purchase_amount,
       p.remaining_amount, p.total_invested_sol, p.current_stop_loss_percentage,
       p.peak_price, p.lowest_price, p.dca_count, p.last_dca_time, p.take_profit_levels_hit,
       p.tp_batch_start_level, p.total_take_profit_levels, p.moon_bag_activated,
       p.moon_bag_amount, p.realized_profit_sol, p.take_profit_proceeds_sol, p.created_at
  FROM agent_positions p
  JOIN agent_transactions t ON t.id = p.purchase_transaction_id
  JOIN trading_signals s ON s.id = t.signal_id
 WHERE t.signal_id = ANY($1::int[]) AND p.agent_id = ANY($2::uuid[])
"""  # noqa: S608 - constant SQL pieces; values travel as parameters
# Each wallet's balances at $3: the balance now less the moves recorded from then on.
SELECT_BALANCES = f"""
WITH moves AS ({LEDGER_MOVES}),
later AS (
    SELECT wallet_address, token, sum(amount) AS amount FROM moves
     WHERE wallet_address = ANY($2::varchar[]) AND $3::timestamptz IS NOT NULL
       AND transaction_time >= $3
     GROUP BY wallet_address, token
)
SELECT coalesce(b.wallet_address, l.wallet_address) AS wallet_address,
       coalesce(b.token_address, l.token) AS token_address,
       coalesce(b.balance, 0) - coalesce(l.amount, 0) AS balance
  FROM (SELECT * FROM agent_balances WHERE wallet_address = ANY($2::varchar[])) b
  FULL JOIN later l ON l.wallet_address = b.wallet_address AND l.token = b.token_address
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


async def read_live_rows(
    conn: asyncpg.Connection,
    signal_ids: Sequence[int],
    agents: Sequence[tuple[UUID, str]],
    until: datetime | None,
    *,
    with_open: bool = True,
) -> list[LedgerRow]:
    """The live rows of the replayed signals (ids) and the agents ((id, wallet)) in range
    (see the module's docstring); keyed as the replayed ones."""
    ids, agent_ids = list(signal_ids), [a for a, _ in agents]
    rows = [
        LedgerRow(EXECUTIONS, (str(r["user_id"]), r["signal_key"], str(r["agent_id"])),
                  {"status": r["status"], "error": r["error"],
                   "transaction_id": r["transaction_id"]})
        for r in await conn.fetch(SELECT_EXECUTIONS, ids, agent_ids)
    ]  # fmt: skip
    seen: Counter[tuple[str, str, str]] = Counter()
    for r in await conn.fetch(SELECT_SWAPS, ids, agent_ids, until):
        kind = transaction_kind(sells=r["input_mint"] != SOL_MINT, is_dca=r["is_dca"],
                                is_take_profit=r["is_take_profit"])  # fmt: skip
        head = (str(r["agent_id"]), _name(r), kind)
        seen[head] += 1
        rows.append(
            LedgerRow(TRANSACTIONS, (*head, str(seen[head])), {
                "id": r["id"], "input_mint": r["input_mint"], "input_amount": r["input_amount"],
                "input_price": r["input_price"], "output_mint": r["output_mint"],
                "output_amount": r["output_amount"], "output_price": r["output_price"],
                "value_usd": r["transaction_value_usd"],
                "network_fee_sol": r["network_fee_sol"],
                "protocol_fee_sol": r["protocol_fee_sol"], "time": r["transaction_time"],
                "position_id": r["position_id"],
            })
        )  # fmt: skip
    wallets = [w for _, w in agents]
    rows += [
        LedgerRow(BALANCES, (r["wallet_address"], r["token_address"]), {"balance": r["balance"]})
        for r in await conn.fetch(SELECT_BALANCES, SOL_MINT, wallets, until)
        if r["balance"] != 0
    ]
    rows += [
        LedgerRow(POSITIONS, (str(r["agent_id"]), _name(r), r["token_address"]), {
            "state": "closed", "position_id": r["position_id"], "reason": r["close_reason"],
            "amount": r["amount"], "purchase_price": r["purchase_price"],
            "sale_price": r["sale_price"], "change_percent": r["change_percent"],
            "profit_loss_usd": r["profit_loss_usd"], "profit_loss_sol": r["profit_loss_sol"],
            "purchase_time": r["purchase_time"], "sale_time": r["sale_time"],
        })
        for r in await conn.fetch(SELECT_CLOSED, ids, agent_ids, until)
    ]  # fmt: skip
    if with_open:
        rows += [
            LedgerRow(POSITIONS, (str(r["agent_id"]), _name(r), r["token_address"]), {
                "state": "open", "position_id": r["id"], **{c: r[c] for c in OPEN_COLUMNS},
                "purchase_time": r["created_at"],
            })
            for r in await conn.fetch(SELECT_OPEN, ids, agent_ids)
        ]  # fmt: skip
    return rows


OPEN_COLUMNS = (
    "purchase_price", "purchase_amount", "remaining_amount", "total_invested_sol",
    "current_stop_loss_percentage", "peak_price", "lowest_price", "dca_count", "last_dca_time",
    "take_profit_levels_hit", "tp_batch_start_level", "total_take_profit_levels",
    "moon_bag_activated", "moon_bag_amount", "realized_profit_sol", "take_profit_proceeds_sol",
)  # fmt: skip


def _name(r: asyncpg.Record) -> str:
    return signal_name(r["user_id"], r["signal_key"], None)
