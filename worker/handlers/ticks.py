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
GREATEST/LEAST, which commute, so quiet positions need no lock. What the ticks do to the
positions is planned in memory, purely, by `worker.domain.planning`; this module reads
and writes around it.

Each tick is decided at its decision time (`PriceTick.decision_time`: the `at` the pipeline
set, else its `ts`), never at the moment of processing: stale holds, DCA cooldowns and
every time written on a row (transactions, positions, closes, the history's `event_at`)
come from the tick, so the rows are the same whichever chunk a tick comes in and whenever
it is processed. Sales and DCA buys get ids derived from the tick
(`worker.domain.ids.tick_transaction_id`).

Only ticks of a position's own token evaluate it: a SOL/USD tick moves no position by
itself (as in the source, where SOL/USD is only read when a token's price arrives); it
changes the SOL/USD that the chunk's later ticks use.

Which rules exit a position: the agent's config in force at the tick's time
(`agent_config_history`) while it is valid (an edit applies to open positions from its
time on, as the source applied it from its moment); when that config is invalid, the exit
rules the position was opened with (`exit_rule_sets`), else the defaults. An invalid config
stops an agent's buys, never its positions' stop losses. Whether automation exits a
position at all is the version in force's `automated_trading_simulation` too. A chunk
within which a version of one of its agents starts is run in parts, cut at those times
(`_parts`): the same result as one tick at a time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import structlog

from worker.domain.columns import misfit
from worker.domain.config import AgentTradingConfig
from worker.domain.config_history import ConfigVersion, boundaries, in_force
from worker.domain.config_reading import StoredConfigText
from worker.domain.exit_rules import EARLIER_VERSIONS_LIMIT, exit_config
from worker.domain.fills import token_price_sol
from worker.domain.models import SOL_MINT, PriceTick
from worker.domain.planning import Step, TickTally, Writes, act_loud, trail_quiet
from worker.domain.records import ClosedPosition, PriceWrite, TrailRow
from worker.domain.storable import Unstorable
from worker.handlers.config_cache import (
    ConfigProblem,
    ConfigTexts,
    config_of_rules,
    config_of_text,
    problem_of,
)
from worker.ports import PriceStore
from worker.settings import TradingSettings

log = structlog.get_logger(__name__)


@dataclass(slots=True, kw_only=True)
class TickOutcome(TickTally):
    """What one tick did, for logs and metrics: what the planning counted, the tick, whether
    it was newer than the stored price, and the config problems its chunk met."""

    token: str
    price_usd: Decimal
    is_newer: bool = True  # False: not newer than the stored price, so it did nothing
    config_problems: list[ConfigProblem] = field(default_factory=list)


async def handle_prices(
    store: PriceStore,
    ticks: Sequence[PriceTick],
    *,
    configs: ConfigTexts,
    trading: TradingSettings,
) -> list[TickOutcome]:
    """Store the chunk's newer prices and run the exits its ticks trigger, tick by tick in
    order, each at its own decision time; what each tick did, in the order of `ticks`.

    `configs` holds agents' configs and exit rule sets across chunks; those not held at
    the version the positions' read shows are read (and held) first."""
    outcomes = [TickOutcome(token=t.token_address, price_usd=t.price_usd) for t in ticks]
    steps = await _store_prices(store, ticks, outcomes)
    if steps:
        times = [t.decision_time for t in ticks]
        chunk = _Chunk(configs, trading, outcomes, times)
        await _exits(store, steps, chunk)
    return outcomes


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What the exits of a chunk's steps share: the caches, the settings, the outcomes and
    each tick's decision time (by index)."""

    configs: ConfigTexts
    trading: TradingSettings
    outcomes: list[TickOutcome]
    times: list[datetime]


async def _exits(store: PriceStore, steps: list[Step], chunk: _Chunk) -> None:
    """The exits of `steps` (ticks in order), with the settings of each position's agent in
    force at each tick's time: when a version starts among them, the steps are run in parts
    that one version each decides (each part reading what the ones before it wrote)."""
    trails = await store.trail_rows(sorted({s.token for s in steps}))
    if not trails:
        return
    times = [chunk.times[s.index] for s in steps]
    versions = await store.config_versions(
        sorted({r.agent_id for r in trails}), min(times), max(times),
        chunk.trading.max_config_bytes,
    )  # fmt: skip
    parts = _parts(steps, times, versions)
    if len(parts) > 1:
        for part in parts:
            await _exits(store, part, chunk)
        return
    settings = {agent_id: in_force(held, times[0]) for agent_id, held in versions.items()}
    # Automated trading off (for the simulation wallet) at that time: not exited, not trailed.
    trails = [
        r for r in trails
        if (v := settings.get(r.agent_id)) is not None and v.automated_trading_simulation
    ]  # fmt: skip
    if not trails:
        return
    cfgs, problems = await _exit_configs(store, chunk.configs, trails, settings,
                                         chunk.trading.max_config_bytes)  # fmt: skip
    chunk.outcomes[steps[0].index].config_problems.extend(problems)
    writes = Writes()
    outcomes = chunk.outcomes
    loud = trail_quiet(steps, trails, cfgs, writes, outcomes)
    if loud:
        await store.lock_wallets_sol([row.wallet_address for row in loud.values()])
        held = await store.lock_positions(sorted(loud))
        act_loud(steps, held, cfgs, fees=chunk.trading.fees, writes=writes, tallies=outcomes)
    await store.insert_swaps(writes.swaps)
    await store.apply_balance_deltas(writes.deltas)
    await store.update_positions(writes.updates)
    await store.update_trails(writes.trails)
    await store.close_positions(writes.closed)
    _log_closes(writes.closed)


def _parts(
    steps: list[Step], times: list[datetime], versions: dict[UUID, list[ConfigVersion]]
) -> list[list[Step]]:
    """`steps` cut, in their order, into runs within which no version starts (one run when
    none starts among their times)."""
    cuts = boundaries([v for held in versions.values() for v in held], min(times), max(times))
    if not cuts:
        return [steps]
    parts: list[list[Step]] = []
    last = -1
    for step, at in zip(steps, times, strict=True):
        period = bisect_right(cuts, at)
        if period != last:
            parts.append([])
            last = period
        parts[-1].append(step)
    return parts


async def _store_prices(
    store: PriceStore, ticks: Sequence[PriceTick], outcomes: list[TickOutcome]
) -> list[Step]:
    """Mark the ticks not newer than what is stored or came before them; store the latest
    price of each token; the ticks that move positions, with the SOL/USD of their moment."""
    stored = await store.latest_prices(sorted({t.token_address for t in ticks} | {SOL_MINT}))
    latest = dict(stored)
    newer: list[int] = []
    for i, tick in enumerate(ticks):
        prior = latest.get(tick.token_address)
        if prior is not None and prior[1] >= tick.ts:
            outcomes[i].is_newer = False
            continue
        latest[tick.token_address] = (tick.price_usd, tick.ts)
        newer.append(i)
    if not newer:
        return []
    tokens = sorted({ticks[i].token_address for i in newer})
    written = await store.upsert_prices([PriceWrite(t, *latest[t]) for t in tokens])
    sol = stored.get(SOL_MINT)
    sol_usd = sol[0] if sol is not None else None
    steps: list[Step] = []
    history: list[PriceWrite] = []
    for i in newer:
        tick = ticks[i]
        if tick.token_address not in written:
            # Another writer stored a newer price meanwhile (two owners for a moment
            # during a rebalance): as if this tick had come after it.
            outcomes[i].is_newer = False
            continue
        at = tick.decision_time
        history.append(PriceWrite(tick.token_address, tick.price_usd, tick.ts, at))
        if tick.token_address == SOL_MINT:
            sol_usd = tick.price_usd
        elif sol_usd is None:
            log.warning("exits_skipped_no_sol_price", token=tick.token_address)
        else:
            price_sol = token_price_sol(tick.price_usd, sol_usd)
            # A price in SOL no numeric(30,18) column holds (a tiny SOL/USD, a huge token
            # price): the USD price is kept, but no position can be trailed or sold at it.
            problem = misfit("agent_positions", lowest_price=price_sol)
            if problem is not None:
                outcomes[i].unstorable.append(Unstorable("exits", tick.token_address, problem))
            else:
                steps.append(
                    Step(i, tick.token_address, tick.price_usd, sol_usd, price_sol, at, tick.ts)
                )
    await store.record_ticks(history)
    return steps


async def _exit_configs(
    store: PriceStore,
    configs: ConfigTexts,
    trails: list[TrailRow],
    settings: dict[UUID, ConfigVersion],
    max_config_bytes: int,
) -> tuple[dict[UUID, AgentTradingConfig], list[ConfigProblem]]:
    """The config that exits each position of `trails`, by position id: its agent's config
    in force (`settings`), or (when that is invalid) the rules it was opened with; and the
    agents' config problems. A config over `max_config_bytes` is invalid like any other
    (its positions keep their rules)."""
    texts = await _config_texts(store, configs, {r.agent_id: settings[r.agent_id] for r in trails},
                                max_config_bytes)  # fmt: skip
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
    openings: dict[UUID, AgentTradingConfig | None] = {}
    for row in trails:
        if row.agent_id in invalid:
            # None: no rule set stored (or found), or one that no longer validates.
            rule_id = row.exit_rules_id
            text = (read.get(rule_id) or configs.rules_text(rule_id)) if rule_id else None
            openings[row.id] = None if text is None else config_of_rules(text).config
    # Agents with a position left without rules; one without history has no earlier version.
    unruled = {
        r.agent_id: version_id
        for r in trails
        if r.id in openings
        and openings[r.id] is None
        and (version_id := settings[r.agent_id].id) is not None
    }
    last_valid = await _last_valid_configs(store, configs, unruled, max_config_bytes)
    cfgs: dict[UUID, AgentTradingConfig] = {}
    for row in trails:
        cfgs[row.id], _ = exit_config(
            readings[row.agent_id].config, openings.get(row.id), last_valid.get(row.agent_id)
        )
    return cfgs, problems


async def _last_valid_configs(
    store: PriceStore, configs: ConfigTexts, in_force: dict[UUID, int], max_config_bytes: int
) -> dict[UUID, AgentTradingConfig]:
    """By agent id, the last valid config before the version in force (`in_force`, by agent
    id: an invalid one) among the `EARLIER_VERSIONS_LIMIT` before it; none found: absent
    (`worker.domain.exit_rules`)."""
    if not in_force:
        return {}
    agent_of = {version_id: agent_id for agent_id, version_id in in_force.items()}
    # Which earlier version is the last valid one is looked for once per version in force
    # (`ConfigTexts.last_valid`): then only its text is read, not up to the
    # EARLIER_VERSIONS_LIMIT invalid ones before it at every chunk.
    valid_of = {v: configs.last_valid[v] for v in agent_of if v in configs.last_valid}
    unknown = sorted(v for v in agent_of if v not in valid_of)
    earlier = await store.earlier_versions(unknown, EARLIER_VERSIONS_LIMIT) if unknown else {}
    texts = await _held_or_read(
        store, configs, [e for ids in earlier.values() for e in ids], max_config_bytes
    )
    found_now: dict[int, int | None] = {}
    for version_id in unknown:
        ids = [e for e in earlier.get(version_id, []) if e in texts]
        # The newest valid one (`ids` newest first), as `last_valid_config` chooses.
        found_now[version_id] = next(
            (e for e in ids if config_of_text(texts[e]).config is not None), None
        )
    configs.remember_last_valid(found_now)
    valid_of.update(found_now)
    known = [e for e in valid_of.values() if e is not None and e not in texts]
    texts.update(await _held_or_read(store, configs, known, max_config_bytes))
    found: dict[UUID, AgentTradingConfig] = {}
    for version_id, valid_id in valid_of.items():
        if valid_id is not None and valid_id in texts:
            cfg = config_of_text(texts[valid_id]).config
            if cfg is not None:
                found[agent_of[version_id]] = cfg
    return found


async def _held_or_read(
    store: PriceStore, configs: ConfigTexts, version_ids: list[int], max_config_bytes: int
) -> dict[int, StoredConfigText]:
    """The texts of `version_ids`: held ones, the others read (and held from now on)."""
    if not version_ids:
        return {}
    missing = set(configs.missing(version_ids))
    # Taken before the update, which may drop what was held (a bounded cache).
    texts = {e: configs.text(e) for e in version_ids if e not in missing}
    if missing:
        read = await store.version_texts(sorted(missing), max_config_bytes)
        configs.update(read)
        texts.update(read)
    return texts


async def _config_texts(
    store: PriceStore,
    configs: ConfigTexts,
    settings: dict[UUID, ConfigVersion],
    max_config_bytes: int,
) -> dict[UUID, StoredConfigText]:
    """The config text of each agent's version in `settings`: held ones from `configs`, the
    others read (and held from now on); an agent without history carries its own."""
    wanted = [v.id for v in settings.values() if v.id is not None]
    missing = configs.missing(wanted)
    # Used from here, not from the cache, which may drop what it was just given.
    read = await store.version_texts(missing, max_config_bytes) if missing else {}
    configs.update(read)
    return {
        agent_id: v.text if v.id is None else read[v.id] if v.id in read else configs.text(v.id)
        for agent_id, v in settings.items()
    }


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
