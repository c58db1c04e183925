"""Simulated fills: what a buy or a sale at the current USD prices moves, exactly.

There is no slippage model (as in the source's simulation): a swap fills at the price
ticks' rate, token USD / SOL USD. Every amount is quantized by `worker.domain.money`
(SOL, fees and USD values to 1e-8, token amounts and prices to 1e-18, all rounded
down), so the rows written hold exactly these numbers and the ledger identities of
`contract.md` section 6 hold exactly:

- buy: `debit_sol = size_sol + network_fee_sol + protocol_fee_sol`;
- sale: `credit_sol = gross_sol - network_fee_sol - protocol_fee_sol`.

Two differences from the source, on purpose. A simulated buy there debits the network
fee but not the protocol fee (live mode debits both); here both are debited, as the
ledger invariant says. And a sale never costs SOL: when the fees would exceed what the
sale returns (a dust or rugged token), the network fee recorded is cut to what is left,
so `credit_sol >= 0` and no wallet goes negative by selling.

A fill that cannot be written (no tokens at 18 places, a buy price below 1e-18 SOL, or a
number of 10^12 or more, beyond the columns) is still returned; its `rejection` says why,
and the caller turns it into a failed decision. Inputs that break a precondition (a price
or size <= 0, a negative fee) are programming errors and raise `ValueError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from worker.domain.columns import AMOUNT
from worker.domain.money import (
    BPS_PER_UNIT,
    ZERO,
    div,
    exact,
    fmt,
    mul,
    to_price,
    to_sol,
    to_token,
)

# numeric(30,18) and numeric(20,8) both hold magnitudes below 10^12 (`worker.domain.columns`).
COLUMN_LIMIT = AMOUNT.limit


@dataclass(frozen=True, slots=True)
class Fees:
    """The simulated fees of every swap (buys, take-profit and exit sales, DCA buys): a
    network fee in SOL and a protocol fee in basis points of the SOL leg. Built once from
    the settings (`SIM_NETWORK_FEE_SOL`, `SIM_PROTOCOL_FEE_BPS`)."""

    network_fee_sol: Decimal
    protocol_fee_bps: Decimal


@dataclass(frozen=True, slots=True)
class BuyFill:
    """A simulated buy: SOL swapped (fees excluded), tokens received, fees, SOL debited."""

    size_sol: Decimal
    token_amount: Decimal
    price_sol: Decimal
    network_fee_sol: Decimal
    protocol_fee_sol: Decimal
    debit_sol: Decimal
    value_usd: Decimal

    @property
    def rejection(self) -> str | None:
        """None when the fill can be written; otherwise why not, in one sentence."""
        if self.price_sol <= ZERO:
            return "the token price rounds to 0 SOL at 18 decimal places"
        return _rejection(self.token_amount, (self.price_sol, self.debit_sol, self.value_usd))

    @property
    def is_unstorable(self) -> bool:
        """True when the fill is rejected for a number too large for its column (not for a
        price or amount that rounds to 0)."""
        return self.price_sol > ZERO and _too_large(
            self.token_amount, (self.price_sol, self.debit_sol, self.value_usd)
        )


@dataclass(frozen=True, slots=True)
class SellFill:
    """A simulated sale: tokens sold, gross SOL, fees, net SOL credited (>= 0)."""

    token_amount: Decimal
    gross_sol: Decimal
    price_sol: Decimal
    network_fee_sol: Decimal
    protocol_fee_sol: Decimal
    credit_sol: Decimal
    value_usd: Decimal

    @property
    def rejection(self) -> str | None:
        """None when the fill can be written; otherwise why not, in one sentence."""
        return _rejection(self.token_amount, (self.price_sol, self.gross_sol, self.value_usd))


@exact
def token_price_sol(token_price_usd: Decimal, sol_price_usd: Decimal) -> Decimal:
    """A token's price in SOL per token (18 places) from its USD price and SOL's USD price."""
    _require_positive(token_price_usd=token_price_usd, sol_price_usd=sol_price_usd)
    return to_price(div(token_price_usd, sol_price_usd))


@exact
def protocol_fee(amount_sol: Decimal, protocol_fee_bps: Decimal | int) -> Decimal:
    """The protocol fee in SOL (8 places, rounded down) on a SOL leg: amount x bps / 10^4."""
    bps = Decimal(protocol_fee_bps)
    if bps < 0 or bps > BPS_PER_UNIT:
        msg = f"protocol_fee_bps must be within 0..10000, got {fmt(bps)}"
        raise ValueError(msg)
    return to_sol(div(mul(amount_sol, bps), BPS_PER_UNIT))


@exact
def buy_fill(
    size_sol: Decimal,
    token_price_usd: Decimal,
    sol_price_usd: Decimal,
    *,
    network_fee_sol: Decimal,
    protocol_fee_bps: Decimal | int,
) -> BuyFill:
    """Swap `size_sol` SOL (plus fees) for tokens at token USD / SOL USD; check `rejection`."""
    _require_positive(
        size_sol=size_sol, token_price_usd=token_price_usd, sol_price_usd=sol_price_usd
    )
    _require_fee(network_fee_sol)
    size = to_sol(size_sol)
    network = to_sol(network_fee_sol)
    protocol = protocol_fee(size, protocol_fee_bps)
    return BuyFill(
        size_sol=size,
        token_amount=to_token(div(mul(size, sol_price_usd), token_price_usd)),
        price_sol=token_price_sol(token_price_usd, sol_price_usd),
        network_fee_sol=network,
        protocol_fee_sol=protocol,
        debit_sol=size + network + protocol,
        value_usd=to_sol(mul(size, sol_price_usd)),
    )


@exact
def sell_fill(
    token_amount: Decimal,
    token_price_usd: Decimal,
    sol_price_usd: Decimal,
    *,
    network_fee_sol: Decimal,
    protocol_fee_bps: Decimal | int,
) -> SellFill:
    """Sell `token_amount` tokens for SOL at token USD / SOL USD, less fees; check `rejection`."""
    _require_positive(token_price_usd=token_price_usd, sol_price_usd=sol_price_usd)
    _require_fee(network_fee_sol)
    if token_amount < 0:
        msg = f"cannot sell a negative token amount {fmt(token_amount)}"
        raise ValueError(msg)
    amount = to_token(token_amount)
    gross = to_sol(div(mul(amount, token_price_usd), sol_price_usd))
    protocol = protocol_fee(gross, protocol_fee_bps)
    network = min(to_sol(network_fee_sol), gross - protocol)
    return SellFill(
        token_amount=amount,
        gross_sol=gross,
        price_sol=token_price_sol(token_price_usd, sol_price_usd),
        network_fee_sol=network,
        protocol_fee_sol=protocol,
        credit_sol=gross - network - protocol,
        value_usd=to_sol(mul(gross, sol_price_usd)),
    )


def _too_large(token_amount: Decimal, others: tuple[Decimal, ...]) -> bool:
    return token_amount >= COLUMN_LIMIT or any(value >= COLUMN_LIMIT for value in others)


def _rejection(token_amount: Decimal, others: tuple[Decimal, ...]) -> str | None:
    if token_amount <= ZERO:
        return "the token amount rounds to 0 at 18 decimal places"
    if token_amount >= COLUMN_LIMIT:
        return f"the token amount {fmt(token_amount)} is too large for numeric(30,18)"
    if any(value >= COLUMN_LIMIT for value in others):
        return "a price or SOL amount of the trade is too large for its numeric column"
    return None


def _require_positive(**values: Decimal) -> None:
    for name, value in values.items():
        if not value.is_finite() or value <= 0:
            msg = f"{name} must be a positive finite number, got {value}"
            raise ValueError(msg)


def _require_fee(network_fee_sol: Decimal) -> None:
    if not network_fee_sol.is_finite() or network_fee_sol < 0:
        msg = f"network_fee_sol must be a finite number >= 0, got {network_fee_sol}"
        raise ValueError(msg)
