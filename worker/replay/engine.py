"""A replay: recorded signals and ticks, in time order, through the live handlers, in memory.

Each run starts from the same point (the agents, their SOL at the start, the prices known
then) in a fresh `MemoryStore`, with every agent's config history as stored (each version
in force from its time, as live: `worker.domain.config_history`) or a variant's (the
overrides merged into every version, objects merged and arrays replaced, as the worker
merges a stored config over the defaults), and feeds the events one by one:

- in time order (each at its decision time: the `at` the live worker stored, else a
  signal's `created_at`, a tick's `ts`), ticks first at equal
  times, then in the order recorded: the order the live worker follows when the feeds
  stamp their messages with their publishing time (it takes ticks before signals by Kafka
  record time, `worker.pipeline.ordering`);
- each decided at that time (its `at` is set to it), as live: stale-trade and DCA-cooldown
  clocks and the times written on rows run on the recorded decision times;
- position sizes and the rows' ids derived from the signals' natural keys and the ticks
  (`worker.domain.sizing`, `worker.domain.ids`), as live.

So the stored config, replayed, makes the live trades again; a variant shows what that
config would have done with the same signals and prices.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any
from uuid import UUID

from worker.domain.config import deep_merge
from worker.domain.config_reading import OversizedConfig, StoredConfigText, decode_json, read_config
from worker.domain.ledger import BalanceDelta
from worker.domain.models import SOL_MINT, SOL_SYMBOL, PriceTick, Signal
from worker.domain.money import MATH_CONTEXT
from worker.domain.order import RANK_COMMAND, RANK_SIGNAL, tick_rank
from worker.domain.records import AgentSetup, HandAction, ReplayHistory
from worker.domain.results import AgentResult, Close, Holding, prices_in_sol, summarize
from worker.errors import UsageError
from worker.handlers.commands import sell_by_hand
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import handle_signals
from worker.handlers.ticks import handle_prices
from worker.replay.memory import MemoryStore
from worker.settings import Settings

CURVE_POINTS = 400  # at most this many points per balance curve


@dataclass(frozen=True, slots=True)
class Event:
    """A signal or a tick at its time; `seq` keeps the recorded order of equal times."""

    at: datetime
    seq: int
    signal: Signal | None = None
    tick: PriceTick | None = None
    action: HandAction | None = None

    @property
    def key(self) -> tuple[datetime, int, str, int]:
        """Sort key: the live worker's order (`worker.pipeline.timeline`): decision time,
        then SOL/USD ticks, other ticks by token, signals, commands (what was done by
        hand); then the recorded order."""
        if self.action is not None:
            return (self.at, RANK_COMMAND, "", self.seq)
        if self.tick is None:
            return (self.at, RANK_SIGNAL, "", self.seq)
        token = self.tick.token_address
        return (self.at, tick_rank(token), token, self.seq)


def events_of(
    signals: Iterable[Signal],
    ticks: Iterable[PriceTick],
    actions: Iterable[HandAction] = (),
) -> list[Event]:
    """Signals, ticks and what was done by hand merged into replay order, each with its
    decision time set (`at`)."""
    events = [
        Event(s.decision_time, i, signal=replace(s, at=s.decision_time))
        for i, s in enumerate(signals)
    ]
    events += [
        Event(t.decision_time, i, tick=replace(t, at=t.decision_time)) for i, t in enumerate(ticks)
    ]
    events += [Event(a.at, i, action=a) for i, a in enumerate(actions)]
    events.sort(key=lambda e: e.key)
    return events


@dataclass(frozen=True, slots=True)
class Start:
    """Where every run starts: the agents (their stored configs), SOL, known prices."""

    agents: Sequence[AgentSetup]
    sol: dict[UUID, Decimal]
    prices: dict[str, tuple[Decimal, datetime]]


@dataclass(frozen=True, slots=True)
class Variant:
    """A config to replay: `overrides` merged over each agent's stored config (None: the
    stored config itself)."""

    label: str
    overrides: dict[str, Any] | None = None

    def config_text(self, stored: StoredConfigText) -> StoredConfigText:
        """The agent's config under this variant, as stored JSON text (an oversized stored
        config stays what it is: it was never read, so nothing is merged into it)."""
        if self.overrides is None or isinstance(stored, OversizedConfig):
            return stored
        base = decode_json(stored) if stored is not None else {}
        merged = deep_merge(base if isinstance(base, dict) else {}, self.overrides)
        return json.dumps(merged, default=str)

    def setup(self, agent: AgentSetup) -> AgentSetup:
        """The agent under this variant: the overrides merged over each version of its
        config history (and over its stored config)."""
        if self.overrides is None:
            return agent
        return replace(
            agent,
            config_text=self.config_text(agent.config_text),
            versions=tuple(replace(v, text=self.config_text(v.text)) for v in agent.versions),
        )


@dataclass
class Run:
    """What one variant did: the store at the end, and each agent's balance curve."""

    variant: Variant
    store: MemoryStore
    events: int
    seconds: float
    curves: dict[UUID, list[tuple[datetime, Decimal]]] = field(default_factory=dict)
    realised: dict[UUID, Decimal] = field(default_factory=dict)  # so far, by agent
    closes_counted: int = 0  # of store.closed, into `realised`
    starting_sol: dict[UUID, Decimal] = field(default_factory=dict)  # the run's start

    def results(self) -> list[AgentResult]:
        """The report's figures for every agent, as `report` computes them live."""
        store = self.store
        prices_sol = prices_in_sol({t: p for t, (p, _) in store.prices.items()}, SOL_MINT)
        statuses: dict[UUID, dict[str, int]] = {}
        for (_, agent_id), row in store.executions.items():
            counts = statuses.setdefault(agent_id, {})
            counts[row.status.value] = counts.get(row.status.value, 0) + 1
        closes: dict[UUID, list[Close]] = {}
        for closed, at in store.closed:
            pnl = closed.pnl
            held = (at - closed.position.state.created_at).total_seconds()
            closes.setdefault(closed.position.agent_id, []).append(
                Close(pnl.profit_loss_sol, pnl.returned_sol - pnl.profit_loss_sol, held, at)
            )
        holdings: dict[UUID, list[Holding]] = {}
        for p in store.positions.values():
            s = p.state
            remaining = s.remaining_amount if s.remaining_amount is not None else s.purchase_amount
            holdings.setdefault(p.row.agent_id, []).append(
                Holding(
                    p.row.token_address,
                    remaining,
                    s.total_invested_sol,
                    s.take_profit_proceeds_sol,
                )
            )
        return [
            summarize(
                agent.agent_id,
                agent.name,
                executions=statuses.get(agent.agent_id, {}),
                closes=closes.get(agent.agent_id, []),
                holdings=holdings.get(agent.agent_id, []),
                prices_sol=prices_sol,
                balance_sol=store.sol_balance(agent.agent_id),
                starting_sol=self.starting_sol.get(agent.agent_id, Decimal(0)),
            )
            for agent in store.agents.values()
        ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What is kept of a run once it is over: its figures, curves and counts; not its store
    (a run's store holds every position and execution of the replay)."""

    variant: Variant
    results: list[AgentResult]
    curves: dict[UUID, list[tuple[datetime, Decimal]]]
    events: int
    executions: int
    seconds: float


def outcome_of(run: Run) -> Outcome:
    """The figures of a finished run, without its store."""
    return Outcome(run.variant, run.results(), run.curves, run.events,
                   len(run.store.executions), run.seconds)  # fmt: skip


async def replay_each(
    start: Start,
    events: Sequence[Event],
    variants: Iterable[Variant],
    settings: Settings,
    *,
    progress: Callable[[Variant], Callable[[int], None] | None] | None = None,
) -> AsyncIterator[Outcome]:
    """Replay each variant in turn (taken from `variants` as it goes), yielding its
    outcome: one run's store is alive at a time, so memory is bounded by one run plus the
    outcomes, whatever the number of variants."""
    for variant in variants:
        run = await replay(start, events, variant, settings,
                           progress=progress(variant) if progress else None)  # fmt: skip
        outcome = outcome_of(run)
        del run  # before the next run starts, and while the caller holds the outcome
        yield outcome


@dataclass(frozen=True, slots=True)
class Record:
    """What a replay runs: where it starts (`begin`), its events in order, and how many
    positions were open at the start (not carried: a replay starts flat)."""

    start: Start
    events: list[Event]
    begin: datetime
    open_at: int


# Configs per replay (the stored one, each --config, each point of the --vary grid): each
# is a whole run over the record; a grid beyond it is refused before anything runs.
MAX_VARIANTS = 64


def record_of(agents: Sequence[AgentSetup], history: ReplayHistory | None) -> Record | None:
    """The agents' history (`worker.db.replay.read_history`) in replay order, starting from
    the state it read; None when there is nothing to replay."""
    if history is None:
        return None
    start = Start(agents, history.sol, history.prices)
    events = events_of(history.signals, history.ticks, history.actions)
    return Record(start, events, history.begin, history.open_at)


def check_variant(variant: Variant, start: Start) -> list[str]:
    """`UsageError` when the variant makes a valid version of an agent's config invalid;
    the names of the agents with a stored version invalid already (they replay as the
    worker ran them: no buys while it was in force, their positions exited by the rules
    they were opened with).

    Keys no config has are the caller's to refuse (`replay --allow-unknown-keys`)."""
    invalid = []
    for agent in start.agents:
        texts = [v.text for v in agent.history()]
        if any(read_config(text).error is not None for text in texts):
            invalid.append(agent.name)
            continue
        for text in texts:
            reading = read_config(variant.config_text(text))
            if reading.error is not None:
                raise UsageError(f"{variant.label}: for agent {agent.name!r}: {reading.error}")
    return invalid


async def replay(
    start: Start,
    events: Sequence[Event],
    variant: Variant,
    settings: Settings,
    *,
    progress: Callable[[int], None] | None = None,
) -> Run:
    """Run `events` from `start` under `variant`; writes nothing anywhere but memory."""
    store = MemoryStore()
    for agent in start.agents:
        store.add_agent(variant.setup(agent), start.sol.get(agent.agent_id, Decimal(0)))
    store.prices.update(start.prices)
    configs = ConfigTexts()
    run = Run(variant, store, len(events), 0.0, starting_sol=dict(start.sol))
    started = time.perf_counter()
    with localcontext(MATH_CONTEXT):
        await _feed(store, events, configs, settings, run, start, progress)
    run.seconds = time.perf_counter() - started
    return run


async def _feed(
    store: MemoryStore,
    events: Sequence[Event],
    configs: ConfigTexts,
    settings: Settings,
    run: Run,
    start: Start,
    progress: Callable[[int], None] | None,
) -> None:
    every = max(1, len(events) // CURVE_POINTS)
    for n, event in enumerate(events, start=1):
        if event.tick is not None:
            await handle_prices(store, [event.tick], configs=configs, trading=settings.trading)
        elif event.signal is not None:
            await handle_signals(store, [event.signal], trading=settings.trading)
        elif event.action is not None:
            await _by_hand(store, event.action, settings, run)
        if n % every == 0 or n == len(events):
            _sample(run, event.at, start)
        if progress is not None and n % 1000 == 0:
            progress(n)


async def _by_hand(store: MemoryStore, action: HandAction, settings: Settings, run: Run) -> None:
    """A transfer (a withdrawal more than the run's balance is left out, as live refuses
    it) or a manual close of the agent's positions in the tokens the live one closed (those
    the run holds), as `close_positions` made it."""
    agent = store.agents.get(action.agent_id)
    if agent is None or agent.wallet_address is None:
        return
    wallet = agent.wallet_address
    if action.amount is not None:
        balance = store.sol_balance(action.agent_id) or Decimal(0)
        if action.amount < 0 and balance < -action.amount:
            return
        delta = BalanceDelta(action.agent_id, wallet, SOL_MINT, SOL_SYMBOL, action.amount)
        await store.apply_balance_deltas([delta])
        run.realised[action.agent_id] = (
            run.realised.get(action.agent_id, Decimal(0)) + action.amount
        )
        return
    held = [
        (p.id, p.token_address)
        for p in store.open_positions_of(action.agent_id)
        if p.token_address in action.tokens
    ]
    if held and action.user_id is not None:
        await sell_by_hand(store, held, wallet, user_id=action.user_id, key=action.key,
                           at=action.at, fees=settings.trading.fees)  # fmt: skip


def _sample(run: Run, at: datetime, start: Start) -> None:
    """Each agent's SOL plus what its open positions cost (less what they returned): every
    SOL move is a buy or a sale of a position, so that is its SOL at the start plus the
    realised P/L of the positions closed so far."""
    store = run.store
    realised = run.realised
    for closed, _ in store.closed[run.closes_counted :]:
        agent_id = closed.position.agent_id
        realised[agent_id] = realised.get(agent_id, Decimal(0)) + closed.pnl.profit_loss_sol
    run.closes_counted = len(store.closed)
    for agent in start.agents:
        value = start.sol.get(agent.agent_id, Decimal(0)) + realised.get(agent.agent_id, Decimal(0))
        curve = run.curves.setdefault(agent.agent_id, [])
        if not curve or curve[-1][1] != value:
            curve.append((at, value))
