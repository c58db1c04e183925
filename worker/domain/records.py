"""What the stores read and write besides the ledger rows (`worker.domain.ledger`): agents
as the fan-out sees them, stored signals and executions, open positions and what a tick
does to them. Plain values: the ports (`worker.ports`) speak in them and the db layer
maps them to rows, so the handlers never see a database type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from worker.domain.config_history import ConfigVersion, in_force
from worker.domain.config_reading import StoredConfigText
from worker.domain.exits import ExitPnl
from worker.domain.models import (
    CloseReason,
    ExecutionStatus,
    PositionState,
    PriceTick,
    Signal,
    Subscriber,
)


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An agent as the fan-out reads it: its mode's wallet, SOL balance and positions.

    `held_tokens` are the tokens, among those asked about, in which that wallet has a
    position; `open_positions` counts all of its positions. `trading_config_text` is the
    stored JSON as text, decoded and validated once per distinct text by
    `worker.handlers.config_cache.config_of_text`.

    The settings (mode, switches, config) are those in force at the start of the batch;
    `versions` holds the agent's versions in force over the batch when there are several
    (an edit within the batch's span), and `at` gives the agent as of a time.
    """

    user_id: UUID
    agent_id: UUID
    trading_mode: str
    automated_trading_simulation: bool
    automated_trading_live: bool
    trading_config_text: StoredConfigText
    wallet_address: str | None
    sol_balance: Decimal | None
    open_positions: int
    held_tokens: frozenset[str]
    created_at: datetime | None = None
    versions: tuple[ConfigVersion, ...] = ()

    def at(self, time: datetime) -> AgentRow:
        """The agent with the settings in force at `time` (itself when it has one version)."""
        if not self.versions:
            return self
        v = in_force(self.versions, time)
        return replace(
            self,
            trading_mode=v.trading_mode,
            automated_trading_simulation=v.automated_trading_simulation,
            automated_trading_live=v.automated_trading_live,
            trading_config_text=v.text,
        )

    def subscriber(self, token_address: str) -> Subscriber:
        """The agent as a subscriber of a signal for `token_address`."""
        return Subscriber(
            agent_id=self.agent_id,
            trading_mode=self.trading_mode,
            automated_trading_simulation=self.automated_trading_simulation,
            automated_trading_live=self.automated_trading_live,
            wallet_address=self.wallet_address,
            sol_balance=self.sol_balance,
            open_positions=self.open_positions,
            holds_token=token_address in self.held_tokens,
        )


@dataclass(frozen=True, slots=True)
class StoredSignal:
    """A signal as stored: its id, whether this call stored it, and the payload digest,
    Kafka record and decision time (`Signal.decision_time`) of the message that stored it
    first (None: not known, the message's own applies)."""

    id: int
    is_new: bool
    digest: bytes | None = None
    record: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    """One `signal_executions` row to write: the outcome of one signal for one agent."""

    signal_id: int
    agent_id: UUID
    status: ExecutionStatus
    transaction_id: UUID | None
    error: str | None


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """A position with what a tick needs around it: owner, signal, SOL balance (the config
    comes from the agent's config history, `config_versions`, once per agent and chunk)."""

    id: UUID
    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    purchase_transaction_id: UUID
    signal_id: int | None
    sol_balance: Decimal
    state: PositionState
    exit_rules_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class TrailRow:
    """The few columns of an open position that every tick of its token reads first
    (`worker.domain.ticks.Trail`): enough to tell a quiet tick and trail it."""

    id: UUID
    agent_id: UUID
    token_address: str
    wallet_address: str
    purchase_price: Decimal
    created_at: datetime
    current_stop_loss_percentage: Decimal | None
    peak_price: Decimal | None
    lowest_price: Decimal | None
    exit_rules_id: UUID | None = None  # the rules it was opened with (`exit_rule_sets`)


@dataclass(frozen=True, slots=True)
class PriceWrite:
    """The latest USD price of a token and when it was observed (`token_prices`); in the
    price history also its decision time (`PriceTick.decision_time`; None: not kept)."""

    token_address: str
    price_usd: Decimal
    ts: datetime
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TrailUpdate:
    """Monotone state a tick moves without trading: the peak and stop rise, the low falls.

    `at` is the decision time of the last tick that moved any of them (`updated_at`);
    `stop_at` that of the last tick that raised the peak or the stop (None: neither rose;
    `last_stop_loss_update`)."""

    id: UUID
    peak_price: Decimal | None
    stop_loss_pct: Decimal | None
    lowest_price: Decimal
    at: datetime
    stop_at: datetime | None = None

    def onto(
        self, stop_loss_pct: Decimal | None, peak: Decimal | None, low: Decimal | None
    ) -> tuple[Decimal | None, Decimal | None, Decimal]:
        """(stop %, peak, low) after this update, as `update_trails` writes them: the stop
        and peak only rise, the low only falls (NULLs ignored, as GREATEST and LEAST do).
        The one definition the stores and the tick planner share."""
        return (
            _greatest(stop_loss_pct, self.stop_loss_pct),
            _greatest(peak, self.peak_price),
            self.lowest_price if low is None else min(low, self.lowest_price),
        )


def _greatest(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True, slots=True)
class PositionWrite:
    """A position's whole new state after ticks that traded (and kept it open), with the
    DCA buys and take-profit sales they made, in order.

    Times are decision times of the chunk's ticks: `at` of the last that changed the
    position (`updated_at`), `stop_at` of the last that moved its peak or stop, and
    `take_profit_at` of its last take-profit sale (None: none)."""

    id: UUID
    state: PositionState
    at: datetime
    dca_transaction_ids: tuple[UUID, ...] = ()
    take_profit_transaction_ids: tuple[UUID, ...] = ()
    stop_at: datetime | None = None
    take_profit_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClosedPosition:
    """A full exit: the position and the numbers of its `agent_historical_swaps` row; `at`
    is the decision time of the tick that closed it (`sale_time`)."""

    position: OpenPosition
    pnl: ExitPnl
    sale_transaction_id: UUID
    close_reason: CloseReason
    at: datetime


@dataclass(frozen=True, slots=True)
class AgentSetup:
    """An agent as set up: owner, name, simulation wallet (None: it has none, and every
    buy fails as live), stored config (JSON text), mode, automation switches and creation
    time (what a replay starts each agent from); and `versions`, its config history (in
    order; empty: the settings here were always in force)."""

    user_id: UUID
    agent_id: UUID
    name: str
    wallet_address: str | None
    config_text: StoredConfigText
    trading_mode: str = "simulation"
    automated_trading_simulation: bool = True
    automated_trading_live: bool = False
    created_at: datetime | None = None
    versions: tuple[ConfigVersion, ...] = ()

    def history(self) -> tuple[ConfigVersion, ...]:
        """Its versions; for an agent without history, its settings as one version."""
        if self.versions:
            return self.versions
        since = self.created_at or datetime.min.replace(tzinfo=UTC)
        return (ConfigVersion(None, since, self.trading_mode, self.automated_trading_simulation,
                              self.automated_trading_live, self.config_text),)  # fmt: skip


@dataclass(frozen=True, slots=True)
class HandAction:
    """What a user did to an agent's wallet by hand, replayed at its time `at`: a transfer
    of simulation SOL (`amount`, negative for a withdrawal), or a manual close of the
    agent's positions in `tokens` by the command (user, key)."""

    at: datetime
    agent_id: UUID
    amount: Decimal | None = None
    user_id: UUID | None = None
    key: str = ""
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplayHistory:
    """What a replay reads: the signals and ticks of its range (in the order read), where it
    begins, and the state then: each agent's SOL, the last price of each token, and how many
    positions were open (which the replay does not carry)."""

    signals: list[Signal]
    ticks: list[PriceTick]
    begin: datetime
    sol: dict[UUID, Decimal]
    prices: dict[str, tuple[Decimal, datetime]]
    open_at: int
    actions: list[HandAction] = field(default_factory=list)
