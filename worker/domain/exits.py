"""Price-tick exits: stop loss, take profit, DCA and stale trades (`domain.md` section 6).

Units. Every price here is SOL per token, the unit of `agent_positions.purchase_price`,
`peak_price` and `lowest_price`; the caller turns a USD tick into it with
`worker.domain.fills.token_price_sol(token_usd, sol_usd)`, as the source does
(`priceSol = usd / SOL-USD`). So a move of SOL against USD moves a position's gain, as in
the source. Percentages are plain percent (-32 means 32% below). Amounts are tokens,
SOL amounts are SOL.

The caller evaluates, per tick and position, in the source's order: stop loss (a trigger
sells everything and ends the tick), take profit, stale trade, DCA, then `lowest_price`.

Decisions on the source's quirks (`domain.md` (!) marks):

- The peak is reported as changed whenever it rises, not only when it moves by more than
  an absolute 0.0001 SOL: that threshold made micro-priced tokens store their peak only
  together with a stop-loss change.
- A stop-loss percentage is clamped to [-100, 999.99], the range of numeric(5,2), and
  quantized to 2 places (rounded towards zero) before the ratchet, so the stored value is
  the value compared. A custom level of up to 1000% therefore stores 999.99.
- A take-profit batch that would leave less than 1e-9 tokens (the source's "full exit"
  threshold) with no moon bag sells the whole remainder, so no dust position lingers.
- The stop loss is evaluated at any positive purchase price (the columns hold down to
  1e-18 SOL): the source skipped it below 1e-15 SOL, where its float division could give
  Infinity; the arithmetic here is exact.
- After a config change that added take-profit levels, a batch reads on to the end of the
  current levels, as the source does (`pending_take_profit_levels`).
- DCA is decided on the wallet's SOL as stored (the caller's check), including what a
  take-profit sale credited: the source's pre-check read only a balance cache that every
  take-profit sale clears (a missing entry read as 0 SOL), so a DCA due after a sale was
  skipped until the cache was filled again (the next tick at the earliest).
- A full exit's P/L is cash flow, for every close reason: the SOL the position returned
  (all take-profit credits plus the closing sale's credit) minus `total_invested_sol`.
  The source used the proportional `realized_profit_sol` for a take-profit full exit.
- `change_percent` is P/L over `total_invested_sol` (what the position cost, fees
  included), clamped to numeric(10,4); the source divided by average price x amount.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import takewhile

from worker.domain.config import (
    AgentTradingConfig,
    DcaLevel,
    StopLossConfig,
    StopLossMode,
    TakeProfitLevel,
    dca_levels,
    take_profit_levels,
)
from worker.domain.fills import BuyFill
from worker.domain.models import PositionState
from worker.domain.money import (
    HUNDRED,
    MATH_CONTEXT,
    ONE,
    PCT_COLUMN_MAX,
    ZERO,
    clamp,
    div,
    exact,
    mul,
    pct_change,
    to_pct,
    to_price,
    to_sl_pct,
    to_sol,
    to_token,
)

SL_PCT_MIN = Decimal(-100)
SL_PCT_MAX = Decimal("999.99")
TRAILING_START_PCT = Decimal(20)
# Below this many tokens a take-profit remainder counts as nothing (the source's 1e-9).
DUST_TOKENS = Decimal("1e-9")
# DCA is skipped when the holding is within this many tokens of the moon bag (source: 1e-6).
BAG_ONLY_TOKENS = Decimal("1e-6")

_ZONES = (
    (Decimal(25), Decimal("0.5")),
    (Decimal(50), Decimal("0.6")),
    (Decimal(100), Decimal("0.7")),
    (Decimal(200), Decimal("0.8")),
)
_LAST_ZONE_KEEP = Decimal("0.85")
_KEEP_CAP = Decimal("0.9")


# --- stop loss -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopLossOutcome:
    """One stop-loss evaluation: peak (SOL/token), SL % to store, trigger, whether to write."""

    peak_price: Decimal
    stop_loss_pct: Decimal
    stop_price: Decimal
    gain_pct: Decimal
    is_triggered: bool
    is_changed: bool


@exact
def stop_loss_target(gain_pct: Decimal, cfg: AgentTradingConfig) -> Decimal:
    """The stop-loss % for a peak gain of `gain_pct` % by the mode; 2 places, in [-100, 999.99]."""
    return to_sl_pct(clamp(_raw_target(gain_pct, cfg.stop_loss), SL_PCT_MIN, SL_PCT_MAX))


def _raw_target(gain: Decimal, sl: StopLossConfig) -> Decimal:
    default = sl.default_percentage
    if gain < 0:
        return default
    match sl.mode:
        case StopLossMode.FIXED:
            target = default if gain < TRAILING_START_PCT else gain - 10
        case StopLossMode.EXPONENTIAL:
            target = default if gain <= TRAILING_START_PCT else mul(gain, _exponential_keep(gain))
        case StopLossMode.ZONES:
            target = default if gain < TRAILING_START_PCT else mul(gain, _zone_keep(gain))
        case StopLossMode.CUSTOM:
            matching = [level for level in sl.trailing_levels if level.change <= gain]
            if not matching:
                return default
            target = max(matching, key=lambda level: level.change).stop_loss
    return default if target <= 0 else target


def _exponential_keep(gain: Decimal) -> Decimal:
    ctx = MATH_CONTEXT
    x = gain - TRAILING_START_PCT
    base = ONE - ctx.exp(-x / Decimal("31.25"))
    spread = (x - 55) / 8
    pullback = Decimal("0.12") * ctx.exp(-(spread * spread) / 2)
    keep = clamp(base - pullback, ZERO, _KEEP_CAP)
    if x > 65:
        boost = Decimal("0.3") * (ONE - ctx.exp(-(x - 65) / 80))
        keep = min(_KEEP_CAP, keep + boost)
    return keep


def _zone_keep(gain: Decimal) -> Decimal:
    for upper, keep in _ZONES:
        if gain <= upper:
            return keep
    return _LAST_ZONE_KEEP


@exact
def initial_stop_loss_pct(cfg: AgentTradingConfig) -> Decimal:
    """The stop-loss % a new position starts with: `defaultPercentage` at 2 places."""
    return to_sl_pct(clamp(cfg.stop_loss.default_percentage, SL_PCT_MIN, SL_PCT_MAX))


@exact
def evaluate_stop_loss(
    pos: PositionState, price: Decimal, cfg: AgentTradingConfig
) -> StopLossOutcome:
    """Trail the stop (it never loosens) and test `price` (SOL/token) against it.

    peak = max(stored peak ?? average, price); SL = max(target(peak gain), stored SL ??
    default); triggered when price <= average x (1 + SL/100). `is_changed` says whether
    peak or SL differ from the stored ones (write them with `last_stop_loss_update`).
    With stop loss disabled nothing triggers and nothing changes.
    """
    average = _average(pos)
    stored_pct = pos.current_stop_loss_percentage
    if not cfg.stop_loss.enabled:
        pct = stored_pct if stored_pct is not None else initial_stop_loss_pct(cfg)
        peak = pos.peak_price if pos.peak_price is not None else average
        return StopLossOutcome(
            peak_price=peak,
            stop_loss_pct=pct,
            stop_price=_stop_price(average, pct),
            gain_pct=to_pct(pct_change(peak, average)),
            is_triggered=False,
            is_changed=False,
        )
    peak = to_price(max(pos.peak_price if pos.peak_price is not None else average, price))
    gain = pct_change(peak, average)
    floor = stored_pct if stored_pct is not None else initial_stop_loss_pct(cfg)
    pct = max(stop_loss_target(gain, cfg), to_sl_pct(floor))
    stop_price = _stop_price(average, pct)
    return StopLossOutcome(
        peak_price=peak,
        stop_loss_pct=pct,
        stop_price=stop_price,
        gain_pct=to_pct(gain),
        is_triggered=price <= stop_price,
        is_changed=pct != stored_pct or peak != pos.peak_price,
    )


@exact
def price_at_gain(pos: PositionState, pct: Decimal) -> Decimal:
    """The price (SOL/token) `pct` % above (below, when negative) the average purchase
    price of `pos`: where a stop loss of `pct` fires, or a take-profit level of that
    target does."""
    return _stop_price(_average(pos), pct)


def _stop_price(average: Decimal, pct: Decimal) -> Decimal:
    # Exact: a price of 18 places times a percentage of 2 places needs no rounding here.
    return mul(average, ONE + div(pct, HUNDRED))


# --- take profit -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TakeProfitOutcome:
    """A take-profit sale to make: levels hit, tokens to sell and the position afterwards."""

    levels: tuple[TakeProfitLevel, ...]
    gain_pct: Decimal
    sell_amount: Decimal
    levels_hit: int
    remaining_amount: Decimal
    moon_bag_activated: bool
    moon_bag_amount: Decimal | None
    is_moon_bag_activation: bool
    is_full_exit: bool


@exact
def evaluate_take_profit(
    pos: PositionState, price: Decimal, cfg: AgentTradingConfig
) -> TakeProfitOutcome | None:
    """The partial sale that `price` (SOL/token) triggers; None if disabled, no level or no tokens.

    Levels come from `take_profit_levels(cfg)`, starting at index levels_hit -
    tp_batch_start_level; several may fire at once. Each sells sellPercent of
    `purchase_amount`; the sale is capped at what is held minus the moon bag. The bag
    (retainPercent of `purchase_amount`) activates when enabled, not yet active, and the
    gain reaches its trigger or this batch reaches the last level.
    """
    tp = cfg.take_profit
    pending = pending_take_profit_levels(pos, cfg)
    if not pending:
        return None
    average = _average(pos)
    hit = pos.take_profit_levels_hit
    total = _take_profit_total(pos, cfg)
    gain = pct_change(price, average)
    fired = tuple(takewhile(lambda level: level.target_percent <= gain, pending))
    if not fired:
        return None
    bag = tp.moon_bag
    is_activation = (
        bag.enabled
        and not pos.moon_bag_activated
        and (gain >= bag.trigger_percent or hit + len(fired) >= total)
    )
    bag_amount = pos.moon_bag_amount
    if is_activation:
        bag_amount = to_token(div(mul(pos.purchase_amount, bag.retain_percent), HUNDRED))
    reserve = bag_amount if (is_activation or pos.moon_bag_activated) and bag_amount else ZERO
    held = pos.held_amount
    sell_pct = sum((level.sell_percent for level in fired), ZERO)
    wanted = to_token(div(mul(pos.purchase_amount, sell_pct), HUNDRED))
    sell = min(wanted, max(ZERO, held - reserve))
    if sell <= 0:
        return None
    if reserve == 0 and held - sell < DUST_TOKENS:
        sell = held
    remaining = held - sell
    return TakeProfitOutcome(
        levels=fired,
        gain_pct=to_pct(gain),
        sell_amount=sell,
        levels_hit=hit + len(fired),
        remaining_amount=remaining,
        moon_bag_activated=pos.moon_bag_activated or is_activation,
        moon_bag_amount=bag_amount if (pos.moon_bag_activated or is_activation) else None,
        is_moon_bag_activation=is_activation,
        is_full_exit=remaining == 0,
    )


def pending_take_profit_levels(
    pos: PositionState, cfg: AgentTradingConfig
) -> list[TakeProfitLevel]:
    """The take-profit levels `pos` has not hit yet, lowest first (empty when take profit is
    disabled or levels_hit has reached its total, stored, else the levels'): from index
    levels_hit - tp_batch_start_level of `take_profit_levels(cfg)` to the end of the
    current levels.

    As in the source (`take-profit-calculator.ts`: the total only gates, the levels are
    read on to the end of `config.levels`): after a config change that added levels since
    the total was fixed (at the last DCA), a rise sells every level it reaches, not only
    `total - hit` of them; levels_hit may then pass the total, which ends take profit."""
    if not cfg.take_profit.enabled:
        return []
    total = _take_profit_total(pos, cfg)
    hit = pos.take_profit_levels_hit
    if hit >= total:
        return []
    start = max(0, hit - pos.tp_batch_start_level)
    return take_profit_levels(cfg)[start:]


def _take_profit_total(pos: PositionState, cfg: AgentTradingConfig) -> int:
    """How many take-profit levels `pos` has in all: stored, else those of `cfg`."""
    if pos.total_take_profit_levels is not None:
        return pos.total_take_profit_levels
    return len(take_profit_levels(cfg))


@exact
def take_profit_pnl(pos: PositionState, sold_amount: Decimal, credit_sol: Decimal) -> Decimal:
    """Realized SOL P/L of a partial sale: credit - sold/purchase_amount x invested (8 places)."""
    cost = div(mul(sold_amount, pos.total_invested_sol), pos.purchase_amount)
    return to_sol(credit_sol - cost)


@exact
def apply_take_profit(
    pos: PositionState, outcome: TakeProfitOutcome, credit_sol: Decimal
) -> PositionState:
    """The position after a partial take-profit sale that credited `credit_sol` SOL."""
    return replace(
        pos,
        remaining_amount=outcome.remaining_amount,
        take_profit_levels_hit=outcome.levels_hit,
        moon_bag_activated=outcome.moon_bag_activated,
        moon_bag_amount=outcome.moon_bag_amount,
        realized_profit_sol=pos.realized_profit_sol
        + take_profit_pnl(pos, outcome.sell_amount, credit_sol),
        take_profit_proceeds_sol=pos.take_profit_proceeds_sol + credit_sol,
    )


# --- DCA -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DcaOutcome:
    """A DCA buy to make: which level fired, at what gain %, and the SOL to swap (fees apart)."""

    level_index: int
    level: DcaLevel
    gain_pct: Decimal
    buy_sol: Decimal


@exact
def evaluate_dca(
    pos: PositionState, price: Decimal, now: datetime, cfg: AgentTradingConfig
) -> DcaOutcome | None:
    """The DCA buy that `price` (SOL/token) at `now` (UTC) triggers, or None.

    Skipped when disabled, when only the moon bag is left, when dca_count has reached
    maxDCACount or the number of levels, or within cooldownSeconds of the last DCA.
    Triggers when the gain vs the average is <= the level's dropPercent; buys price x
    held tokens x buyPercent/100 SOL (8 places). Neither maxPurchasePerToken nor
    minimumAgentBalance applies (as in the source); the caller checks the SOL balance.
    """
    dca = cfg.dca
    if not dca.enabled:
        return None
    average = _average(pos)
    held = pos.held_amount
    bag = pos.moon_bag_amount
    if pos.moon_bag_activated and bag is not None and abs(held - bag) < BAG_ONLY_TOKENS:
        return None
    levels = dca_levels(cfg)
    if pos.dca_count >= dca.max_dca_count or pos.dca_count >= len(levels):
        return None
    if (
        pos.last_dca_time is not None
        and _seconds_between(pos.last_dca_time, now) < dca.cooldown_seconds
    ):
        return None
    level = levels[pos.dca_count]
    gain = pct_change(price, average)
    if gain > level.drop_percent:
        return None
    buy_sol = to_sol(div(mul(price, held, level.buy_percent), HUNDRED))
    if buy_sol <= 0:
        return None
    return DcaOutcome(
        level_index=pos.dca_count, level=level, gain_pct=to_pct(gain), buy_sol=buy_sol
    )


@exact
def apply_dca(
    pos: PositionState, fill: BuyFill, *, now: datetime, cfg: AgentTradingConfig
) -> PositionState:
    """The position after a DCA buy: invested += debit, amount += tokens, average = invested/amount.

    `remaining_amount` grows by the tokens when set; take profit restarts against the new
    average (batch start = levels hit, total = levels hit + number of levels); peak and
    stop-loss % are kept.
    """
    invested = pos.total_invested_sol + fill.debit_sol
    amount = pos.purchase_amount + fill.token_amount
    remaining = None if pos.remaining_amount is None else pos.remaining_amount + fill.token_amount
    hit = pos.take_profit_levels_hit
    return replace(
        pos,
        purchase_price=to_price(div(invested, amount)),
        purchase_amount=amount,
        total_invested_sol=invested,
        remaining_amount=remaining,
        dca_count=pos.dca_count + 1,
        last_dca_time=now,
        tp_batch_start_level=hit,
        total_take_profit_levels=hit + len(take_profit_levels(cfg)),
    )


# --- stale trades, lowest price, opening and closing --------------------------------------


@exact
def is_stale(pos: PositionState, price: Decimal, now: datetime, cfg: AgentTradingConfig) -> bool:
    """True when stale-trade close applies: held >= minHoldTimeMinutes and min <= gain % <= max."""
    stale = cfg.stale_trade
    if not stale.enabled:
        return False
    if _seconds_between(pos.created_at, now) < stale.min_hold_time_minutes * 60:
        return False
    gain = pct_change(price, _average(pos))
    return stale.min_profit_percent <= gain <= stale.max_profit_percent


@exact
def lowest_price(pos: PositionState, price: Decimal) -> Decimal:
    """The position's lowest price (SOL/token, 18 places) including `price`."""
    price = to_price(price)
    return price if pos.lowest_price is None else min(pos.lowest_price, price)


@exact
def gain_pct(pos: PositionState, price: Decimal) -> Decimal:
    """Gain of `price` (SOL/token) over the average purchase price, in % (4 places)."""
    return to_pct(pct_change(price, _average(pos)))


@exact
def open_position(fill: BuyFill, *, created_at: datetime, cfg: AgentTradingConfig) -> PositionState:
    """A new position from a buy: price = fill price, invested = debit, SL = default, peak = price.

    Unlike the source, the position exists whether or not stop loss or take profit is on
    (the source wrote none then, losing SL/TP/DCA and allowing repeat buys).
    """
    has_sl = cfg.stop_loss.enabled
    return PositionState(
        purchase_price=fill.price_sol,
        purchase_amount=fill.token_amount,
        total_invested_sol=fill.debit_sol,
        created_at=created_at,
        current_stop_loss_percentage=initial_stop_loss_pct(cfg) if has_sl else None,
        peak_price=fill.price_sol if has_sl else None,
        lowest_price=fill.price_sol,
    )


@dataclass(frozen=True, slots=True)
class ExitPnl:
    """The `agent_historical_swaps` numbers of a full exit (SOL, USD, %, SOL/token)."""

    amount: Decimal
    purchase_price: Decimal
    sale_price: Decimal
    returned_sol: Decimal
    profit_loss_sol: Decimal
    profit_loss_usd: Decimal
    change_percent: Decimal


@exact
def full_exit_pnl(pos: PositionState, sale_credit_sol: Decimal, sol_price_usd: Decimal) -> ExitPnl:
    """P/L of closing `pos` (state before the closing sale) with a sale that credited SOL.

    returned = take-profit credits so far + this credit; profit_loss_sol = returned -
    total_invested_sol (exact); sale_price = returned / purchase_amount; change_percent =
    P/L / invested x 100 (4 places, clamped to numeric(10,4)).
    """
    returned = pos.take_profit_proceeds_sol + sale_credit_sol
    pnl = returned - pos.total_invested_sol
    invested = pos.total_invested_sol
    change = (
        clamp(div(mul(pnl, HUNDRED), invested), -PCT_COLUMN_MAX, PCT_COLUMN_MAX)
        if invested > 0
        else ZERO
    )
    return ExitPnl(
        amount=pos.purchase_amount,
        purchase_price=pos.purchase_price,
        sale_price=to_price(div(returned, pos.purchase_amount)),
        returned_sol=returned,
        profit_loss_sol=pnl,
        profit_loss_usd=to_sol(mul(pnl, sol_price_usd)),
        change_percent=to_pct(change),
    )


def _average(pos: PositionState) -> Decimal:
    if pos.purchase_price <= 0:
        msg = f"a position's purchase price must be positive, got {pos.purchase_price}"
        raise ValueError(msg)
    return pos.purchase_price


def _seconds_between(earlier: datetime, later: datetime) -> Decimal:
    if earlier.tzinfo is None or later.tzinfo is None:
        msg = "datetimes must be timezone-aware (UTC)"
        raise ValueError(msg)
    return Decimal((later - earlier) // timedelta(microseconds=1)) / Decimal(1_000_000)
