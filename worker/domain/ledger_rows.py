"""Ledger rows as `replay --verify` compares them: a table, a natural key and the values.

The key never holds a serial id (a signal is named by its user and idempotency key), so the
live ledger and a replay in memory can be matched row by row whatever ids PostgreSQL's
sequences gave. Both sides are built into these rows: the live one in `worker.db.verify`,
the replayed one and the comparison in `worker.replay.verify`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

EXECUTIONS = "executions"
TRANSACTIONS = "transactions"
BALANCES = "balances"
POSITIONS = "positions"
TABLES = (EXECUTIONS, TRANSACTIONS, BALANCES, POSITIONS)

# Each table's key, named for the differences' lines.
KEYS: Mapping[str, tuple[str, ...]] = {
    EXECUTIONS: ("user", "signal", "agent"),
    TRANSACTIONS: ("agent", "signal", "kind", "n"),
    BALANCES: ("wallet", "token"),
    POSITIONS: ("agent", "signal", "token"),
}

# A swap's kind: what it did for its position (`transaction_kind`).
BUY, DCA, TAKE_PROFIT, EXIT = "buy", "dca", "take_profit", "exit"


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One row of one table: `key` its natural key (texts, in `KEYS[table]`'s order),
    `values` its compared columns (Decimals compare by value: 1.50 is 1.5)."""

    table: str
    key: tuple[str, ...]
    values: Mapping[str, object]


def transaction_kind(*, sells: bool, is_dca: bool, is_take_profit: bool) -> str:
    """A swap's kind: a buy, a DCA buy, a take-profit sale or a full exit."""
    if not sells:
        return DCA if is_dca else BUY
    return TAKE_PROFIT if is_take_profit else EXIT


def signal_name(user_id: object, idempotency_key: str | None, signal_id: int | None) -> str:
    """A signal's name in keys: its user and idempotency key (its serial id only when it
    has no key, as `worker.db.replay` names such a signal)."""
    key = idempotency_key if idempotency_key is not None else f"signal-{signal_id}"
    return f"{user_id}/{key}"
