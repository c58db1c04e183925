"""What a chunk of ticks does to the open positions of its tokens, planned in memory.

`worker.handlers.ticks.handle_prices` reads (prices, trails, locked positions) and writes; between
its reads it calls the two steps here, which run the rules tick by tick in offset order,
each tick seeing what the ticks before it did (peaks, stops, sales, DCA buys, the wallet's
SOL), and queue the rows to write in a `Writes`:

- `trail_quiet`: every position a tick can neither trade nor move the stop of (`is_quiet`)
  only has its peak and low trailed; the others are "loud" and returned, to be locked and
  read whole;
- `act_loud`: the loud positions, read whole, are planned by `plan_tick` at every tick of
  their token, carrying each one's state and its wallet's SOL from tick to tick.

Pure: no clock, no I/O, no logging. Each tick is decided at its own decision time
(`Step.at`, the tick's `PriceTick.decision_time`): stale holds, DCA cooldowns and every
time written (transactions, `last_dca_time`, `updated_at`, `sale_time`) use it, never the
moment of processing, so the rows are the same whether the ticks come in one chunk or one
by one. The ids of the sales and DCA buys are derived from their position, tick, kind and
place (`worker.domain.ids.tick_transaction_id`), as a buy's are from its signal, so a
replay and a live run name the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from worker.domain.config import AgentTradingConfig
from worker.domain.fills import Fees
from worker.domain.ids import tick_transaction_id
from worker.domain.ledger import BalanceDelta, SwapOwner, SwapRow, buy_rows, sale_rows
from worker.domain.models import PositionState
from worker.domain.money import exact, to_price
from worker.domain.records import (
    ClosedPosition,
    OpenPosition,
    PositionWrite,
    TrailRow,
    TrailUpdate,
)
from worker.domain.storable import Unstorable, trade_misfit
from worker.domain.ticks import (
    QuietBand,
    TickPlan,
    Trail,
    is_quiet,
    plan_tick,
    quiet_band,
    quiet_trail,
)


@dataclass(slots=True)
class TickTally:
    """What one tick did to the positions, counted as it is planned (for logs and metrics)."""

    positions: int = 0  # open positions in the token that automation may exit
    trailed: int = 0  # positions whose peak, stop or low moved without a trade
    closes: dict[str, int] = field(default_factory=dict)  # full exits by close reason
    partial_sales: int = 0  # take-profit sales that left the position open
    dca_buys: int = 0
    # Writes left out because a value would not fit its column (each logged and counted).
    unstorable: list[Unstorable] = field(default_factory=list)

    @property
    def traded(self) -> bool:
        """True when the tick sold or bought anything."""
        return bool(self.closes) or self.partial_sales > 0 or self.dca_buys > 0


@dataclass(frozen=True, slots=True)
class Step:
    """A tick that moves positions: its index in the chunk, the prices it is read at, its
    decision time `at` (the clock of its decisions and rows) and its observed `ts`."""

    index: int
    token: str
    token_usd: Decimal
    sol_usd: Decimal
    price_sol: Decimal  # SOL per token, 18 places
    at: datetime
    ts: datetime


@dataclass(slots=True)
class Writes:
    """The rows a chunk's plan writes, in the order they were planned."""

    swaps: list[SwapRow] = field(default_factory=list)
    deltas: list[BalanceDelta] = field(default_factory=list)
    updates: list[PositionWrite] = field(default_factory=list)
    closed: list[ClosedPosition] = field(default_factory=list)
    trails: list[TrailUpdate] = field(default_factory=list)


@exact
def trail_quiet(
    steps: Sequence[Step],
    trails: Sequence[TrailRow],
    cfgs: dict[UUID, AgentTradingConfig],
    writes: Writes,
    tallies: Sequence[TickTally],
) -> dict[UUID, TrailRow]:
    """Trail, tick by tick (each at its decision time), the positions every tick of the
    chunk leaves quiet, and queue their trails; the others (loud at some tick), by id. A
    position of `trails` without a config in `cfgs` (its agent was deleted since the read)
    is left out.

    The hot loop of a busy token (every open position, every tick): one decimal context
    for all of it (`@exact`), and a trailed position's new peak and low kept as a pair, not
    a copy of its row, until a later tick of the chunk needs them."""
    by_token = _by_token(trails, cfgs)
    bands: dict[int, QuietBand] = {}
    trailed: dict[UUID, _Trailing] = {}
    trailed_at: dict[UUID, list[int]] = {}  # the ticks that trailed it, while quiet
    loud: dict[UUID, TrailRow] = {}
    for step in steps:
        rows = by_token.get(step.token, ())
        tally = tallies[step.index]
        tally.positions = len(rows)
        price = step.price_sol
        price_q = to_price(price)
        for row in rows:
            if row.id in loud:
                continue
            moved = trailed.get(row.id)
            now_row: Trail = row if moved is None else _moved(row, moved.peak, moved.low)
            cfg = cfgs[row.id]
            band = bands.get(id(cfg))
            if band is None:
                band = bands[id(cfg)] = quiet_band(cfg)
            if not is_quiet(now_row, price, step.at, band):
                # Planned whole from the chunk's first tick on (`act_loud`), which
                # counts its trails again.
                loud[row.id] = row
                trailed.pop(row.id, None)
                for index in trailed_at.pop(row.id, ()):
                    tallies[index].trailed -= 1
                continue
            peak, low = quiet_trail(now_row, price_q, band)
            if peak != now_row.peak_price or low != now_row.lowest_price:
                stop_at = step.at if peak != now_row.peak_price else None
                if moved is not None and stop_at is None:
                    stop_at = moved.stop_at
                trailed[row.id] = _Trailing(row, peak, low, step.at, stop_at)
                trailed_at.setdefault(row.id, []).append(step.index)
                tally.trailed += 1
    for t in trailed.values():
        sl = t.row.current_stop_loss_percentage
        writes.trails.append(TrailUpdate(t.row.id, t.peak, sl, t.low, t.at, t.stop_at))
    return loud


@dataclass(frozen=True, slots=True)
class _Trailing:
    """A quiet position's trail so far in the chunk, with the decision times of the last
    tick that moved it (`at`) and of the last that raised its peak (`stop_at`)."""

    row: TrailRow
    peak: Decimal | None
    low: Decimal
    at: datetime
    stop_at: datetime | None


def _by_token(
    trails: Sequence[TrailRow], cfgs: dict[UUID, AgentTradingConfig]
) -> dict[str, list[TrailRow]]:
    """The rows of `trails` that have a config, by token."""
    by_token: dict[str, list[TrailRow]] = {}
    for row in trails:  # in any order: quiet trails commute; loud ones are read in id order
        if row.id in cfgs:
            by_token.setdefault(row.token_address, []).append(row)
    return by_token


@dataclass(frozen=True, slots=True)
class _Trailed:
    """A quiet position as earlier ticks of the chunk trailed it: what `is_quiet` and
    `quiet_trail` read (`worker.domain.ticks.Trail`)."""

    purchase_price: Decimal
    created_at: datetime
    current_stop_loss_percentage: Decimal | None
    peak_price: Decimal | None
    lowest_price: Decimal


def _moved(row: TrailRow, peak: Decimal | None, low: Decimal) -> _Trailed:
    return _Trailed(row.purchase_price, row.created_at, row.current_stop_loss_percentage, peak, low)


@dataclass(slots=True)
class _Held:
    """The loud positions while `act_loud` plans them: each one's state, its wallet's SOL,
    the DCA and take-profit transactions of those that traded, the ids of those closed,
    and the decision times of the ticks that changed each (`_Times`)."""

    state: dict[UUID, PositionState]
    sol: dict[str, Decimal]
    traded: dict[UUID, tuple[list[UUID], list[UUID]]] = field(default_factory=dict)
    closed: set[UUID] = field(default_factory=set)
    times: dict[UUID, _Times] = field(default_factory=dict)

    def changed(self, p: UUID, before: PositionState, after: PositionState, at: datetime) -> None:
        """Note that the tick decided at `at` changed `p` from `before` to `after`."""
        times = self.times.setdefault(p, _Times(at))
        times.at = at
        if (
            after.peak_price != before.peak_price
            or after.current_stop_loss_percentage != before.current_stop_loss_percentage
        ):
            times.stop_at = at


@dataclass(slots=True)
class _Times:
    """When a loud position last changed, last moved its peak or stop, last took profit."""

    at: datetime
    stop_at: datetime | None = None
    take_profit_at: datetime | None = None


@exact
def act_loud(
    steps: Sequence[Step],
    held: Sequence[OpenPosition],
    cfgs: dict[UUID, AgentTradingConfig],
    *,
    fees: Fees,
    writes: Writes,
    tallies: Sequence[TickTally],
) -> None:
    """Plan the loud positions (locked and read whole) tick by tick, each tick at its
    decision time, carrying each one's state and its wallet's SOL balance from tick to
    tick; queue what they did."""
    by_token: dict[str, list[OpenPosition]] = {}
    for position in held:  # in id order, as read
        by_token.setdefault(position.token_address, []).append(position)
    run = _Held({p.id: p.state for p in held}, {p.wallet_address: p.sol_balance for p in held})
    closed_in: dict[str, int] = {}  # positions closed so far, by token
    for step in steps:
        tallies[step.index].positions -= closed_in.get(step.token, 0)
        for p in by_token.get(step.token, ()):
            if p.id not in run.closed:
                _act_once(p, step, cfgs[p.id], fees, run, writes, tallies[step.index])
                if p.id in run.closed:
                    closed_in[step.token] = closed_in.get(step.token, 0) + 1
    _queue_final(held, run, writes)


def _queue_final(held: Sequence[OpenPosition], run: _Held, writes: Writes) -> None:
    """Queue the final state of each loud position still open that a tick changed: whole
    when it traded, its trail otherwise."""
    for p in held:
        times = run.times.get(p.id)
        if p.id in run.closed or times is None:  # closed, or unchanged by every tick
            continue
        final = run.state[p.id]
        if p.id in run.traded:
            dca_txs, tp_txs = run.traded[p.id]
            writes.updates.append(
                PositionWrite(
                    p.id, final, times.at, tuple(dca_txs), tuple(tp_txs),
                    times.stop_at, times.take_profit_at,
                )
            )  # fmt: skip
        elif final != p.state:
            # A plan's state always has a lowest price (`lowest_price`); the column's type
            # does not say so.
            low = final.lowest_price if final.lowest_price is not None else final.purchase_price
            sl = final.current_stop_loss_percentage
            writes.trails.append(
                TrailUpdate(p.id, final.peak_price, sl, low, times.at, times.stop_at)
            )


def _act_once(
    p: OpenPosition,
    step: Step,
    cfg: AgentTradingConfig,
    fees: Fees,
    run: _Held,
    writes: Writes,
    tally: TickTally,
) -> None:
    """One tick's plan for one loud position, applied to `run` and queued in `writes`.

    A plan that would write a value no column holds (a P/L in USD beyond numeric(20,8) at
    an extreme SOL/USD, a wallet's SOL beyond numeric(30,18), ...) is left out whole for
    this position and tick, with its reason in `tally.unstorable`: the position stays as
    it was, the tick's price and every other position's trades are written."""
    plan = plan_tick(
        run.state[p.id],
        token_usd=step.token_usd,
        sol_usd=step.sol_usd,
        now=step.at,
        cfg=cfg,
        sol_balance=run.sol[p.wallet_address],
        fees=fees,
    )
    if plan.is_dca_unstorable and plan.dca_skipped_reason is not None:
        tally.unstorable.append(Unstorable("dca", str(p.id), plan.dca_skipped_reason))
    if not plan.moves_money:
        # Without a trade the plan only raises the peak and the stop (`evaluate_stop_loss`
        # never loosens it) and lowers the low: its state is what `update_trails` stores.
        if plan.final is not None and plan.final != run.state[p.id]:
            run.changed(p.id, run.state[p.id], plan.final, step.at)
            run.state[p.id] = plan.final
            tally.trailed += 1
        return
    trade = _trade(p, plan, step)
    sol_after = run.sol[p.wallet_address] + trade.sol_change
    problem = trade_misfit(
        trade.swaps,
        state=plan.final,
        exit_pnl=trade.closed.pnl if trade.closed is not None else None,
        sol_balance=sol_after,
    )
    if problem is not None:
        tally.unstorable.append(Unstorable("trade", str(p.id), problem))
        return
    writes.swaps.extend(trade.swaps)
    writes.deltas.extend(trade.deltas)
    dca_txs, tp_txs = run.traded.setdefault(p.id, ([], []))
    dca_txs.extend(trade.dca_txs)
    tp_txs.extend(trade.tp_txs)
    tally.partial_sales += len(trade.tp_txs)
    tally.dca_buys += len(trade.dca_txs)
    if trade.closed is not None:
        writes.closed.append(trade.closed)
        reason = trade.closed.close_reason.value
        tally.closes[reason] = tally.closes.get(reason, 0) + 1
    run.sol[p.wallet_address] = sol_after
    if plan.final is None:
        run.closed.add(p.id)
    else:
        run.changed(p.id, run.state[p.id], plan.final, step.at)
        if trade.tp_txs:
            run.times[p.id].take_profit_at = step.at
        run.state[p.id] = plan.final


@dataclass(slots=True)
class _Trade:
    """The rows one position's plan writes at one tick, before they are checked."""

    swaps: list[SwapRow] = field(default_factory=list)
    deltas: list[BalanceDelta] = field(default_factory=list)
    closed: ClosedPosition | None = None
    dca_txs: list[UUID] = field(default_factory=list)
    tp_txs: list[UUID] = field(default_factory=list)
    sol_change: Decimal = Decimal(0)  # of the wallet's SOL balance


def _trade(p: OpenPosition, plan: TickPlan, step: Step) -> _Trade:
    """The rows of the sales and the DCA buy of `plan` at `step`'s decision time, each
    with the id its position, tick, kind and place derive (`tick_transaction_id`)."""
    holding = SwapOwner(
        p.agent_id, p.wallet_address, p.token_address, p.token_symbol, p.signal_id, p.id
    )
    trade = _Trade()
    for index, sale in enumerate(plan.sales):
        kind = "take_profit" if sale.close_reason is None else sale.close_reason.value
        tx_id = tick_transaction_id(p.id, step.at, step.ts, kind, index)
        swap, deltas = sale_rows(
            tx_id, holding, sale.fill, step.at, is_take_profit=sale.is_take_profit
        )
        trade.swaps.append(swap)
        trade.deltas.extend(deltas)
        trade.sol_change += sale.fill.credit_sol
        if sale.close_reason is not None and sale.pnl is not None:
            trade.closed = ClosedPosition(p, sale.pnl, tx_id, sale.close_reason, step.at)
        elif sale.is_take_profit:
            trade.tp_txs.append(tx_id)
    if plan.final is not None and plan.dca is not None:
        dca_tx = tick_transaction_id(p.id, step.at, step.ts, "dca", len(plan.sales))
        trade.dca_txs.append(dca_tx)
        swap, deltas = buy_rows(dca_tx, holding, plan.dca, step.at, is_dca=True)
        trade.swaps.append(swap)
        trade.deltas.extend(deltas)
        trade.sol_change -= plan.dca.debit_sol
    return trade
