"""What one price tick does to one open position: the plan of sales, DCA and state updates.

Pure: the shell reads the position, calls `plan_tick`, and writes the plan in one
transaction. Order as in the source (`domain.md` section 6): stop loss (a trigger sells
everything and ends the tick), take profit (one partial sale for all levels that fire),
stale trade (sells the rest), DCA, then `lowest_price`. Prices inside are SOL per token,
derived from the tick's USD price and the latest SOL/USD price (`worker.domain.exits`).

A take-profit sale must credit SOL: one whose value rounds to 0 SOL (dust) or whose fees
take all of it is skipped, its level not marked as hit. A full exit (stop loss, stale
trade) still sells for whatever it returns, 0 included: closing is the point of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from worker.domain.config import AgentTradingConfig, StopLossMode, dca_levels, take_profit_levels
from worker.domain.exits import (
    TRAILING_START_PCT,
    ExitPnl,
    StopLossOutcome,
    apply_dca,
    apply_take_profit,
    evaluate_dca,
    evaluate_stop_loss,
    evaluate_take_profit,
    full_exit_pnl,
    initial_stop_loss_pct,
    is_stale,
    lowest_price,
)
from worker.domain.fills import BuyFill, Fees, SellFill, buy_fill, sell_fill, token_price_sol
from worker.domain.models import CloseReason, PositionState
from worker.domain.money import exact
from worker.domain.storable import position_misfit


@dataclass(frozen=True, slots=True)
class PlannedSale:
    """A sale of the plan; `close_reason` and `pnl` are set when it closes the position."""

    fill: SellFill
    is_take_profit: bool
    close_reason: CloseReason | None = None
    pnl: ExitPnl | None = None


@dataclass(slots=True)
class TickPlan:
    """Everything one tick does to one position, in order; `final` is None once closed."""

    price_sol: Decimal
    sales: list[PlannedSale] = field(default_factory=list)
    dca: BuyFill | None = None
    stop_loss: StopLossOutcome | None = None
    final: PositionState | None = None
    dca_skipped_reason: str | None = None
    # The DCA was skipped because a value it writes would not fit its column.
    is_dca_unstorable: bool = False

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the position closed on this tick, if it did."""
        return self.sales[-1].close_reason if self.sales else None

    @property
    def moves_money(self) -> bool:
        """True when the plan sells or buys (it needs the wallet's balance rows locked)."""
        return bool(self.sales) or self.dca is not None


def plan_tick(
    pos: PositionState,
    *,
    token_usd: Decimal,
    sol_usd: Decimal,
    now: datetime,
    cfg: AgentTradingConfig,
    sol_balance: Decimal,
    fees: Fees,
) -> TickPlan:
    """The plan for `pos` at this tick; `sol_balance` (SOL) bounds a DCA buy."""
    price = token_price_sol(token_usd, sol_usd)
    plan = TickPlan(price_sol=price)
    state = pos

    if cfg.stop_loss.enabled:
        plan.stop_loss = evaluate_stop_loss(state, price, cfg)
        state = replace(
            state,
            peak_price=plan.stop_loss.peak_price,
            current_stop_loss_percentage=plan.stop_loss.stop_loss_pct,
        )
        if plan.stop_loss.is_triggered and _close(
            plan, state, token_usd, sol_usd, fees, CloseReason.STOP_LOSS
        ):
            return plan

    outcome = evaluate_take_profit(state, price, cfg)
    if outcome is not None:
        fill = _sell(outcome.sell_amount, token_usd, sol_usd, fees)
        # A take-profit sale that credits no SOL (its value rounds to 0 at 8 places, or the
        # fees take it all) is not a sale: nothing is written and the levels stay pending.
        if fill is not None and fill.credit_sol > 0:
            if outcome.is_full_exit:
                pnl = full_exit_pnl(state, fill.credit_sol, sol_usd)
                plan.sales.append(PlannedSale(fill, True, CloseReason.TAKE_PROFIT, pnl))
                return plan
            plan.sales.append(PlannedSale(fill, is_take_profit=True))
            sol_balance += fill.credit_sol
            state = apply_take_profit(state, outcome, fill.credit_sol)

    if is_stale(state, price, now, cfg) and _close(
        plan, state, token_usd, sol_usd, fees, CloseReason.STALE_TRADE
    ):
        return plan

    dca = evaluate_dca(state, price, now, cfg)
    if dca is not None:
        fill_buy = buy_fill(
            dca.buy_sol,
            token_usd,
            sol_usd,
            network_fee_sol=fees.network_fee_sol,
            protocol_fee_bps=fees.protocol_fee_bps,
        )
        state = _dca(plan, state, fill_buy, sol_balance, now, cfg)

    plan.final = replace(state, lowest_price=lowest_price(state, price))
    return plan


def _dca(
    plan: TickPlan,
    state: PositionState,
    fill: BuyFill,
    sol_balance: Decimal,
    now: datetime,
    cfg: AgentTradingConfig,
) -> PositionState:
    """Make the DCA buy `fill` in `plan`, or say why it is skipped; the state after it."""
    if fill.rejection is not None:
        plan.dca_skipped_reason = fill.rejection
        plan.is_dca_unstorable = fill.is_unstorable
        return state
    if fill.debit_sol > sol_balance:
        plan.dca_skipped_reason = (
            f"DCA buy needs {fill.debit_sol} SOL with fees but the balance is {sol_balance} SOL"
        )
        return state
    bought = apply_dca(state, fill, now=now, cfg=cfg)
    # A DCA whose position no longer fits its columns (invested SOL or tokens of 10^12 or
    # more) is skipped like an unaffordable one: the rest of the tick holds.
    problem = position_misfit(bought)
    if problem is not None:
        plan.dca_skipped_reason = f"the position after it cannot be stored: {problem}"
        plan.is_dca_unstorable = True
        return state
    plan.dca = fill
    return bought


def _sell(amount: Decimal, token_usd: Decimal, sol_usd: Decimal, fees: Fees) -> SellFill | None:
    fill = sell_fill(
        amount,
        token_usd,
        sol_usd,
        network_fee_sol=fees.network_fee_sol,
        protocol_fee_bps=fees.protocol_fee_bps,
    )
    return None if fill.rejection is not None else fill


def _close(
    plan: TickPlan,
    state: PositionState,
    token_usd: Decimal,
    sol_usd: Decimal,
    fees: Fees,
    reason: CloseReason,
) -> bool:
    """Sell everything held; False (position kept) when the sale cannot be made."""
    fill = _sell(state.held_amount, token_usd, sol_usd, fees)
    if fill is None:
        return False
    pnl = full_exit_pnl(state, fill.credit_sol, sol_usd)
    plan.sales.append(PlannedSale(fill, is_take_profit=False, close_reason=reason, pnl=pnl))
    return True


# --- the quiet path --------------------------------------------------------------------
#
# Most ticks move most positions only a little: no stop is reached, no level fires, no
# stop ratchets. `is_quiet` proves that cheaply (a few comparisons, no division), so the
# shell can skip `plan_tick` for those positions and only trail their peak and low. It is
# conservative: when in doubt it says False and the full plan runs. A property test checks
# that whenever it says True, `plan_tick` would neither trade nor move the stop.


class Trail(Protocol):
    """What the quiet path reads of a position: `PositionState`, or the few columns of it
    that the shell reads for every open position of a token (`worker.db.positions`)."""

    @property
    def purchase_price(self) -> Decimal: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def current_stop_loss_percentage(self) -> Decimal | None: ...
    @property
    def peak_price(self) -> Decimal | None: ...
    @property
    def lowest_price(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class QuietBand:
    """What a config allows a tick to do without a plan; derived once per config."""

    is_stop_loss_enabled: bool
    default_sl_pct: Decimal
    trailing_start_pct: Decimal | None
    tp_min_target_pct: Decimal | None
    stale: tuple[Decimal, Decimal, Decimal] | None
    dca_max_drop_pct: Decimal | None


def quiet_band(cfg: AgentTradingConfig) -> QuietBand:
    """The thresholds of `cfg` that `is_quiet` compares against."""
    sl = cfg.stop_loss
    if sl.mode is StopLossMode.CUSTOM:
        changes = [level.change for level in sl.trailing_levels]
        trailing_start = min(changes) if changes else None
    else:
        trailing_start = TRAILING_START_PCT
    tp_targets = [level.target_percent for level in take_profit_levels(cfg)]
    stale = cfg.stale_trade
    drops = [level.drop_percent for level in dca_levels(cfg)]
    return QuietBand(
        is_stop_loss_enabled=sl.enabled,
        default_sl_pct=initial_stop_loss_pct(cfg),
        trailing_start_pct=trailing_start,
        tp_min_target_pct=min(tp_targets) if cfg.take_profit.enabled and tp_targets else None,
        stale=(
            (Decimal(stale.min_hold_time_minutes * 60), stale.min_profit_percent,
             stale.max_profit_percent)
            if stale.enabled else None
        ),
        dca_max_drop_pct=max(drops) if cfg.dca.enabled and drops else None,
    )  # fmt: skip


@exact
def is_quiet(pos: Trail, price: Decimal, now: datetime, band: QuietBand) -> bool:
    """True when `price` (SOL/token) can neither trade `pos` nor move its stop-loss %."""
    average = pos.purchase_price
    scaled = price * 100  # price >= avg x (1 + p/100)  <=>  price x 100 >= avg x (100 + p)
    if band.is_stop_loss_enabled:
        sl = pos.current_stop_loss_percentage
        if sl is None or sl < band.default_sl_pct:
            return False
        # Below the gain where trailing starts, every mode's target is the default, so the
        # stored stop (at least the default) stays; above it, only the full plan knows.
        peak = max(pos.peak_price if pos.peak_price is not None else average, price)
        if band.trailing_start_pct is None or peak * 100 >= average * (
            100 + band.trailing_start_pct
        ):
            return False
        if scaled <= average * (100 + sl):
            return False
    if band.tp_min_target_pct is not None and scaled >= average * (100 + band.tp_min_target_pct):
        return False
    if band.dca_max_drop_pct is not None and scaled <= average * (100 + band.dca_max_drop_pct):
        return False
    if band.stale is not None:
        min_hold_s, low, high = band.stale
        is_old = Decimal((now - pos.created_at).total_seconds()) >= min_hold_s
        if is_old and average * (100 + low) <= scaled <= average * (100 + high):
            return False
    return True


def quiet_trail(pos: Trail, price_q: Decimal, band: QuietBand) -> tuple[Decimal | None, Decimal]:
    """The (peak, low) after a quiet tick: the peak trailed when stops are on, the low always.

    `price_q` is the tick's price already quantized to 18 places (`to_price`), done once per
    tick, not per position: `to_price` is monotone and stored prices have 18 places, so
    `to_price(max(peak, price)) == max(peak, to_price(price))`, and likewise for the low.
    """
    peak = pos.peak_price
    if band.is_stop_loss_enabled:
        peak = max(peak if peak is not None else pos.purchase_price, price_q)
    low = pos.lowest_price
    return peak, price_q if low is None else min(low, price_q)
