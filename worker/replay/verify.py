"""`replay --verify`: a replay's ledger against the live one, row by row.

Both sides become `LedgerRow`s (the live one in `worker.db.verify`), matched by natural key,
never by a serial id:

- executions by (user, signal's idempotency key, agent): status, error, transaction id;
- transactions (swaps) by (agent, signal, kind, n): the n-th buy, DCA buy, take-profit sale
  or full exit of the agent's position from that signal: id, amounts and prices in and out,
  value, fees, time, position;
- balances by (wallet, token), at the end of the range (a zero balance is no row);
- positions by (agent, signal, token), open or closed: the state of an open one (amounts,
  average price, invested SOL, stop-loss state, take-profit and DCA progress, opened at),
  the close of a closed one (reason, amount, prices, P/L, times).

`compare` returns every difference (a row on one side only, or the columns that differ
with both values) and the number of rows compared per table. Pure: no database here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.domain.ledger_rows import (
    BALANCES,
    EXECUTIONS,
    KEYS,
    POSITIONS,
    TABLES,
    TRANSACTIONS,
    LedgerRow,
    signal_name,
    transaction_kind,
)
from worker.domain.models import SOL_MINT, PositionState, Signal
from worker.domain.records import AgentSetup
from worker.replay.memory import MemoryStore

LIVE, REPLAY = "live", "replay"


@dataclass(frozen=True, slots=True)
class Difference:
    """A row on one side only (`only` is LIVE or REPLAY), or the columns that differ:
    (column, live value, replayed value)."""

    table: str
    key: tuple[str, ...]
    only: str | None = None
    columns: tuple[tuple[str, object, object], ...] = ()

    def line(self) -> str:
        """One readable line naming the row and what differs."""
        where = f"{self.table} " + ", ".join(
            f"{name} {value}" for name, value in zip(KEYS[self.table], self.key, strict=True)
        )
        if self.only is not None:
            return f"{where}: only in the {self.only} ledger"
        return f"{where}: " + "; ".join(
            f"{column} live {show(a)} replay {show(b)}" for column, a, b in self.columns
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "table": self.table,
            "key": dict(zip(KEYS[self.table], self.key, strict=True)),
            "only": self.only,
            "columns": [{"column": c, LIVE: show(a), REPLAY: show(b)} for c, a, b in self.columns],
        }


@dataclass
class Comparison:
    """Every difference, and the rows compared per table (keys on either side)."""

    differences: list[Difference] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """No difference."""
        return not self.differences


def show(value: object) -> str:
    """A value as the lines print it: a Decimal without trailing zeros, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def compare(
    live: Iterable[LedgerRow], replayed: Iterable[LedgerRow], ignore: Iterable[str] = ()
) -> Comparison:
    """Every difference between the two sides, table by table, in key order; `ignore`
    names columns left out (e.g. `time` while live and replay stamp rows differently)."""
    skip = set(ignore)
    sides: dict[str, tuple[dict[tuple[str, ...], LedgerRow], dict[tuple[str, ...], LedgerRow]]]
    sides = {table: ({}, {}) for table in TABLES}
    for index, rows in ((0, live), (1, replayed)):
        for row in rows:
            by_key = sides[row.table][index]
            if row.key in by_key:
                raise ValueError(f"{row.table}: two rows with the key {row.key}")
            by_key[row.key] = row
    out = Comparison()
    for table in TABLES:
        left, right = sides[table]
        keys = sorted(left.keys() | right.keys())
        out.counts[table] = len(keys)
        for key in keys:
            a, b = left.get(key), right.get(key)
            if a is None or b is None:
                out.differences.append(Difference(table, key, only=LIVE if b is None else REPLAY))
                continue
            columns = tuple(
                (c, a.values.get(c), b.values.get(c))
                for c in sorted(a.values.keys() | b.values.keys())
                if c not in skip and a.values.get(c) != b.values.get(c)
            )
            if columns:
                out.differences.append(Difference(table, key, columns=columns))
    return out


def report_lines(comparison: Comparison, limit: int) -> list[str]:
    """'identical' with the counts, or the first `limit` differences and their number."""
    counts = ", ".join(f"{comparison.counts.get(t, 0):,} {t}" for t in TABLES)
    if comparison.identical:
        return [f"identical: {counts} compared"]
    found = comparison.differences
    lines = [d.line() for d in found[:limit]]
    more = f" (the first {limit} shown)" if len(found) > limit else ""
    lines.append(f"{len(found):,} difference(s){more} in {counts} compared")
    return lines


# --- the replay's side


def replayed_rows(
    store: MemoryStore,
    signals: Sequence[Signal],
    agents: Sequence[AgentSetup],
    *,
    with_open: bool = True,
) -> list[LedgerRow]:
    """The rows a replay's store holds, as `worker.db.verify` reads the live ones: its
    executions, swaps, balances of the agents' wallets (non-zero) and positions (the open
    ones only when `with_open`)."""
    names = {s.id: signal_name(s.user_id, s.idempotency_key, s.id) for s in signals}
    wallets = {a.wallet_address for a in agents}
    rows = [
        LedgerRow(EXECUTIONS, (*_split(names[signal_id]), str(agent_id)),
                  {"status": r.status.value, "error": r.error,
                   "transaction_id": r.transaction_id})
        for (signal_id, agent_id), r in store.executions.items()
    ]  # fmt: skip
    rows += _swaps(store, names)
    rows += [
        LedgerRow(BALANCES, (wallet, token), {"balance": amount})
        for (wallet, token), amount in store.balances.items()
        if wallet in wallets and amount != 0
    ]
    for closed, at in store.closed:
        p = closed.position
        rows.append(
            LedgerRow(
                POSITIONS,
                (str(p.agent_id), names.get(p.signal_id, "-"), p.token_address),
                closed_values(
                    position_id=p.id, reason=closed.close_reason.value, amount=closed.pnl.amount,
                    purchase_price=closed.pnl.purchase_price, sale_price=closed.pnl.sale_price,
                    change_percent=closed.pnl.change_percent,
                    profit_loss_usd=closed.pnl.profit_loss_usd,
                    profit_loss_sol=closed.pnl.profit_loss_sol,
                    purchase_time=p.state.created_at, sale_time=at,
                ),
            )
        )  # fmt: skip
    if with_open:
        for held in store.positions.values():
            r = held.row
            key = (str(r.agent_id), names.get(r.signal_id, "-"), r.token_address)
            rows.append(LedgerRow(POSITIONS, key, open_values(r.id, held.state)))
    return rows


def _split(name: str) -> tuple[str, str]:
    user, _, key = name.partition("/")
    return user, key


def _swaps(store: MemoryStore, names: Mapping[int | None, str]) -> list[LedgerRow]:
    seen: Counter[tuple[str, str, str]] = Counter()
    rows = []
    for s in store.swaps:
        kind = transaction_kind(sells=s.input_mint != SOL_MINT, is_dca=s.is_dca,
                                is_take_profit=s.is_take_profit)  # fmt: skip
        head = (str(s.agent_id), names.get(s.signal_id, "-"), kind)
        seen[head] += 1
        rows.append(
            LedgerRow(
                TRANSACTIONS,
                (*head, str(seen[head])),
                swap_values(
                    id=s.id, input_mint=s.input_mint, input_amount=s.input_amount,
                    input_price=s.input_price, output_mint=s.output_mint,
                    output_amount=s.output_amount, output_price=s.output_price,
                    value_usd=s.value_usd, network_fee_sol=s.network_fee_sol,
                    protocol_fee_sol=s.protocol_fee_sol, time=s.time, position_id=s.position_id,
                ),
            )
        )  # fmt: skip
    return rows


def swap_values(**values: object) -> dict[str, object]:
    """A swap's compared columns (both sides name them so)."""
    return values


def closed_values(**values: object) -> dict[str, object]:
    """A closed position's compared columns: `state` closed, then its close."""
    return {"state": "closed", **values}


def open_values(position_id: UUID, s: PositionState) -> dict[str, object]:
    """An open position's compared columns: `state` open, then its state."""
    return {
        "state": "open",
        "position_id": position_id,
        "purchase_price": s.purchase_price,
        "purchase_amount": s.purchase_amount,
        "remaining_amount": s.remaining_amount,
        "total_invested_sol": s.total_invested_sol,
        "current_stop_loss_percentage": s.current_stop_loss_percentage,
        "peak_price": s.peak_price,
        "lowest_price": s.lowest_price,
        "dca_count": s.dca_count,
        "last_dca_time": s.last_dca_time,
        "take_profit_levels_hit": s.take_profit_levels_hit,
        "tp_batch_start_level": s.tp_batch_start_level,
        "total_take_profit_levels": s.total_take_profit_levels,
        "moon_bag_activated": s.moon_bag_activated,
        "moon_bag_amount": s.moon_bag_amount,
        "realized_profit_sol": s.realized_profit_sol,
        "take_profit_proceeds_sol": s.take_profit_proceeds_sol,
        "purchase_time": s.created_at,
    }
