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
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import structlog

from worker.config_cache import ConfigTexts, config_of_text
from worker.db import positions as positions_db
from worker.db import trades as trades_db
from worker.domain.config import AgentTradingConfig, InvalidConfig
from worker.domain.fills import token_price_sol
from worker.domain.models import SOL_MINT, PositionState
from worker.domain.money import to_price
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


@dataclass(slots=True)
class _Writes:
    swaps: list[trades_db.SwapRow] = field(default_factory=list)
    deltas: list[trades_db.BalanceDelta] = field(default_factory=list)
    updates: list[positions_db.PositionWrite] = field(default_factory=list)
    closed: list[positions_db.ClosedPosition] = field(default_factory=list)
    trails: list[positions_db.TrailUpdate] = field(default_factory=list)


async def handle_price(
    store: PriceStore,
    tick: PriceTickV1,
    *,
    configs: ConfigTexts,
    settings: Settings,
    now: datetime,
    received_at: datetime,
) -> dict[str, int]:
    """Store the tick if newer and run the exits it triggers; full exits by close reason.

    `configs` holds agents' configs across ticks; those not held at the version the
    positions' read shows are read (and held) first."""
    ts = tick.ts or received_at
    if not await store.upsert_price(tick.token_address, tick.price_usd, ts):
        return {}
    if tick.token_address == SOL_MINT:
        return {}
    sol_usd = (await store.fetch_prices([SOL_MINT])).get(SOL_MINT)
    if sol_usd is None:
        log.warning("exits_skipped_no_sol_price", token=tick.token_address)
        return {}
    trails = await store.trail_rows(tick.token_address)
    if not trails:
        return {}
    texts = await _config_texts(store, configs, trails)
    fees = Fees(settings.sim_network_fee_sol, settings.sim_protocol_fee_bps)
    writes = await _evaluate(store, trails, texts, tick, sol_usd, now, fees)
    await store.insert_swaps(writes.swaps)
    await store.apply_balance_deltas(writes.deltas)
    await store.update_positions(writes.updates, now)
    await store.update_trails(writes.trails, now)
    await store.close_positions(writes.closed, now)
    return _report(writes.closed)


async def _config_texts(
    store: PriceStore, configs: ConfigTexts, trails: list[positions_db.TrailRow]
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
    trails: list[positions_db.TrailRow],
    texts: dict[UUID, str | None],
    tick: PriceTickV1,
    sol_usd: Decimal,
    now: datetime,
    fees: Fees,
) -> _Writes:
    """Trail the quiet positions; read and plan the others; lock, re-read and re-plan the
    ones that trade."""
    writes = _Writes()
    price = token_price_sol(tick.price_usd, sol_usd)
    loud = _trail_quiet(trails, texts, price, now, writes)
    if not loud:
        return writes
    acting: list[positions_db.OpenPosition] = []
    # The loud ones' agents are all in `texts` (`_trail_quiet` skips the others): one
    # config per agent for the whole tick, read once.
    for position in await store.open_positions(tick.token_address, loud):
        plan = _plan(position, texts[position.agent_id], tick.price_usd, sol_usd, now, fees)
        if plan is not None and plan.moves_money:
            acting.append(position)
        elif plan is not None and plan.final is not None:
            _trail(position, plan.final, writes)
    if not acting:
        return writes
    await store.lock_wallets_sol([p.wallet_address for p in acting])
    for position in await store.lock_positions(tick.token_address, [p.id for p in acting]):
        plan = _plan(position, texts[position.agent_id], tick.price_usd, sol_usd, now, fees)
        if plan is not None:
            _trade(position, plan, now, writes)
    return writes


def _trail_quiet(
    trails: list[positions_db.TrailRow],
    texts: dict[UUID, str | None],
    price: Decimal,
    now: datetime,
    writes: _Writes,
) -> list[UUID]:
    """Queue the trails of the positions `price` (SOL/token) leaves quiet; the others' ids."""
    price_q = to_price(price)
    bands: dict[int, QuietBand] = {}
    loud: list[UUID] = []
    for row in trails:
        if row.agent_id not in texts:
            continue  # the agent was deleted since the read (its positions go with it)
        cfg = _config(texts[row.agent_id], row.id, row.agent_id)
        if cfg is None:
            continue
        band = bands.get(id(cfg))
        if band is None:
            band = bands[id(cfg)] = quiet_band(cfg)
        if not is_quiet(row, price, now, band):
            loud.append(row.id)
            continue
        peak, low = quiet_trail(row, price_q, band)
        if peak != row.peak_price or low != row.lowest_price:
            sl = row.current_stop_loss_percentage
            writes.trails.append(positions_db.TrailUpdate(row.id, peak, sl, low))
    return loud


def _report(closed: list[positions_db.ClosedPosition]) -> dict[str, int]:
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


def _config(text: str | None, position_id: UUID, agent_id: UUID) -> AgentTradingConfig | None:
    try:
        return config_of_text(text)
    except InvalidConfig as exc:
        log.warning(
            "exits_skipped_invalid_config",
            position_id=str(position_id),
            agent_id=str(agent_id),
            error=str(exc),
        )
        return None


def _plan(
    position: positions_db.OpenPosition,
    config_text: str | None,
    token_usd: Decimal,
    sol_usd: Decimal,
    now: datetime,
    fees: Fees,
) -> TickPlan | None:
    cfg = _config(config_text, position.id, position.agent_id)
    if cfg is None:
        return None
    return plan_tick(
        position.state,
        token_usd=token_usd,
        sol_usd=sol_usd,
        now=now,
        cfg=cfg,
        sol_balance=position.sol_balance,
        fees=fees,
    )


def _trail(position: positions_db.OpenPosition, final: PositionState, writes: _Writes) -> None:
    """Queue the monotone part of a tick that did not trade: peak, stop, low."""
    state = position.state
    if (final.peak_price, final.current_stop_loss_percentage, final.lowest_price) == (
        state.peak_price,
        state.current_stop_loss_percentage,
        state.lowest_price,
    ):
        return
    writes.trails.append(
        positions_db.TrailUpdate(
            position.id,
            final.peak_price,
            final.current_stop_loss_percentage,
            final.lowest_price if final.lowest_price is not None else state.purchase_price,
        )
    )


def _trade(
    position: positions_db.OpenPosition,
    plan: TickPlan,
    now: datetime,
    writes: _Writes,
) -> None:
    p = position
    holding = trades_db.Holding(
        p.agent_id, p.wallet_address, p.token_address, p.token_symbol, p.signal_id, p.id
    )
    tp_tx: uuid.UUID | None = None
    for sale in plan.sales:
        tx_id = uuid.uuid4()
        swap, deltas = trades_db.sale_rows(
            tx_id, holding, sale.fill, now, is_take_profit=sale.is_take_profit
        )
        writes.swaps.append(swap)
        writes.deltas.extend(deltas)
        if sale.close_reason is not None and sale.pnl is not None:
            writes.closed.append(positions_db.ClosedPosition(p, sale.pnl, tx_id, sale.close_reason))
        elif sale.is_take_profit:
            tp_tx = tx_id
    if plan.final is None:
        return
    dca_tx: uuid.UUID | None = None
    if plan.dca is not None:
        dca_tx = uuid.uuid4()
        swap, deltas = trades_db.buy_rows(dca_tx, holding, plan.dca, now, is_dca=True)
        writes.swaps.append(swap)
        writes.deltas.extend(deltas)
    writes.updates.append(positions_db.PositionWrite(p.id, plan.final, dca_tx, tp_tx))
