"""The worker's store in memory: both ports (`SignalStore`, `PriceStore`) over plain dicts.

`replay` runs the live handlers (`handle_signals`, `handle_prices`) against it, so a
replay applies the very rules the worker applies, not a second implementation of them.
It keeps what PostgreSQL would enforce and the handlers rely on: one signal per (user,
idempotency key), one execution per (signal, agent), one position per (agent, wallet,
token), no balance below zero and no debit of a missing balance row, a price stored only
when newer, trails that only rise (peak, stop) or fall (low), and no value its numeric
column cannot hold (`worker.domain.storable`; PostgreSQL's "numeric field overflow"). A
violation raises
`StoreViolation` (where PostgreSQL would roll the transaction back): in a replay that is a
bug, never an outcome.

Locks are no-ops (one replay, one thread). Signals keep the id they are given (a recorded
signal replays under its stored id, which its rows' `signal_id` name, as live; sizes and
row ids do not depend on it); others are numbered after the largest id seen. An agent's
settings over time are its `AgentSetup.history()` (the config history a replay read, or its
settings as one version); storing an agent again replaces them.

It is the only store in memory: the unit tests run the handlers against it too, and
`tests/integration/test_store_contract.py` runs one script over it and over `PgStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.domain.columns import misfit
from worker.domain.config_history import ConfigVersion, in_force
from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES, StoredConfigText, capped
from worker.domain.exit_rules import ExitRules
from worker.domain.ledger import BalanceDelta, NewPosition, SwapRow, merge_deltas
from worker.domain.models import SOL_MINT, PositionState, Signal
from worker.domain.records import (
    AgentRow,
    AgentSetup,
    ClosedPosition,
    ExecutionRow,
    OpenPosition,
    PositionWrite,
    PriceWrite,
    StoredSignal,
    TrailRow,
    TrailUpdate,
)
from worker.domain.storable import (
    balance_misfit,
    exit_misfit,
    position_misfit,
    price_misfit,
    swap_misfit,
)

ZERO = Decimal(0)


def _capped(history: tuple[ConfigVersion, ...], max_config_bytes: int) -> tuple[ConfigVersion, ...]:
    """The versions with their texts as the database sends them (`OversizedConfig` beyond
    `max_config_bytes`)."""
    return tuple(replace(v, text=capped(v.text, max_config_bytes)) for v in history)


class StoreViolation(Exception):  # noqa: N818 - named as what it is, as PostgreSQL's are
    """What PostgreSQL would refuse (a constraint): the replay has a bug."""


def refuse(problem: str | None) -> None:
    """Raise `StoreViolation` for a value its column cannot hold (`problem` not None)."""
    if problem is not None:
        raise StoreViolation(problem)


def apply_deltas(balances: dict[tuple[str, str], Decimal], deltas: Sequence[BalanceDelta]) -> None:
    """`TradeWrites.apply_balance_deltas` on a dict of (wallet, token) balances: deltas
    summed per balance; a debit of a missing row, or below zero, is refused."""
    debits, credits = merge_deltas(deltas)
    for d in debits:
        key = (d.wallet_address, d.token_address)
        if key not in balances:
            raise StoreViolation(f"a debit of a missing balance row {key}")
        balance = balances[key] + d.delta
        if balance < 0:
            raise StoreViolation(f"balance {key} would be {balance}")
        balances[key] = balance
    for d in credits:
        key = (d.wallet_address, d.token_address)
        balance = balances.get(key, ZERO) + d.delta
        refuse(balance_misfit(balance))
        balances[key] = balance


def keep_newer(
    prices: dict[str, tuple[Decimal, datetime]], writes: Sequence[PriceWrite]
) -> set[str]:
    """`PriceQueries.upsert_prices` on a dict of (price, observed at) by token: each price
    stored unless one at least as new is; the tokens stored. One price per token, as one
    upsert statement may touch a row once."""
    if len({w.token_address for w in writes}) != len(writes):
        raise StoreViolation("two prices of one token in one upsert")
    for w in writes:
        refuse(price_misfit(w.price_usd))
    stored = set()
    for w in writes:
        prior = prices.get(w.token_address)
        if prior is None or prior[1] < w.ts:
            prices[w.token_address] = (w.price_usd, w.ts)
            stored.add(w.token_address)
    return stored


class _Position:
    """A position: its identity (`row`) and its current state. Trails (peak, stop, low:
    most ticks' only write) are kept apart and folded into the state when it is read, so a
    quiet tick costs no copy of the whole state."""

    __slots__ = ("_state", "row", "trail", "tx_dca", "tx_tp")

    def __init__(self, row: OpenPosition, state: PositionState) -> None:
        self.row = row
        self._state = state
        # (stop %, peak, low) as trailed since the state was last written, else None.
        self.trail: tuple[Decimal | None, Decimal | None, Decimal | None] | None = None
        self.tx_dca: list[UUID] = []
        self.tx_tp: list[UUID] = []

    @property
    def state(self) -> PositionState:
        """The state, trails folded in."""
        if self.trail is not None:
            sl, peak, low = self.trail
            self._state = replace(
                self._state, current_stop_loss_percentage=sl, peak_price=peak, lowest_price=low
            )
            self.trail = None
        return self._state

    @state.setter
    def state(self, state: PositionState) -> None:
        self._state = state
        self.trail = None

    @property
    def written(self) -> PositionState:
        """The state as last written, trails apart (its other fields are current)."""
        return self._state

    def trailed(self) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
        """(stop %, peak, low) now, without folding them in."""
        if self.trail is not None:
            return self.trail
        s = self._state
        return s.current_stop_loss_percentage, s.peak_price, s.lowest_price


@dataclass
class MemoryStore:
    """Both ports in memory (see the module's docstring)."""

    users: set[UUID] = field(default_factory=set)
    agents: dict[UUID, AgentSetup] = field(default_factory=dict)
    balances: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    prices: dict[str, tuple[Decimal, datetime]] = field(default_factory=dict)
    signals: dict[tuple[UUID, str | None], StoredSignal] = field(default_factory=dict)
    executions: dict[tuple[int, UUID], ExecutionRow] = field(default_factory=dict)
    swaps: list[SwapRow] = field(default_factory=list)
    rule_sets: dict[UUID, str] = field(default_factory=dict)
    positions: dict[UUID, _Position] = field(default_factory=dict)
    closed: list[tuple[ClosedPosition, datetime]] = field(default_factory=list)
    ticks_recorded: int = 0  # the price history a replay needs not keep: counted only
    _by_holding: dict[tuple[UUID, str, str], UUID] = field(default_factory=dict)
    _held: dict[UUID, set[str]] = field(default_factory=dict)  # tokens by agent
    _in_token: dict[str, dict[UUID, None]] = field(default_factory=dict)  # positions by token
    _swap_signal: dict[UUID, int | None] = field(default_factory=dict)
    _last_signal_id: int = 0
    _texts: dict[int, StoredConfigText] = field(default_factory=dict)  # configs by version id
    _last_version_id: int = 0  # of the versions `add_agent` makes (negative)
    # Each agent's history as `fetch_agents` sends it, and the cap it was made for.
    _histories: dict[UUID, tuple[int, tuple[ConfigVersion, ...]]] = field(default_factory=dict)

    # --- set-up

    def add_agent(self, agent: AgentSetup, sol: Decimal | None = None) -> None:
        """An agent (and its user) with `sol` in its simulation wallet (None: the balance
        as it is; an agent without a wallet has none). Storing an agent again replaces its
        settings and history (an edit). An agent given without history gets its settings
        as one version, under a new (negative) id, as the insert trigger would write it."""
        self.users.add(agent.user_id)
        if not agent.versions:
            self._last_version_id -= 1
            (only,) = agent.history()
            agent = replace(agent, versions=(replace(only, id=self._last_version_id),))
        self.agents[agent.agent_id] = agent
        self._histories.pop(agent.agent_id, None)
        for v in agent.versions:
            if v.id is not None:
                self._texts[v.id] = v.text
        if sol is not None and agent.wallet_address is not None:
            self.balances[(agent.wallet_address, SOL_MINT)] = sol

    def add_position(self, p: NewPosition) -> None:
        """Open a position as `insert_positions` does (its opening columns, all of the
        purchase held), refusing what PostgreSQL would. Its exit rules need not be stored
        (no foreign key, as in the schema: a position without its set takes the defaults)."""
        refuse(position_misfit(p.state))
        key = (p.agent_id, p.wallet_address, p.token_address)
        if key in self._by_holding:
            raise StoreViolation(f"a second position {key}")
        # The columns the INSERT writes (price, amount held, invested, opened at, stop, peak,
        # low); the others start at their defaults whatever `p.state` says.
        s = p.state
        state = PositionState(s.purchase_price, s.purchase_amount, s.total_invested_sol,
                              s.created_at, s.purchase_amount, s.current_stop_loss_percentage,
                              s.peak_price, s.lowest_price)  # fmt: skip
        row = OpenPosition(
            id=p.id,
            agent_id=p.agent_id,
            wallet_address=p.wallet_address,
            token_address=p.token_address,
            token_symbol=p.token_symbol,
            purchase_transaction_id=p.purchase_transaction_id,
            signal_id=self._swap_signal.get(p.purchase_transaction_id),
            sol_balance=ZERO,
            state=state,
            exit_rules_id=p.exit_rules_id,
        )
        self.positions[p.id] = _Position(row, state)
        self._by_holding[key] = p.id
        self._held.setdefault(p.agent_id, set()).add(p.token_address)
        self._in_token.setdefault(p.token_address, {})[p.id] = None

    def sol_balance(self, agent_id: UUID) -> Decimal | None:
        """The SOL balance of the agent's wallet."""
        wallet = self.agents[agent_id].wallet_address
        return None if wallet is None else self.balances.get((wallet, SOL_MINT))

    def open_positions_of(self, agent_id: UUID) -> list[OpenPosition]:
        """The agent's open positions, their state current."""
        return [
            replace(p.row, state=p.state)
            for p in self.positions.values()
            if p.row.agent_id == agent_id
        ]

    # --- SignalStore

    async def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        return {u for u in user_ids if u in self.users}

    async def insert_signals(self, signals: Sequence[Signal]) -> list[StoredSignal]:
        out = []
        for s in signals:
            refuse(
                misfit(
                    "trading_signals",
                    price_usd=s.price_usd,
                    market_cap_usd=s.market_cap_usd,
                    liquidity_usd=s.liquidity_usd,
                )
            )
            key = (s.user_id, s.idempotency_key)
            found = self.signals.get(key)
            if found is not None:
                out.append(replace(found, is_new=False))
                continue
            signal_id = s.id if s.id is not None else self._last_signal_id + 1
            self._last_signal_id = max(self._last_signal_id, signal_id)
            self.signals[key] = StoredSignal(signal_id, True, s.digest, s.record, s.decision_time)
            out.append(self.signals[key])
        return out

    async def lock_signals(self, signal_ids: Sequence[int]) -> None:
        del signal_ids  # one replay, one thread: nothing to serialise with

    async def executions_of(self, signal_ids: Sequence[int]) -> dict[int, set[UUID]]:
        wanted = set(signal_ids)
        done: dict[int, set[UUID]] = {}
        for signal_id, agent_id in self.executions:
            if signal_id in wanted:
                done.setdefault(signal_id, set()).add(agent_id)
        return done

    async def lock_users_sol_balances(self, user_ids: Sequence[UUID]) -> None:
        del user_ids

    async def fetch_agents(
        self,
        user_ids: Sequence[UUID],
        tokens: Sequence[str],
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
        span: tuple[datetime, datetime] | None = None,
    ) -> dict[UUID, list[AgentRow]]:
        users, wanted = set(user_ids), set(tokens)
        out: dict[UUID, list[AgentRow]] = {}
        for a in sorted(self.agents.values(), key=lambda a: (a.user_id, a.agent_id)):
            if a.user_id not in users:
                continue
            wallet = a.wallet_address
            mine: set[str] = self._held.get(a.agent_id, set()) if wallet else set()
            history = self._history(a, max_config_bytes)
            first = history[-1] if span is None else in_force(history, span[0])
            out.setdefault(a.user_id, []).append(
                AgentRow(
                    user_id=a.user_id,
                    agent_id=a.agent_id,
                    trading_mode=first.trading_mode,
                    automated_trading_simulation=first.automated_trading_simulation,
                    automated_trading_live=first.automated_trading_live,
                    trading_config_text=first.text,
                    wallet_address=wallet,
                    sol_balance=self.balances.get((wallet, SOL_MINT)) if wallet else None,
                    open_positions=len(mine),
                    held_tokens=frozenset(mine & wanted),
                    created_at=a.created_at,
                    versions=history if span is not None and len(history) > 1 else (),
                )
            )
        return out

    def edit_agent(self, agent_id: UUID, at: datetime, **settings: Any) -> None:  # noqa: ANN401
        """An update of the agent's settings (`AgentSetup` fields: `config_text`,
        `trading_mode`, `automated_trading_simulation`, `automated_trading_live`) in force
        from `at`, recorded as the update trigger records it (never before the last one)."""
        agent = self.agents[agent_id]
        changed = replace(agent, **settings)
        self._last_version_id -= 1
        version = ConfigVersion(
            self._last_version_id, max(at, agent.versions[-1].valid_from), changed.trading_mode,
            changed.automated_trading_simulation, changed.automated_trading_live,
            changed.config_text,
        )  # fmt: skip
        self.agents[agent_id] = replace(changed, versions=(*agent.versions, version))
        self._texts[self._last_version_id] = version.text
        self._histories.pop(agent_id, None)

    def _history(self, agent: AgentSetup, max_config_bytes: int) -> tuple[ConfigVersion, ...]:
        held = self._histories.get(agent.agent_id)
        if held is None or held[0] != max_config_bytes:
            held = self._histories[agent.agent_id] = (
                max_config_bytes,
                _capped(agent.history(), max_config_bytes),
            )
        return held[1]

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        return {t: self.prices[t][0] for t in tokens if t in self.prices}

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        for s in swaps:
            refuse(swap_misfit(s))
            if s.id in self._swap_signal:
                raise StoreViolation(f"a second transaction {s.id}")
            self._swap_signal[s.id] = s.signal_id
        self.swaps.extend(swaps)

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        apply_deltas(self.balances, deltas)

    async def insert_exit_rules(self, rules: Sequence[ExitRules]) -> None:
        for r in rules:
            self.rule_sets.setdefault(r.id, r.json)

    async def insert_positions(self, positions: Sequence[NewPosition]) -> None:
        for p in positions:
            self.add_position(p)

    async def insert_executions(self, rows: Sequence[ExecutionRow]) -> int:
        new = 0
        for r in rows:
            if (r.signal_id, r.agent_id) not in self.executions:
                self.executions[(r.signal_id, r.agent_id)] = r
                new += 1
        return new

    # --- PriceStore

    async def latest_prices(self, tokens: Sequence[str]) -> dict[str, tuple[Decimal, datetime]]:
        return {t: self.prices[t] for t in tokens if t in self.prices}

    async def upsert_prices(self, prices: Sequence[PriceWrite]) -> set[str]:
        return keep_newer(self.prices, prices)

    async def record_ticks(self, ticks: Sequence[PriceWrite]) -> None:
        for t in ticks:
            refuse(price_misfit(t.price_usd))
        self.ticks_recorded += len(ticks)

    async def trail_rows(self, tokens: Sequence[str]) -> list[TrailRow]:
        held = [self.positions[i] for t in set(tokens) for i in self._in_token.get(t, ())]
        rows = []
        for p in held:
            if p.row.agent_id not in self.agents:
                continue
            sl, peak, low = p.trailed()
            rows.append(
                TrailRow(
                    p.row.id,
                    p.row.agent_id,
                    p.row.token_address,
                    p.row.wallet_address,
                    p.written.purchase_price,
                    p.written.created_at,
                    sl,
                    peak,
                    low,
                    p.row.exit_rules_id,
                )
            )
        return rows

    async def config_versions(
        self,
        agent_ids: Sequence[UUID],
        since: datetime,
        until: datetime,
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
    ) -> dict[UUID, list[ConfigVersion]]:
        out: dict[UUID, list[ConfigVersion]] = {}
        for agent_id in dict.fromkeys(agent_ids):
            agent = self.agents.get(agent_id)
            if agent is None:
                continue
            history = agent.history()
            start = max(since, history[0].valid_from)  # before the first: the first
            span = [in_force(history, start)]
            span += [v for v in history if start < v.valid_from <= until]
            # Texts travel apart (`version_texts`), but for a version without id.
            out[agent_id] = [
                replace(v, text=capped(v.text, max_config_bytes) if v.id is None else None)
                for v in span
            ]
        return out

    async def version_texts(
        self, version_ids: Sequence[int], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> dict[int, StoredConfigText]:
        return {
            v: capped(self._texts[v], max_config_bytes) for v in version_ids if v in self._texts
        }

    async def exit_rules(self, ids: Sequence[UUID]) -> dict[UUID, str]:
        return {i: self.rule_sets[i] for i in ids if i in self.rule_sets}

    async def earlier_versions(
        self, version_ids: Sequence[int], limit: int
    ) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        wanted = set(version_ids)
        for agent in self.agents.values():
            ids = [v.id for v in agent.history() if v.id is not None]  # in history order
            for index, version_id in enumerate(ids):
                if version_id in wanted and index > 0:
                    out[version_id] = ids[:index][::-1][:limit]
        return out

    async def lock_wallets_sol(self, wallets: Sequence[str]) -> None:
        del wallets

    async def lock_positions(self, ids: Sequence[UUID]) -> list[OpenPosition]:
        out = []
        for i in sorted(set(ids)):
            p = self.positions.get(i)
            if p is None or p.row.agent_id not in self.agents:
                continue
            sol = self.balances.get((p.row.wallet_address, SOL_MINT), ZERO)
            out.append(replace(p.row, state=p.state, sol_balance=sol))
        return out

    async def update_positions(self, writes: Sequence[PositionWrite]) -> None:
        for w in writes:
            refuse(position_misfit(w.state))
            p = self.positions[w.id]
            p.state = w.state
            p.tx_dca.extend(w.dca_transaction_ids)
            p.tx_tp.extend(w.take_profit_transaction_ids)

    async def update_trails(self, trails: Sequence[TrailUpdate]) -> None:
        for t in trails:
            refuse(
                misfit(
                    "agent_positions",
                    peak_price=t.peak_price,
                    current_stop_loss_percentage=t.stop_loss_pct,
                    lowest_price=t.lowest_price,
                )
            )
            p = self.positions[t.id]
            p.trail = t.onto(*p.trailed())

    async def close_positions(self, closed: Sequence[ClosedPosition]) -> None:
        for c in closed:
            refuse(exit_misfit(c.pnl))
            p = self.positions.pop(c.position.id)
            key = (p.row.agent_id, p.row.wallet_address, p.row.token_address)
            del self._by_holding[key]
            self._held[p.row.agent_id].discard(p.row.token_address)
            del self._in_token[p.row.token_address][p.row.id]
            balance_key = (p.row.wallet_address, p.row.token_address)
            if self.balances.get(balance_key) == 0:
                del self.balances[balance_key]
            self.closed.append((c, c.at))
