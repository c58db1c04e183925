"""The ledger rows a trade writes, and the pure rules that make them from a fill.

A buy or a sale is one `SWAP` transaction and the balance moves it implies; these are the
values the stores write (`worker.ports`), computed here, apart from any database, so the
unit tests check the ledger arithmetic with no services and the db layer only stores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from worker.domain.fills import BuyFill, SellFill
from worker.domain.models import SOL_MINT, SOL_SYMBOL, PositionState


@dataclass(frozen=True, slots=True)
class SwapRow:
    """One `SWAP` row of `agent_transactions`: `input_*` leaves the wallet, `output_*` enters it."""

    id: UUID
    agent_id: UUID
    wallet_address: str
    time: datetime
    signal_id: int | None
    value_usd: Decimal
    input_mint: str
    input_symbol: str
    input_amount: Decimal
    input_price: Decimal
    output_mint: str
    output_symbol: str
    output_amount: Decimal
    output_price: Decimal
    network_fee_sol: Decimal
    protocol_fee_sol: Decimal
    position_id: UUID | None = None
    is_dca: bool = False
    is_take_profit: bool = False


@dataclass(frozen=True, slots=True)
class BalanceDelta:
    """A change of one wallet's balance of one token (negative for a debit)."""

    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    delta: Decimal


def merge_deltas(deltas: Sequence[BalanceDelta]) -> tuple[list[BalanceDelta], list[BalanceDelta]]:
    """The debits and the credits of `deltas`, summed per (wallet, token), each sorted by
    (wallet, token); a pair that nets to zero is in neither.

    One statement may touch a row once, so the store needs one delta per balance row; the
    order is the order every writer locks rows in.
    """
    merged: dict[tuple[str, str], BalanceDelta] = {}
    for d in deltas:
        key = (d.wallet_address, d.token_address)
        prior = merged.get(key)
        merged[key] = (
            d
            if prior is None
            else BalanceDelta(
                d.agent_id, d.wallet_address, d.token_address, d.token_symbol, prior.delta + d.delta
            )
        )
    rows = sorted(merged.values(), key=lambda d: (d.wallet_address, d.token_address))
    return [d for d in rows if d.delta < 0], [d for d in rows if d.delta > 0]


@dataclass(frozen=True, slots=True)
class NewPosition:
    """An open position created by a buy; `state` is `worker.domain.exits.open_position`'s."""

    id: UUID
    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    purchase_transaction_id: UUID
    state: PositionState
    exit_rules_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class SwapOwner:
    """Whose trade it is and in which token: the parts every swap row of a position shares."""

    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    signal_id: int | None
    position_id: UUID


def buy_rows(
    tx_id: UUID, holding: SwapOwner, fill: BuyFill, time: datetime, *, is_dca: bool = False
) -> tuple[SwapRow, list[BalanceDelta]]:
    """The swap (SOL in, token out) and balance moves of a buy: SOL down by the debit."""
    h = holding
    swap = SwapRow(
        id=tx_id, agent_id=h.agent_id, wallet_address=h.wallet_address, time=time,
        signal_id=h.signal_id, value_usd=fill.value_usd,
        input_mint=SOL_MINT, input_symbol=SOL_SYMBOL, input_amount=fill.size_sol,
        input_price=Decimal(1), output_mint=h.token_address, output_symbol=h.token_symbol,
        output_amount=fill.token_amount, output_price=fill.price_sol,
        network_fee_sol=fill.network_fee_sol, protocol_fee_sol=fill.protocol_fee_sol,
        position_id=h.position_id, is_dca=is_dca,
    )  # fmt: skip
    return swap, [
        BalanceDelta(h.agent_id, h.wallet_address, SOL_MINT, SOL_SYMBOL, -fill.debit_sol),
        BalanceDelta(h.agent_id, h.wallet_address, h.token_address, h.token_symbol,
                     fill.token_amount),
    ]  # fmt: skip


def sale_rows(
    tx_id: UUID, holding: SwapOwner, fill: SellFill, time: datetime, *, is_take_profit: bool
) -> tuple[SwapRow, list[BalanceDelta]]:
    """The swap (token in, gross SOL out) and balance moves of a sale: SOL up by the credit."""
    h = holding
    swap = SwapRow(
        id=tx_id, agent_id=h.agent_id, wallet_address=h.wallet_address, time=time,
        signal_id=h.signal_id, value_usd=fill.value_usd,
        input_mint=h.token_address, input_symbol=h.token_symbol, input_amount=fill.token_amount,
        input_price=fill.price_sol, output_mint=SOL_MINT, output_symbol=SOL_SYMBOL,
        output_amount=fill.gross_sol, output_price=Decimal(1),
        network_fee_sol=fill.network_fee_sol, protocol_fee_sol=fill.protocol_fee_sol,
        position_id=h.position_id, is_take_profit=is_take_profit,
    )  # fmt: skip
    return swap, [
        BalanceDelta(h.agent_id, h.wallet_address, h.token_address, h.token_symbol,
                     -fill.token_amount),
        BalanceDelta(h.agent_id, h.wallet_address, SOL_MINT, SOL_SYMBOL, fill.credit_sol),
    ]  # fmt: skip
