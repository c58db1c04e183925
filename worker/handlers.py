"""What one signal does to the database: the signal row, one execution per agent, the buys.

`handle_signal` runs inside the caller's transaction (the consumer stores the partition's
offset in the same one), so a crash at any moment leaves either all of a signal's rows or
none. A redelivered signal finds its row (unique on user and idempotency key), takes its
lock, and decides only for agents that have no execution yet: nothing is written twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.config_cache import config_of
from worker.db import agents as agents_db
from worker.db import prices as prices_db
from worker.db import signals as signals_db
from worker.db import trades as trades_db
from worker.domain.config import AgentTradingConfig, InvalidConfig
from worker.domain.eligibility import decide, decide_agent
from worker.domain.exits import initial_stop_loss_pct
from worker.domain.fills import BuyFill, buy_fill
from worker.domain.models import (
    SOL_MINT,
    SOL_SYMBOL,
    Decision,
    ExecutionStatus,
    Signal,
    Subscriber,
)
from worker.domain.sizing import sizing_seed
from worker.settings import TradingSettings

# Ids of the rows a buy writes are derived from (signal, agent), so a replay is identical.
_IDS = uuid.UUID("5e0d7a4c-61c8-4f43-9b8e-2f4f1c7d9a10")
DEFAULT_TOKEN_SYMBOL = "TOKEN"  # noqa: S105 - a token symbol, not a secret


def buy_transaction_id(signal_id: int, agent_id: UUID) -> UUID:
    """The purchase transaction id of (signal, agent): the same on every replay."""
    return uuid.uuid5(_IDS, f"buy:{signal_id}:{agent_id}")


def position_id(signal_id: int, agent_id: UUID) -> UUID:
    """The id of the position a (signal, agent) buy opens."""
    return uuid.uuid5(_IDS, f"position:{signal_id}:{agent_id}")


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    """What was decided for one agent, for logs and metrics."""

    agent_id: UUID
    decision: Decision
    transaction_id: UUID | None = None


@dataclass(slots=True)
class SignalOutcome:
    """What one signal did: its id, whether it was new, and each new agent decision."""

    signal_id: int
    is_new_signal: bool
    outcomes: list[AgentOutcome] = field(default_factory=list)
    already_done: int = 0


class UnknownUser(Exception):  # noqa: N818 - an outcome the consumer dead-letters
    """The signal names a user that does not exist."""


@dataclass(frozen=True, slots=True)
class _Prices:
    token_usd: Decimal | None
    sol_usd: Decimal | None


async def handle_signal(
    conn: asyncpg.Connection,
    signal: Signal,
    *,
    trading: TradingSettings,
    now: datetime,
) -> SignalOutcome:
    """Store the signal and execute it for every agent of its user that has no execution yet.

    Raises `UnknownUser` (nothing written) when the user does not exist.
    """
    if not await agents_db.user_exists(conn, signal.user_id):
        raise UnknownUser(f"unknown user_id {signal.user_id}: no such user")
    signal_id, is_new = await signals_db.insert_signal(conn, signal)
    done: set[UUID] = set()
    if not is_new:
        # A redelivery, or another worker replaying it: serialise on the signal row.
        await signals_db.lock_signal(conn, signal_id)
        done = await signals_db.existing_executions(conn, signal_id)
    await trades_db.lock_user_sol_balances(conn, signal.user_id)
    subscribers = await agents_db.fetch_subscribers(conn, signal.user_id, signal.token_address)
    pending = [s for s in subscribers if s.agent_id not in done]
    outcome = SignalOutcome(signal_id, is_new, already_done=len(subscribers) - len(pending))
    if not pending:
        return outcome

    prices = await _prices(conn, signal)
    buys = _Buys(signal_id, signal, now)
    rows: list[signals_db.ExecutionRow] = []
    for agent in pending:
        decision, cfg = _decide(signal, signal_id, agent)
        tx_id: UUID | None = None
        if decision.is_success and cfg is not None and agent.wallet_address is not None:
            fill, decision = _fill(decision, prices, agent.sol_balance, signal, trading)
            if fill is not None:
                tx_id = buys.add(agent.agent_id, agent.wallet_address, fill, cfg)
        rows.append(
            signals_db.ExecutionRow(
                signal_id, agent.agent_id, decision.status, tx_id, decision.reason
            )
        )
        outcome.outcomes.append(AgentOutcome(agent.agent_id, decision, tx_id))

    await trades_db.insert_swaps(conn, buys.swaps)
    await trades_db.apply_balance_deltas(conn, buys.deltas)
    await trades_db.insert_positions(conn, buys.positions)
    await signals_db.insert_executions(conn, rows)
    return outcome


def _decide(
    signal: Signal, signal_id: int, agent: Subscriber
) -> tuple[Decision, AgentTradingConfig | None]:
    """The agent's decision, with its config from the content-keyed cache."""
    seed = sizing_seed(signal_id, agent.agent_id)
    try:
        cfg = config_of(agent.trading_config)
    except InvalidConfig:
        # The slow path says why, after the automated-trading check (off wins).
        return decide_agent(signal, agent, seed=seed), None
    return decide(signal, agent, cfg, seed=seed), cfg


@dataclass(slots=True)
class _Buys:
    """The rows of one signal's buys, written set-based after every agent is decided."""

    signal_id: int
    signal: Signal
    now: datetime
    swaps: list[trades_db.SwapRow] = field(default_factory=list)
    deltas: list[trades_db.BalanceDelta] = field(default_factory=list)
    positions: list[trades_db.NewPosition] = field(default_factory=list)

    def add(self, agent_id: UUID, wallet: str, fill: BuyFill, cfg: AgentTradingConfig) -> UUID:
        """Add one agent's buy: the swap, the balance moves, the position; its tx id."""
        signal, token = self.signal, self.signal.token_address
        symbol = signal.symbol or DEFAULT_TOKEN_SYMBOL
        tx_id = buy_transaction_id(self.signal_id, agent_id)
        pos_id = position_id(self.signal_id, agent_id)
        self.swaps.append(
            trades_db.SwapRow(
                id=tx_id,
                agent_id=agent_id,
                wallet_address=wallet,
                time=self.now,
                signal_id=self.signal_id,
                value_usd=fill.value_usd,
                input_mint=SOL_MINT,
                input_symbol=SOL_SYMBOL,
                input_amount=fill.size_sol,
                input_price=Decimal(1),
                output_mint=token,
                output_symbol=symbol,
                output_amount=fill.token_amount,
                output_price=fill.price_sol,
                network_fee_sol=fill.network_fee_sol,
                protocol_fee_sol=fill.protocol_fee_sol,
                position_id=pos_id,
            )
        )
        self.deltas.append(
            trades_db.BalanceDelta(agent_id, wallet, SOL_MINT, SOL_SYMBOL, -fill.debit_sol)
        )
        self.deltas.append(
            trades_db.BalanceDelta(agent_id, wallet, token, symbol, fill.token_amount)
        )
        self.positions.append(
            trades_db.NewPosition(
                id=pos_id,
                agent_id=agent_id,
                wallet_address=wallet,
                token_address=token,
                token_symbol=symbol,
                purchase_transaction_id=tx_id,
                purchase_price=fill.price_sol,
                purchase_amount=fill.token_amount,
                total_invested_sol=fill.debit_sol,
                stop_loss_pct=initial_stop_loss_pct(cfg) if cfg.stop_loss.enabled else None,
                time=self.now,
            )
        )
        return tx_id


async def _prices(conn: asyncpg.Connection, signal: Signal) -> _Prices:
    wanted = [SOL_MINT] if signal.price_usd is not None else [SOL_MINT, signal.token_address]
    stored = await prices_db.fetch_prices(conn, wanted)
    token_usd = (
        signal.price_usd if signal.price_usd is not None else stored.get(signal.token_address)
    )
    return _Prices(token_usd=token_usd, sol_usd=stored.get(SOL_MINT))


def _fill(
    decision: Decision,
    prices: _Prices,
    balance: Decimal | None,
    signal: Signal,
    trading: TradingSettings,
) -> tuple[BuyFill | None, Decision]:
    """The simulated fill of a successful decision, or the failed decision it turns into."""
    if prices.token_usd is None:
        return None, Decision(
            ExecutionStatus.FAILED,
            f"no USD price for token {signal.token_address}: the signal carries none "
            "and no price tick for it has arrived",
        )
    if prices.sol_usd is None:
        return None, Decision(
            ExecutionStatus.FAILED,
            f"no SOL/USD price: no price tick for the SOL mint {SOL_MINT} has arrived",
        )
    assert decision.size_sol is not None  # noqa: S101 - a success always carries its size
    fill = buy_fill(
        decision.size_sol,
        prices.token_usd,
        prices.sol_usd,
        network_fee_sol=trading.network_fee_sol,
        protocol_fee_bps=trading.protocol_fee_bps,
    )
    if fill.rejection is not None:
        return None, Decision(
            ExecutionStatus.FAILED,
            f"a buy of {decision.size_sol} SOL at {prices.token_usd} USD per token and "
            f"{prices.sol_usd} USD per SOL cannot be made: {fill.rejection}",
        )
    available = balance or Decimal(0)
    if fill.debit_sol > available:
        return None, Decision(
            ExecutionStatus.FAILED,
            f"the buy costs {fill.debit_sol} SOL with fees but the balance is {available} SOL",
        )
    return fill, decision
