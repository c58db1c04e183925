"""What one signal does to the database: the signal row, one execution per agent, the buys.

`handle_signals` runs inside the caller's transaction (the consumer stores the partitions'
offsets in the same one), through a `worker.ports.SignalStore` bound to it, so a crash at
any moment leaves either all of a signal's rows or none. A redelivered signal finds its
row (unique on user and idempotency key), takes its lock, and decides only for agents
that have no execution yet: nothing is written twice.

Each signal is decided at its decision time (`Signal.decision_time`: the `at` the pipeline
set, else `created_at`; for a redelivery, the one stored by its first delivery), never at
the moment of processing: which agents it is offered to, and the times of the buys'
transactions and positions. The rows' ids and the sizes are derived from the signal's
natural key (user id, idempotency key) and the agent (`worker.domain.ids`,
`worker.domain.sizing.sizing_seed`), not from the serial `trading_signals.id`, so the
same input gives the same ledger whatever order its signals were stored in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from uuid import UUID

from worker.domain.config import AgentTradingConfig
from worker.domain.config_history import decision_time
from worker.domain.config_reading import ConfigReading
from worker.domain.eligibility import decide_agent, is_subscriber
from worker.domain.exit_rules import ExitRules, exit_rules
from worker.domain.exits import open_position
from worker.domain.fills import BuyFill, buy_fill
from worker.domain.ids import buy_transaction_id, position_id
from worker.domain.ledger import BalanceDelta, NewPosition, SwapOwner, SwapRow, buy_rows
from worker.domain.models import (
    SOL_MINT,
    Decision,
    ExecutionStatus,
    Signal,
)
from worker.domain.money import MATH_CONTEXT
from worker.domain.records import AgentRow, ExecutionRow, StoredSignal
from worker.domain.sizing import sizing_seed
from worker.domain.storable import Unstorable, trade_misfit
from worker.handlers.config_cache import ConfigProblem, config_of_text, problem_of
from worker.ports import SignalStore
from worker.settings import TradingSettings

DEFAULT_TOKEN_SYMBOL = "TOKEN"  # noqa: S105 - a token symbol, not a secret
# How a failed execution's reason says its buy wrote nothing because a value would not fit
# its numeric column (such failures are also counted as unstorable).
UNSTORABLE = "the buy cannot be stored"


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    """What was decided for one agent, for logs and metrics."""

    agent_id: UUID
    decision: Decision
    transaction_id: UUID | None = None


@dataclass(slots=True)
class SignalOutcome:
    """What one signal did: its id, whether it was new, and each new agent decision.

    `conflicts_with` names the record (topic:partition:offset) that stored the signal first
    when this one reused its idempotency key with a different payload: it is treated as the
    same signal (nothing is executed twice), but the publisher has a bug worth reporting.
    """

    signal_id: int
    is_new_signal: bool
    outcomes: list[AgentOutcome] = field(default_factory=list)
    already_done: int = 0
    conflicts_with: str | None = None
    config_problems: list[ConfigProblem] = field(default_factory=list)
    # Buys failed because a value would not fit its column (each logged and counted).
    unstorable: list[Unstorable] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UnknownUser:
    """The outcome of a signal whose user does not exist: nothing of it was written."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Prices:
    token_usd: Decimal | None
    sol_usd: Decimal | None


async def handle_signals(
    store: SignalStore,
    signals: Sequence[Signal],
    *,
    trading: TradingSettings,
) -> list[SignalOutcome | UnknownUser]:
    """Store the signals and execute each, in order and each at its own decision time, for
    every agent of its user that has no execution yet; one result per signal
    (`UnknownUser`: nothing of it written).

    Set-based for the whole batch: a fixed number of statements however many signals and
    agents. Signals of one user see each other's effects (balance, positions held), as if
    they were processed one by one.
    """
    known = await store.existing_users([s.user_id for s in signals])
    stored = [s for s in signals if s.user_id in known]
    ids = iter(await store.insert_signals(stored))
    keyed = [(s, next(ids)) if s.user_id in known else (s, None) for s in signals]
    # Signals stored before (a redelivery, a replay, another worker): is_new False.
    replayed = [found.id for _, found in keyed if found is not None and not found.is_new]
    done: dict[int, set[UUID]] = {}
    if replayed:
        # A redelivery, or another worker replaying it: serialise on the signal rows.
        await store.lock_signals(replayed)
        done = await store.executions_of(replayed)
    users = list(known)
    await store.lock_users_sol_balances(users)
    tokens = [s.token_address for s in stored]
    times = [decision_time(s) for s in stored]
    span = (min(times), max(times)) if times else None
    fleet = _Fleet(await store.fetch_agents(users, tokens, trading.max_config_bytes, span))
    prices = await store.fetch_prices(
        [SOL_MINT, *(s.token_address for s in stored if s.price_usd is None)]
    )
    buys = _Buys()
    rows: list[ExecutionRow] = []
    with localcontext(MATH_CONTEXT):  # once for the batch, not once per agent and rule
        results = [
            _signal(signal, stored_id, done, fleet, prices, trading, buys, rows)
            for signal, stored_id in keyed
        ]
    await store.insert_swaps(buys.swaps)
    await store.apply_balance_deltas(buys.deltas)
    await store.insert_exit_rules(list(buys.rule_sets.values()))
    await store.insert_positions(buys.positions)
    await store.insert_executions(rows)
    return results


def _signal(
    signal: Signal,
    stored_id: StoredSignal | None,
    done: dict[int, set[UUID]],
    fleet: _Fleet,
    prices: dict[str, Decimal],
    trading: TradingSettings,
    buys: _Buys,
    rows: list[ExecutionRow],
) -> SignalOutcome | UnknownUser:
    """One signal for every agent of its user that existed at the signal's decision time
    and has no execution yet.

    The signal's time is its stored decision time (the first delivery's, should a
    redelivery carry another), so an offset reset, a new consumer group or a replay offers
    an old signal to the same agents as the first run did: never to an agent created since
    (`is_subscriber`), which gets no execution row for it at all. Its buys are made at that
    time too, and each agent is decided with its settings in force then (`AgentRow.at`), so
    an edit applies to the signals from its time on, however late the worker gets to them.
    """
    if stored_id is None:
        return UnknownUser(f"unknown user_id {signal.user_id}: no such user")
    signal_id, is_new = stored_id.id, stored_id.is_new
    finished = done.setdefault(signal_id, set())
    made_at = stored_id.at or signal.decision_time
    agents = [a for a in fleet.agents_of(signal.user_id) if is_subscriber(a.created_at, made_at)]
    already = len(finished & fleet.ids(agents)) if finished else 0
    outcome = SignalOutcome(
        signal_id, is_new, already_done=already, conflicts_with=_conflict(signal, stored_id)
    )
    price = _Prices(
        signal.price_usd if signal.price_usd is not None else prices.get(signal.token_address),
        prices.get(SOL_MINT),
    )
    for subscribed in agents:
        if subscribed.agent_id in finished:
            continue
        agent = subscribed.at(made_at)  # the settings in force at the signal's time
        reading = config_of_text(agent.trading_config_text)  # once per agent and signal
        decision, tx_id = _execute(
            signal, _Made(signal_id, made_at), agent, reading, price, trading, buys, fleet
        )
        if decision.reason is not None and decision.reason.startswith(UNSTORABLE):
            outcome.unstorable.append(Unstorable("buy", str(agent.agent_id), decision.reason))
        problem = problem_of(agent.agent_id, reading)
        if problem is not None:
            outcome.config_problems.append(problem)
        finished.add(agent.agent_id)
        rows.append(
            ExecutionRow(signal_id, agent.agent_id, decision.status, tx_id, decision.reason)
        )
        outcome.outcomes.append(AgentOutcome(agent.agent_id, decision, tx_id))
    return outcome


class _Fleet:
    """The batch's agents, with the state that earlier signals of the batch changed."""

    def __init__(self, agents: dict[UUID, list[AgentRow]]) -> None:
        self._agents = agents
        self._where = {
            agent.agent_id: (user_id, i)
            for user_id, rows in agents.items()
            for i, agent in enumerate(rows)
        }

    def agents_of(self, user_id: UUID) -> list[AgentRow]:
        """The user's agents as they stand now."""
        return self._agents.get(user_id, [])

    @staticmethod
    def ids(agents: list[AgentRow]) -> set[UUID]:
        """Their ids."""
        return {a.agent_id for a in agents}

    def bought(self, agent: AgentRow, token: str, debit_sol: Decimal) -> None:
        """Record a buy: the SOL left, one more position, the token held."""
        user_id, index = self._where[agent.agent_id]
        self._agents[user_id][index] = AgentRow(  # not `replace`: this runs once per buy
            agent.user_id,
            agent.agent_id,
            agent.trading_mode,
            agent.automated_trading_simulation,
            agent.automated_trading_live,
            agent.trading_config_text,
            agent.wallet_address,
            (agent.sol_balance or Decimal(0)) - debit_sol,
            agent.open_positions + 1,
            agent.held_tokens | {token},
            agent.created_at,
            agent.versions,
        )


@dataclass(frozen=True, slots=True)
class _Made:
    """A stored signal's serial id (its rows' `signal_id`) and decision time."""

    signal_id: int
    at: datetime


def _execute(
    signal: Signal,
    made: _Made,
    agent: AgentRow,
    reading: ConfigReading,
    prices: _Prices,
    trading: TradingSettings,
    buys: _Buys,
    fleet: _Fleet,
) -> tuple[Decision, UUID | None]:
    """One agent's decision and, for a success, its buy; the purchase transaction id."""
    subscriber = agent.subscriber(signal.token_address)
    seed = sizing_seed(signal.user_id, signal.idempotency_key, subscriber.agent_id)
    decision = decide_agent(signal, subscriber, reading, seed=seed)
    cfg = reading.config
    if not decision.is_success or cfg is None or agent.wallet_address is None:
        return decision, None
    fill, decision = _fill(decision, prices, agent.sol_balance, signal, trading)
    if fill is None:
        return decision, None
    added = buys.add(signal, made, agent.agent_id, agent.wallet_address, fill, cfg)
    if isinstance(added, str):
        return Decision(ExecutionStatus.FAILED, f"{UNSTORABLE}: {added}"), None
    fleet.bought(agent, signal.token_address, fill.debit_sol)
    return decision, added


def _conflict(signal: Signal, stored: StoredSignal) -> str | None:
    """The first record of a signal whose key this one reuses with another payload."""
    if stored.is_new or stored.digest is None or signal.digest is None:
        return None
    if stored.digest == signal.digest:
        return None
    return stored.record or "an earlier record"


@dataclass(slots=True)
class _Buys:
    """The rows of a batch's buys, written set-based after every agent is decided."""

    swaps: list[SwapRow] = field(default_factory=list)
    deltas: list[BalanceDelta] = field(default_factory=list)
    positions: list[NewPosition] = field(default_factory=list)
    # The exit rules the batch's positions are opened with, by id; and by config object
    # (configs come from one cache, so an agent's config is the same object every time).
    rule_sets: dict[UUID, ExitRules] = field(default_factory=dict)
    # Each entry holds its config, so no id is reused by another config within the batch.
    _rules_of: dict[int, tuple[AgentTradingConfig, ExitRules]] = field(default_factory=dict)

    def rules(self, cfg: AgentTradingConfig) -> ExitRules:
        """The exit rules of `cfg`, computed once per config and batch."""
        held = self._rules_of.get(id(cfg))
        if held is None:
            held = self._rules_of[id(cfg)] = (cfg, exit_rules(cfg))
            self.rule_sets[held[1].id] = held[1]
        return held[1]

    def add(
        self,
        signal: Signal,
        made: _Made,
        agent_id: UUID,
        wallet: str,
        fill: BuyFill,
        cfg: AgentTradingConfig,
    ) -> UUID | str:
        """Add one agent's buy at the signal's decision time: the swap, the balance moves,
        the position; its tx id, or (nothing added) why a value of its rows would not fit
        its column."""
        token = signal.token_address
        symbol = signal.symbol or DEFAULT_TOKEN_SYMBOL
        tx_id = buy_transaction_id(signal.user_id, signal.idempotency_key, agent_id)
        pos_id = position_id(signal.user_id, signal.idempotency_key, agent_id)
        holding = SwapOwner(agent_id, wallet, token, symbol, made.signal_id, pos_id)
        swap, deltas = buy_rows(tx_id, holding, fill, made.at)
        state = open_position(fill, created_at=made.at, cfg=cfg)
        problem = trade_misfit([swap], state=state)
        if problem is not None:
            return problem
        self.swaps.append(swap)
        self.deltas.extend(deltas)
        self.positions.append(
            NewPosition(
                id=pos_id,
                agent_id=agent_id,
                wallet_address=wallet,
                token_address=token,
                token_symbol=symbol,
                purchase_transaction_id=tx_id,
                state=state,
                exit_rules_id=self.rules(cfg).id,
            )
        )
        return tx_id


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
        network_fee_sol=trading.fees.network_fee_sol,
        protocol_fee_bps=trading.fees.protocol_fee_bps,
    )
    if fill.rejection is not None:
        trade = (
            f"a buy of {decision.size_sol} SOL at {prices.token_usd} USD per token and "
            f"{prices.sol_usd} USD per SOL"
        )
        reason = (
            f"{UNSTORABLE}: {trade}: {fill.rejection}"
            if fill.is_unstorable
            else f"{trade} cannot be made: {fill.rejection}"
        )
        return None, Decision(ExecutionStatus.FAILED, reason)
    available = balance or Decimal(0)
    if fill.debit_sol > available:
        return None, Decision(
            ExecutionStatus.FAILED,
            f"the buy costs {fill.debit_sol} SOL with fees but the balance is {available} SOL",
        )
    return fill, decision
