"""What a chunk of price ticks does: the latest price per token, then the exits of positions.

Runs inside the consumer's transaction (with the partitions' offsets), through a
`worker.ports.PriceStore` bound to it, so a chunk's effects are all written or none.

Set-based, and still tick by tick: the chunk's reads and writes are a fixed number of
statements whatever its size (the stored prices, the new ones, the positions of every
token the chunk moves, the whole of those a tick may act on, then one statement per kind
of write), while the rules run in memory for every tick in offset order, each seeing what
the ticks before it did (peaks, stops, sales, DCA buys, the wallet's SOL). So the result
is the one of taking the ticks one at a time, and does not depend on where a fetch or a
chunk happens to end: a replay of the same records gives the same trades. (Keeping only
the latest tick per token would be cheaper, but a fall and a rebound in one chunk would
then never stop out, and whether they shared a chunk depends on fetch timing.)

A tick not newer than the stored price (by `ts`; a tick without `ts` takes its record
timestamp), or than an earlier tick of the chunk, changes nothing at all, so a redelivered
or replayed tick can never sell twice. Every other tick is also appended to the price
history (`token_price_history`), which `report` and `replay` read.

Most positions, most ticks, are quiet: a tick can neither trade them nor move their stop
(`worker.domain.ticks.is_quiet`, from a few columns read for every open position of the
token), and only their peak and low trail. The others (loud at some tick of the chunk)
are read whole, after their wallets' SOL rows are locked (in address order, as every
writer does) and the positions themselves (FOR UPDATE). Trails are written with
GREATEST/LEAST, which commute, so quiet positions need no lock.

Only ticks of a position's own token evaluate it: a SOL/USD tick moves no position by
itself (as in the source, where SOL/USD is only read when a token's price arrives); it
changes the SOL/USD that the chunk's later ticks use.

Which rules exit a position: the agent's current config while it is valid (an edit applies
to open positions, as in the source); when the stored config is invalid, the exit rules the
position was opened with (`exit_rule_sets`), else the defaults. An invalid config stops an
agent's buys, never its positions' stop losses.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, localcontext
from uuid import UUID

import structlog

from worker.config_cache import (
    ConfigProblem,
    ConfigTexts,
    config_of_rules,
    config_of_text,
    problem_of,
)
from worker.domain.columns import misfit
from worker.domain.config import AgentTradingConfig, StoredConfigText
from worker.domain.fills import token_price_sol
from worker.domain.ledger import BalanceDelta, Holding, SwapRow, buy_rows, sale_rows
from worker.domain.models import SOL_MINT, PositionState
from worker.domain.money import MATH_CONTEXT, to_price
from worker.domain.records import (
    ClosedPosition,
    OpenPosition,
    PositionWrite,
    PriceWrite,
    TrailRow,
    TrailUpdate,
)
from worker.domain.storable import Unstorable, trade_misfit
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


@dataclass(frozen=True, slots=True)
class Tick:
    """A price tick as the handler takes it: the message and its record's timestamp."""

    message: PriceTickV1
    received_at: datetime

    @property
    def token(self) -> str:
        """The token the tick prices."""
        return self.message.token_address

    @property
    def ts(self) -> datetime:
        """When the price was observed: the message's `ts`, else the record's timestamp."""
        return self.message.ts or self.received_at


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
    # Writes left out because a value would not fit its column (each logged and counted).
    unstorable: list[Unstorable] = field(default_factory=list)

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


@dataclass(frozen=True, slots=True)
class _Step:
    """A tick that moves positions: its index in the chunk and the prices it is read at."""

    index: int
    token: str
    token_usd: Decimal
    sol_usd: Decimal
    price_sol: Decimal  # SOL per token, 18 places


async def handle_prices(
    store: PriceStore,
    ticks: Sequence[Tick],
    *,
    configs: ConfigTexts,
    settings: Settings,
    now: datetime,
) -> list[TickOutcome]:
    """Store the chunk's newer prices and run the exits its ticks trigger, tick by tick in
    order; what each tick did, in the order of `ticks`.

    `configs` holds agents' configs and exit rule sets across chunks; those not held at
    the version the positions' read shows are read (and held) first."""
    outcomes = [TickOutcome(t.token, t.message.price_usd) for t in ticks]
    steps = await _store_prices(store, ticks, outcomes)
    if not steps:
        return outcomes
    trails = await store.trail_rows(sorted({s.token for s in steps}))
    if not trails:
        return outcomes
    cfgs, outcomes[steps[0].index].config_problems = await _exit_configs(
        store, configs, trails, settings.agent_config_max_bytes
    )
    by_token: dict[str, list[TrailRow]] = {}
    for row in trails:  # in any order: quiet trails commute; loud ones are read in id order
        if row.id in cfgs:  # else its agent was deleted since the read (the positions too)
            by_token.setdefault(row.token_address, []).append(row)
    writes = _Writes()
    loud = _trail_quiet(steps, by_token, cfgs, now, writes, outcomes)
    if loud:
        fees = Fees(settings.sim_network_fee_sol, settings.sim_protocol_fee_bps)
        await store.lock_wallets_sol([row.wallet_address for row in loud.values()])
        held = await store.lock_positions(sorted(loud))
        _act(steps, held, cfgs, now, fees, writes, outcomes)
    await store.insert_swaps(writes.swaps)
    await store.apply_balance_deltas(writes.deltas)
    await store.update_positions(writes.updates, now)
    await store.update_trails(writes.trails, now)
    await store.close_positions(writes.closed, now)
    _log_closes(writes.closed)
    return outcomes


async def _store_prices(
    store: PriceStore, ticks: Sequence[Tick], outcomes: list[TickOutcome]
) -> list[_Step]:
    """Mark the ticks not newer than what is stored or came before them; store the latest
    price of each token; the ticks that move positions, with the SOL/USD of their moment."""
    stored = await store.latest_prices(sorted({t.token for t in ticks} | {SOL_MINT}))
    latest = dict(stored)
    newer: list[int] = []
    for i, tick in enumerate(ticks):
        prior = latest.get(tick.token)
        if prior is not None and prior[1] >= tick.ts:
            outcomes[i].is_newer = False
            continue
        latest[tick.token] = (tick.message.price_usd, tick.ts)
        newer.append(i)
    if not newer:
        return []
    tokens = sorted({ticks[i].token for i in newer})
    written = await store.upsert_prices([PriceWrite(t, *latest[t]) for t in tokens])
    sol = stored.get(SOL_MINT)
    sol_usd = sol[0] if sol is not None else None
    steps: list[_Step] = []
    history: list[PriceWrite] = []
    for i in newer:
        tick = ticks[i]
        if tick.token not in written:
            # Another writer stored a newer price meanwhile (two owners for a moment
            # during a rebalance): as if this tick had come after it.
            outcomes[i].is_newer = False
            continue
        history.append(PriceWrite(tick.token, tick.message.price_usd, tick.ts))
        if tick.token == SOL_MINT:
            sol_usd = tick.message.price_usd
        elif sol_usd is None:
            log.warning("exits_skipped_no_sol_price", token=tick.token)
        else:
            price_sol = token_price_sol(tick.message.price_usd, sol_usd)
            # A price in SOL no numeric(30,18) column holds (a tiny SOL/USD, a huge token
            # price): the USD price is kept, but no position can be trailed or sold at it.
            problem = misfit("agent_positions", lowest_price=price_sol)
            if problem is not None:
                outcomes[i].unstorable.append(Unstorable("exits", tick.token, problem))
            else:
                steps.append(_Step(i, tick.token, tick.message.price_usd, sol_usd, price_sol))
    await store.record_ticks(history)
    return steps


async def _exit_configs(
    store: PriceStore,
    configs: ConfigTexts,
    trails: list[TrailRow],
    max_config_bytes: int,
) -> tuple[dict[UUID, AgentTradingConfig], list[ConfigProblem]]:
    """The config that exits each position of `trails`, by position id: its agent's current
    config, or (when that is invalid) the rules it was opened with; and the agents' config
    problems. Agents deleted since the read are left out (their positions go with them).
    A config over `max_config_bytes` is invalid like any other (its positions keep their
    rules)."""
    texts = await _config_texts(store, configs, trails, max_config_bytes)
    readings = {agent_id: config_of_text(text) for agent_id, text in texts.items()}
    problems = [
        problem
        for agent_id, reading in readings.items()
        if (problem := problem_of(agent_id, reading)) is not None
    ]
    invalid = {agent_id for agent_id, r in readings.items() if r.config is None}
    # The rule sets read now are used from here, not from the cache: a bounded cache may
    # drop what it was just given (then the stored rules, never the defaults, apply).
    read: dict[UUID, str] = {}
    if invalid:
        wanted = [r.exit_rules_id for r in trails if r.agent_id in invalid and r.exit_rules_id]
        missing = configs.missing_rules(wanted)
        if missing:
            read = await store.exit_rules(missing)
            configs.update_rules(read)
    cfgs: dict[UUID, AgentTradingConfig] = {}
    for row in trails:
        current = readings.get(row.agent_id)
        if current is None:
            continue
        if current.config is not None:
            cfgs[row.id] = current.config
            continue
        # A stored rule set that no longer validates (a future code change): the defaults.
        text = read.get(row.exit_rules_id) if row.exit_rules_id else None
        fallback = config_of_rules(text or configs.rules_text(row.exit_rules_id)).config
        cfgs[row.id] = fallback if fallback is not None else _DEFAULT_RULES
    return cfgs, problems


async def _config_texts(
    store: PriceStore, configs: ConfigTexts, trails: list[TrailRow], max_config_bytes: int
) -> dict[UUID, StoredConfigText]:
    """The config text of every agent in `trails`: those held at the row's version from
    `configs`, the others read (and held from now on)."""
    stale = set(configs.stale((row.agent_id, row.config_version) for row in trails))
    texts = {
        row.agent_id: configs.text(row.agent_id) for row in trails if row.agent_id not in stale
    }
    if stale:
        read = await store.agent_configs(list(stale), max_config_bytes)
        configs.update(read)
        texts.update({agent_id: text for agent_id, (_, text) in read.items()})
    return texts


def _trail_quiet(
    steps: list[_Step],
    by_token: dict[str, list[TrailRow]],
    cfgs: dict[UUID, AgentTradingConfig],
    now: datetime,
    writes: _Writes,
    outcomes: list[TickOutcome],
) -> dict[UUID, TrailRow]:
    """Trail, tick by tick, the positions every tick of the chunk leaves quiet, and queue
    their trails; the others (loud at some tick), by id.

    The hot loop of a busy token (every open position, every tick): one decimal context
    for all of it, and a trailed position's new peak and low kept as a pair, not a copy of
    its row, until a later tick of the chunk needs them."""
    bands: dict[int, QuietBand] = {}
    trailed: dict[UUID, tuple[TrailRow, Decimal | None, Decimal]] = {}  # row, peak, low
    trailed_at: dict[UUID, list[int]] = {}  # the ticks that trailed it, while quiet
    loud: dict[UUID, TrailRow] = {}
    with localcontext(MATH_CONTEXT):
        for step in steps:
            rows = by_token.get(step.token, ())
            outcome = outcomes[step.index]
            outcome.positions = len(rows)
            price = step.price_sol
            price_q = to_price(price)
            for row in rows:
                if row.id in loud:
                    continue
                moved = trailed.get(row.id)
                now_row = row if moved is None else _with_trail(row, moved[1], moved[2])
                cfg = cfgs[row.id]
                band = bands.get(id(cfg))
                if band is None:
                    band = bands[id(cfg)] = quiet_band(cfg)
                if not is_quiet(now_row, price, now, band):
                    # Planned whole from the chunk's first tick on (`_act`), which counts
                    # its trails again.
                    loud[row.id] = row
                    trailed.pop(row.id, None)
                    for index in trailed_at.pop(row.id, ()):
                        outcomes[index].trailed -= 1
                    continue
                peak, low = quiet_trail(now_row, price_q, band)
                if peak != now_row.peak_price or low != now_row.lowest_price:
                    trailed[row.id] = (row, peak, low)
                    trailed_at.setdefault(row.id, []).append(step.index)
                    outcome.trailed += 1
    for row, peak, low in trailed.values():
        writes.trails.append(TrailUpdate(row.id, peak, row.current_stop_loss_percentage, low))
    return loud


def _with_trail(row: TrailRow, peak: Decimal | None, low: Decimal) -> TrailRow:
    return TrailRow(
        row.id,
        row.agent_id,
        row.token_address,
        row.wallet_address,
        row.config_version,
        row.purchase_price,
        row.created_at,
        row.current_stop_loss_percentage,
        peak,
        low,
        row.exit_rules_id,
    )


@dataclass(slots=True)
class _Held:
    """The loud positions while `_act` plans them: each one's state, its wallet's SOL, the
    DCA and take-profit transactions of those that traded, the ids of those closed."""

    state: dict[UUID, PositionState]
    sol: dict[str, Decimal]
    traded: dict[UUID, tuple[list[UUID], list[UUID]]] = field(default_factory=dict)
    closed: set[UUID] = field(default_factory=set)


def _act(
    steps: list[_Step],
    held: list[OpenPosition],
    cfgs: dict[UUID, AgentTradingConfig],
    now: datetime,
    fees: Fees,
    writes: _Writes,
    outcomes: list[TickOutcome],
) -> None:
    """Plan the loud positions (locked and read whole) tick by tick, carrying each one's
    state and its wallet's SOL balance from tick to tick; queue what they did."""
    by_token: dict[str, list[OpenPosition]] = {}
    for position in held:  # in id order, as read
        by_token.setdefault(position.token_address, []).append(position)
    run = _Held({p.id: p.state for p in held}, {p.wallet_address: p.sol_balance for p in held})
    closed_in: dict[str, int] = {}  # positions closed so far, by token
    with localcontext(MATH_CONTEXT):  # once, not once per position and tick
        for step in steps:
            outcomes[step.index].positions -= closed_in.get(step.token, 0)
            for p in by_token.get(step.token, ()):
                if p.id not in run.closed:
                    _act_once(p, step, cfgs[p.id], now, fees, run, writes, outcomes[step.index])
                    if p.id in run.closed:
                        closed_in[step.token] = closed_in.get(step.token, 0) + 1
    for p in held:
        if p.id in run.closed:
            continue
        final = run.state[p.id]
        if p.id in run.traded:
            dca_txs, tp_txs = run.traded[p.id]
            writes.updates.append(PositionWrite(p.id, final, tuple(dca_txs), tuple(tp_txs)))
        elif final != p.state:
            low = final.lowest_price if final.lowest_price is not None else final.purchase_price
            sl = final.current_stop_loss_percentage
            writes.trails.append(TrailUpdate(p.id, final.peak_price, sl, low))


def _act_once(
    p: OpenPosition,
    step: _Step,
    cfg: AgentTradingConfig,
    now: datetime,
    fees: Fees,
    run: _Held,
    writes: _Writes,
    outcome: TickOutcome,
) -> None:
    """One tick's plan for one loud position, applied to `run` and queued in `writes`.

    A plan that would write a value no column holds (a P/L in USD beyond numeric(20,8) at
    an extreme SOL/USD, a wallet's SOL beyond numeric(30,18), ...) is left out whole for
    this position and tick, with its reason in `outcome.unstorable`: the position stays as
    it was, the tick's price and every other position's trades are written."""
    plan = plan_tick(
        run.state[p.id],
        token_usd=step.token_usd,
        sol_usd=step.sol_usd,
        now=now,
        cfg=cfg,
        sol_balance=run.sol[p.wallet_address],
        fees=fees,
    )
    if plan.is_dca_unstorable and plan.dca_skipped_reason is not None:
        outcome.unstorable.append(Unstorable("dca", str(p.id), plan.dca_skipped_reason))
    if not plan.moves_money:
        if plan.final is not None:
            trailed = _trailed(run.state[p.id], plan.final)
            if trailed != run.state[p.id]:
                run.state[p.id] = trailed
                outcome.trailed += 1
        return
    trade = _trade(p, plan, now)
    sol_after = run.sol[p.wallet_address] + trade.sol_change
    problem = trade_misfit(
        trade.swaps,
        state=plan.final,
        exit_pnl=trade.closed.pnl if trade.closed is not None else None,
        sol_balance=sol_after,
    )
    if problem is not None:
        outcome.unstorable.append(Unstorable("trade", str(p.id), problem))
        return
    writes.swaps.extend(trade.swaps)
    writes.deltas.extend(trade.deltas)
    dca_txs, tp_txs = run.traded.setdefault(p.id, ([], []))
    dca_txs.extend(trade.dca_txs)
    tp_txs.extend(trade.tp_txs)
    outcome.partial_sales += len(trade.tp_txs)
    outcome.dca_buys += len(trade.dca_txs)
    if trade.closed is not None:
        writes.closed.append(trade.closed)
        reason = trade.closed.close_reason.value
        outcome.closes[reason] = outcome.closes.get(reason, 0) + 1
    run.sol[p.wallet_address] = sol_after
    if plan.final is None:
        run.closed.add(p.id)
    else:
        run.state[p.id] = plan.final


def _trailed(state: PositionState, final: PositionState) -> PositionState:
    """`state` after a tick that did not trade, as `update_trails` writes it."""
    low = final.lowest_price if final.lowest_price is not None else final.purchase_price
    update = TrailUpdate(UUID(int=0), final.peak_price, final.current_stop_loss_percentage, low)
    sl, peak, low = update.onto(
        state.current_stop_loss_percentage, state.peak_price, state.lowest_price
    )
    return replace(state, current_stop_loss_percentage=sl, peak_price=peak, lowest_price=low)


@dataclass(slots=True)
class _Trade:
    """The rows one position's plan writes at one tick, before they are checked."""

    swaps: list[SwapRow] = field(default_factory=list)
    deltas: list[BalanceDelta] = field(default_factory=list)
    closed: ClosedPosition | None = None
    dca_txs: list[UUID] = field(default_factory=list)
    tp_txs: list[UUID] = field(default_factory=list)
    sol_change: Decimal = Decimal(0)  # of the wallet's SOL balance


def _trade(p: OpenPosition, plan: TickPlan, now: datetime) -> _Trade:
    """The rows of the sales and the DCA buy of `plan`."""
    holding = Holding(
        p.agent_id, p.wallet_address, p.token_address, p.token_symbol, p.signal_id, p.id
    )
    trade = _Trade()
    for sale in plan.sales:
        tx_id = uuid.uuid4()
        swap, deltas = sale_rows(tx_id, holding, sale.fill, now, is_take_profit=sale.is_take_profit)
        trade.swaps.append(swap)
        trade.deltas.extend(deltas)
        trade.sol_change += sale.fill.credit_sol
        if sale.close_reason is not None and sale.pnl is not None:
            trade.closed = ClosedPosition(p, sale.pnl, tx_id, sale.close_reason)
        elif sale.is_take_profit:
            trade.tp_txs.append(tx_id)
    if plan.final is not None and plan.dca is not None:
        dca_tx = uuid.uuid4()
        trade.dca_txs.append(dca_tx)
        swap, deltas = buy_rows(dca_tx, holding, plan.dca, now, is_dca=True)
        trade.swaps.append(swap)
        trade.deltas.extend(deltas)
        trade.sol_change -= plan.dca.debit_sol
    return trade


def _log_closes(closed: list[ClosedPosition]) -> None:
    for c in closed:
        log.info(
            "position_closed",
            position_id=str(c.position.id),
            agent_id=str(c.position.agent_id),
            token=c.position.token_address,
            close_reason=c.close_reason.value,
            profit_loss_sol=str(c.pnl.profit_loss_sol),
        )
