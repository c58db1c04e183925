"""Frozen value types of the trading core. Money is `Decimal`; datetimes are tz-aware UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

SOL_MINT = "So11111111111111111111111111111111111111112"
SOL_SYMBOL = "SOL"


class ExecutionStatus(StrEnum):
    """The three outcomes of contract section 3; one per (signal, agent)."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


class CloseReason(StrEnum):
    """Why a position was fully closed (`agent_historical_swaps.close_reason`)."""

    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    STALE_TRADE = "stale_trade"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Signal:
    """A validated buy signal, as stored in `trading_signals` (id set once stored)."""

    user_id: UUID
    token_address: str
    signal_type: str
    signal_strength: int
    idempotency_key: str
    created_at: datetime
    symbol: str | None = None
    activation_reason: str | None = None
    source: str | None = None
    price_usd: Decimal | None = None
    market_cap_usd: Decimal | None = None
    liquidity_usd: Decimal | None = None
    holder_count: int | None = None
    id: int | None = None
    # Provenance: a digest of the message's payload (a key reused with another payload is a
    # conflict, not a redelivery) and the Kafka record it came in (topic:partition:offset).
    digest: bytes | None = None
    record: str | None = None
    # The decision time the pipeline set (its event time, kept monotone per partition and
    # raised for a record later than the lateness bound); None: not set, `created_at` is.
    at: datetime | None = None

    @property
    def decision_time(self) -> datetime:
        """The clock of every decision about this signal and of the rows it writes: `at`,
        else `created_at`."""
        return self.created_at if self.at is None else self.at


@dataclass(frozen=True, slots=True)
class PriceTick:
    """A validated price tick: the token's USD price and when it was observed (the message's
    `ts`, else its Kafka record's timestamp); `at` is its decision time (None: not set,
    `ts` is)."""

    token_address: str
    price_usd: Decimal
    ts: datetime
    at: datetime | None = None

    @property
    def decision_time(self) -> datetime:
        """The clock of every decision this tick makes (stale holds, DCA cooldowns) and of
        the rows it writes: `at`, else `ts`."""
        return self.ts if self.at is None else self.at


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One agent of the signal's user, with what the decision needs about its wallet.

    `wallet_address` and `sol_balance` belong to the wallet of the agent's current
    `trading_mode` (None when it has none); `open_positions` counts that wallet's
    positions; `holds_token` says whether one of them is in the signal's token.
    """

    agent_id: UUID
    trading_mode: str
    automated_trading_simulation: bool
    automated_trading_live: bool
    wallet_address: str | None
    sol_balance: Decimal | None
    open_positions: int
    holds_token: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """What one agent does with one signal: status, the reason when not `success`, the size."""

    status: ExecutionStatus
    reason: str | None = None
    size_sol: Decimal | None = None

    @property
    def is_success(self) -> bool:
        """True when the agent buys."""
        return self.status is ExecutionStatus.SUCCESS


@dataclass(frozen=True, slots=True)
class PositionState:
    """What the exit rules need of one open position (`agent_positions`), prices in SOL/token.

    `purchase_price` is the average price (SOL per token, fees of DCA buys included once a
    DCA ran); `purchase_amount` the tokens bought (DCA included); `remaining_amount` None
    means the full `purchase_amount` is still held. `take_profit_proceeds_sol` is not a
    source column: it is the net SOL that this position's take-profit sales credited so
    far (the sum of their `output_amount - fees`), which a full exit needs for its P/L.
    """

    purchase_price: Decimal
    purchase_amount: Decimal
    total_invested_sol: Decimal
    created_at: datetime
    remaining_amount: Decimal | None = None
    current_stop_loss_percentage: Decimal | None = None
    peak_price: Decimal | None = None
    lowest_price: Decimal | None = None
    dca_count: int = 0
    last_dca_time: datetime | None = None
    take_profit_levels_hit: int = 0
    tp_batch_start_level: int = 0
    total_take_profit_levels: int | None = None
    moon_bag_activated: bool = False
    moon_bag_amount: Decimal | None = None
    realized_profit_sol: Decimal = Decimal(0)
    take_profit_proceeds_sol: Decimal = Decimal(0)

    @property
    def held_amount(self) -> Decimal:
        """Tokens still held: `remaining_amount`, or `purchase_amount` when that is None."""
        return self.purchase_amount if self.remaining_amount is None else self.remaining_amount
