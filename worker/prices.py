"""What one price tick does: the latest price per token, then the exits of its positions.

Runs inside the consumer's transaction (with the partitions' offsets), through a
`worker.ports.PriceStore` bound to it, so a tick's effects are all written or none.
A tick not newer than the stored price (by `ts`; a tick without
`ts` takes its record timestamp) changes nothing at all, so a redelivered or replayed tick
can never sell twice. Evaluation is set-based: one query reads a few columns of every open
position in the token, enough to tell the quiet ones (most of them, most ticks) and trail
them; a second reads the others whole; the plans are pure (`worker.domain.ticks`), and
each kind of write is one statement.

Positions that trade are locked and re-read first, wallets' SOL rows before positions and
in address order, as every writer does. Positions that only trail (peak up, stop up, low
down) are written with GREATEST/LEAST, which commute, so they need no lock.

Only ticks of a position's own token evaluate it: a SOL/USD tick moves no position by
itself (as in the source, where SOL/USD is only read when a token's price arrives).

Which rules exit a position: the agent's current config while it is valid (an edit applies
to open positions, as in the source); when the stored config is invalid, the exit rules the
position was opened with (`exit_rule_sets`), else the defaults. An invalid config stops an
agent's buys, never its positions' stop losses.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import structlog

from worker.config_cache import (
    ConfigProblem,
    ConfigTexts,
    config_of_rules,
    config_of_text,
    problem_of,
)
from worker.domain.config import AgentTradingConfig
from worker.domain.fills import token_price_sol
from worker.domain.ledger import BalanceDelta, Holding, SwapRow, buy_rows, sale_rows
from worker.domain.models import SOL_MINT, PositionState
from worker.domain.money import to_price
from worker.domain.records import (
    ClosedPosition,
    OpenPosition,
    PositionWrite,
    TrailRow,
    TrailUpdate,
)
from worker.domain.ticks import (
    Fees,
    QuietBand,
    TickPlan,
    is_quiet,
    plan_tick,
    quiet_band,
    quiet_trail,
)
from worker.messages import PriceTickV1
from worker.ports import PriceStore
from worker.settings import Settings

log = structlog.get_logger(__name__)
# The exit rules of a position whose agent's config is invalid and that has none stored.
_DEFAULT_RULES = AgentTradingConfig()


@dataclass(slots=True)
class TickOutcome:
    """What one tick did, for logs and metrics."""

    token: str
    price_usd: Decimal
    is_newer: bool = True  # False: not newer than the stored price, so it did nothing
    positions: int = 0  # open positions in the token that automation may exit
    trailed: int = 0  # positions whose peak, stop or low moved without a trade
    closes: dict[str, int] = field(default_factory=dict)  # full exits by close reason
    partial_sales: int = 0  # take-profit sales that left the position open
    dca_buys: int = 0
    config_problems: list[ConfigProblem] = field(default_factory=list)

    @property
    def traded(self) -> bool:
        """True when the tick sold or bought anything."""
        return bool(self.closes) or self.partial_sales > 0 or self.dca_buys > 0


@dataclass(slots=True)
class _Writes:
    swaps: list[SwapRow] = field(default_factory=list)
    deltas: list[BalanceDelta] = field(default_factory=list)
    updates: list[PositionWrite] = field(default_factory=list)
    closed: list[ClosedPosition] = field(default_factory=list)
    trails: list[TrailUpdate] = field(default_factory=list)
    partial_sales: int = 0
    dca_buys: int = 0


async def handle_price(
    store: PriceStore,
    tick: PriceTickV1,
    *,
    configs: ConfigTexts,
    settings: Settings,
    now: datetime,
    received_at: datetime,
) -> TickOutcome:
    """Store the tick if newer and run the exits it triggers; what it did.

    `configs` holds agents' configs and exit rule sets across ticks; those not held at the
    version the positions' read shows are read (and held) first."""
    outcome = TickOutcome(tick.token_address, tick.price_usd)
    ts = tick.ts or received_at
    if not await store.upsert_price(tick.token_address, tick.price_usd, ts):
        outcome.is_newer = False
        return outcome
    if tick.token_address == SOL_MINT:
        return outcome
    sol_usd = (await store.fetch_prices([SOL_MINT])).get(SOL_MINT)
    if sol_usd is None:
        log.warning("exits_skipped_no_sol_price", token=tick.token_address)
        return outcome
    trails = await store.trail_rows(tick.token_address)
    outcome.positions = len(trails)
    if not trails:
        return outcome
    cfgs = await _exit_configs(store, configs, trails, outcome)
    fees = Fees(settings.sim_network_fee_sol, settings.sim_protocol_fee_bps)
    writes = await _evaluate(store, trails, cfgs, tick, sol_usd, now, fees)
    await store.insert_swaps(writes.swaps)
    await store.apply_balance_deltas(writes.deltas)
    await store.update_positions(writes.updates, now)
    await store.update_trails(writes.trails, now)
    await store.close_positions(writes.closed, now)
    outcome.trailed = len(writes.trails)
    outcome.partial_sales = writes.partial_sales
    outcome.dca_buys = writes.dca_buys
    outcome.closes = _report(writes.closed)
    return outcome


async def _exit_configs(
    store: PriceStore,
    configs: ConfigTexts,
    trails: list[TrailRow],
    outcome: TickOutcome,
) -> dict[UUID, AgentTradingConfig]:
    """The config that exits each position of `trails`, by position id: its agent's current
    config, or (when that is invalid) the rules it was opened with. Agents deleted since the
    read are left out (their positions go with them)."""
    texts = await _config_texts(store, configs, trails)
    readings = {agent_id: config_of_text(text) for agent_id, text in texts.items()}
    for agent_id, reading in readings.items():
        problem = problem_of(agent_id, reading)
        if problem is not None:
            outcome.config_problems.append(problem)
    invalid = {agent_id for agent_id, r in readings.items() if r.config is None}
    if invalid:
        wanted = [r.exit_rules_id for r in trails if r.agent_id in invalid and r.exit_rules_id]
        missing = configs.missing_rules(wanted)
        if missing:
            configs.update_rules(await store.exit_rules(missing))
    cfgs: dict[UUID, AgentTradingConfig] = {}
    for row in trails:
        current = readings.get(row.agent_id)
        if current is None:
            continue
        if current.config is not None:
            cfgs[row.id] = current.config
            continue
        # A stored rule set that no longer validates (a future code change): the defaults.
        fallback = config_of_rules(configs.rules_text(row.exit_rules_id)).config
        cfgs[row.id] = fallback if fallback is not None else _DEFAULT_RULES
    return cfgs


async def _config_texts(
    store: PriceStore, configs: ConfigTexts, trails: list[TrailRow]
) -> dict[UUID, str | None]:
    """The config text of every agent in `trails`: those held at the row's version from
    `configs`, the others read (and held from now on)."""
    stale = set(configs.stale((row.agent_id, row.config_version) for row in trails))
    texts = {
        row.agent_id: configs.text(row.agent_id) for row in trails if row.agent_id not in stale
    }
    if stale:
        read = await store.agent_configs(list(stale))
        configs.update(read)
        texts.update({agent_id: text for agent_id, (_, text) in read.items()})
    return texts


async def _evaluate(
    store: PriceStore,
    trails: list[TrailRow],
    cfgs: dict[UUID, AgentTradingConfig],
    tick: PriceTickV1,
    sol_usd: Decimal,
    now: datetime,
    fees: Fees,
) -> _Writes:
    """Trail the quiet positions; read and plan the others; lock, re-read and re-plan the
    ones that trade."""
    writes = _Writes()
    price = token_price_sol(tick.price_usd, sol_usd)
    loud = _trail_quiet(trails, cfgs, price, now, writes)
    if not loud:
        return writes
    acting: list[OpenPosition] = []
    # The loud ones are all in `cfgs` (`_trail_quiet` skips the others): one config per
    # agent for the whole tick, read once.
    for position in await store.open_positions(tick.token_address, loud):
        plan = _plan(position, cfgs[position.id], tick.price_usd, sol_usd, now, fees)
        if plan.moves_money:
            acting.append(position)
        elif plan.final is not None:
            _trail(position, plan.final, writes)
    if not acting:
        return writes
    await store.lock_wallets_sol([p.wallet_address for p in acting])
    for position in await store.lock_positions(tick.token_address, [p.id for p in acting]):
        plan = _plan(position, cfgs[position.id], tick.price_usd, sol_usd, now, fees)
        _trade(position, plan, now, writes)
    return writes


def _trail_quiet(
    trails: list[TrailRow],
    cfgs: dict[UUID, AgentTradingConfig],
    price: Decimal,
    now: datetime,
    writes: _Writes,
) -> list[UUID]:
    """Queue the trails of the positions `price` (SOL/token) leaves quiet; the others' ids."""
    price_q = to_price(price)
    bands: dict[int, QuietBand] = {}
    loud: list[UUID] = []
    for row in trails:
        cfg = cfgs.get(row.id)
        if cfg is None:
            continue  # the agent was deleted since the read (its positions go with it)
        band = bands.get(id(cfg))
        if band is None:
            band = bands[id(cfg)] = quiet_band(cfg)
        if not is_quiet(row, price, now, band):
            loud.append(row.id)
            continue
        peak, low = quiet_trail(row, price_q, band)
        if peak != row.peak_price or low != row.lowest_price:
            sl = row.current_stop_loss_percentage
            writes.trails.append(TrailUpdate(row.id, peak, sl, low))
    return loud


def _report(closed: list[ClosedPosition]) -> dict[str, int]:
    exits: dict[str, int] = {}
    for c in closed:
        exits[c.close_reason.value] = exits.get(c.close_reason.value, 0) + 1
        log.info(
            "position_closed",
            position_id=str(c.position.id),
            agent_id=str(c.position.agent_id),
            token=c.position.token_address,
            close_reason=c.close_reason.value,
            profit_loss_sol=str(c.pnl.profit_loss_sol),
        )
    return exits


def _plan(
    position: OpenPosition,
    cfg: AgentTradingConfig,
    token_usd: Decimal,
    sol_usd: Decimal,
    now: datetime,
    fees: Fees,
) -> TickPlan:
    return plan_tick(
        position.state,
        token_usd=token_usd,
        sol_usd=sol_usd,
        now=now,
        cfg=cfg,
        sol_balance=position.sol_balance,
        fees=fees,
    )


def _trail(position: OpenPosition, final: PositionState, writes: _Writes) -> None:
    """Queue the monotone part of a tick that did not trade: peak, stop, low."""
    state = position.state
    if (final.peak_price, final.current_stop_loss_percentage, final.lowest_price) == (
        state.peak_price,
        state.current_stop_loss_percentage,
        state.lowest_price,
    ):
        return
    writes.trails.append(
        TrailUpdate(
            position.id,
            final.peak_price,
            final.current_stop_loss_percentage,
            final.lowest_price if final.lowest_price is not None else state.purchase_price,
        )
    )


def _trade(
    position: OpenPosition,
    plan: TickPlan,
    now: datetime,
    writes: _Writes,
) -> None:
    p = position
    holding = Holding(
        p.agent_id, p.wallet_address, p.token_address, p.token_symbol, p.signal_id, p.id
    )
    tp_tx: uuid.UUID | None = None
    for sale in plan.sales:
        tx_id = uuid.uuid4()
        swap, deltas = sale_rows(tx_id, holding, sale.fill, now, is_take_profit=sale.is_take_profit)
        writes.swaps.append(swap)
        writes.deltas.extend(deltas)
        if sale.close_reason is not None and sale.pnl is not None:
            writes.closed.append(ClosedPosition(p, sale.pnl, tx_id, sale.close_reason))
        elif sale.is_take_profit:
            tp_tx = tx_id
            writes.partial_sales += 1
    if plan.final is None:
        return
    dca_tx: uuid.UUID | None = None
    if plan.dca is not None:
        dca_tx = uuid.uuid4()
        writes.dca_buys += 1
        swap, deltas = buy_rows(dca_tx, holding, plan.dca, now, is_dca=True)
        writes.swaps.append(swap)
        writes.deltas.extend(deltas)
    writes.updates.append(PositionWrite(p.id, plan.final, dca_tx, tp_tx))
