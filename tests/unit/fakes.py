"""In-memory fakes of `worker.ports`, with the database's rules that handlers rely on.

`FakePriceStore` keeps prices with their timestamps (a tick not newer changes nothing),
open positions, balances and the exit history, with the trail writes' GREATEST/LEAST.

`FakeSignalStore` keeps users, agents, wallets, balances, positions, signals, executions
and swaps in dicts, and enforces what the schema would: one signal per (user, idempotency
key), one execution per (signal, agent) (`ON CONFLICT DO NOTHING`), one position per
(agent, wallet, token), no balance below zero and no debit of a missing balance row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.domain.config import DEFAULT_MAX_CONFIG_BYTES, ExitRules, StoredConfigText, capped
from worker.domain.ledger import BalanceDelta, NewPosition, SwapRow
from worker.domain.models import SOL_MINT, Signal
from worker.domain.records import (
    AgentRow,
    ClosedPosition,
    ExecutionRow,
    OpenPosition,
    PositionWrite,
    PriceWrite,
    StoredSignal,
    TrailRow,
    TrailUpdate,
)
from worker.replay.memory import StoreViolation, apply_deltas, keep_newer


def _version(text: StoredConfigText) -> str:
    """A row version for a config, as `xmin` would change with it."""
    return hashlib.sha256(str(text).encode()).hexdigest()[:16]


# What PostgreSQL would refuse: the handler's transaction would roll back. The replay's
# store and these fakes share its rules (`worker.replay.memory`).
ConstraintViolationError = StoreViolation


def _insert_swaps(stored: list[SwapRow], swaps: Sequence[SwapRow]) -> None:
    """`TradeWrites.insert_swaps`: transaction ids are unique."""
    if {s.id for s in swaps} & {s.id for s in stored}:
        raise ConstraintViolationError("duplicate transaction id")
    stored.extend(swaps)


@dataclass
class FakeAgent:
    """An agent with one wallet per mode (address by `simulation` / `live`)."""

    user_id: UUID
    agent_id: UUID
    wallets: dict[str, str]
    trading_config: Any = None
    trading_mode: str = "simulation"
    automated_trading_simulation: bool = True
    automated_trading_live: bool = True
    created_at: datetime | None = None


@dataclass
class FakeSignalStore:
    """A `worker.ports.SignalStore` in memory."""

    users: set[UUID] = field(default_factory=set)
    agents: dict[UUID, FakeAgent] = field(default_factory=dict)
    balances: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    prices: dict[str, Decimal] = field(default_factory=dict)
    signals: dict[tuple[UUID, str], StoredSignal] = field(default_factory=dict)
    exit_rules: dict[UUID, str] = field(default_factory=dict)
    executions: dict[tuple[int, UUID], ExecutionRow] = field(default_factory=dict)
    swaps: list[SwapRow] = field(default_factory=list)
    positions: dict[tuple[UUID, str, str], NewPosition] = field(default_factory=dict)
    locked_signals: list[int] = field(default_factory=list)
    locked_users: list[UUID] = field(default_factory=list)

    # --- set-up helpers of the tests

    def add_agent(self, agent: FakeAgent, *, sol: Decimal | None = None) -> FakeAgent:
        """Add an agent (and its user); `sol` funds its current mode's wallet."""
        self.users.add(agent.user_id)
        self.agents[agent.agent_id] = agent
        if sol is not None:
            self.balances[(agent.wallets[agent.trading_mode], SOL_MINT)] = sol
        return agent

    # --- the port

    async def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        return {u for u in user_ids if u in self.users}

    async def insert_signals(self, items: Sequence[Signal]) -> list[StoredSignal]:
        out = []
        for s in items:
            key = (s.user_id, s.idempotency_key)
            if key in self.signals:
                out.append(replace(self.signals[key], is_new=False))
            else:
                self.signals[key] = StoredSignal(
                    len(self.signals) + 1, True, s.digest, s.record, s.created_at
                )
                out.append(self.signals[key])
        return out

    async def lock_signals(self, signal_ids: Sequence[int]) -> None:
        self.locked_signals.extend(signal_ids)

    async def executions_of(self, signal_ids: Sequence[int]) -> dict[int, set[UUID]]:
        done: dict[int, set[UUID]] = {}
        for signal_id, agent_id in self.executions:
            if signal_id in signal_ids:
                done.setdefault(signal_id, set()).add(agent_id)
        return done

    async def lock_users_sol_balances(self, user_ids: Sequence[UUID]) -> None:
        self.locked_users.extend(user_ids)

    async def fetch_agents(
        self,
        user_ids: Sequence[UUID],
        tokens: Sequence[str],
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
    ) -> dict[UUID, list[AgentRow]]:
        out: dict[UUID, list[AgentRow]] = {}
        for a in sorted(self.agents.values(), key=lambda a: a.agent_id):
            if a.user_id not in user_ids:
                continue
            wallet = a.wallets.get(a.trading_mode)
            held = [
                t for (agent_id, w, t) in self.positions if agent_id == a.agent_id and w == wallet
            ]
            out.setdefault(a.user_id, []).append(
                AgentRow(
                    user_id=a.user_id,
                    agent_id=a.agent_id,
                    trading_mode=a.trading_mode,
                    automated_trading_simulation=a.automated_trading_simulation,
                    automated_trading_live=a.automated_trading_live,
                    trading_config_text=capped(
                        None if a.trading_config is None else json.dumps(a.trading_config),
                        max_config_bytes,
                    ),
                    wallet_address=wallet,
                    sol_balance=self.balances.get((wallet, SOL_MINT)) if wallet else None,
                    open_positions=len(held),
                    held_tokens=frozenset(t for t in held if t in tokens),
                    created_at=a.created_at,
                )
            )
        return out

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        return {t: self.prices[t] for t in tokens if t in self.prices}

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        _insert_swaps(self.swaps, swaps)

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        apply_deltas(self.balances, deltas)

    async def insert_exit_rules(self, rules: Sequence[ExitRules]) -> None:
        for r in rules:
            self.exit_rules.setdefault(r.id, r.json)

    async def insert_positions(self, positions: Sequence[NewPosition]) -> None:
        for p in positions:
            if p.exit_rules_id is not None and p.exit_rules_id not in self.exit_rules:
                raise ConstraintViolationError(f"position {p.id} names unknown exit rules")
            key = (p.agent_id, p.wallet_address, p.token_address)
            if key in self.positions:
                raise ConstraintViolationError(f"a second position {key}")
            self.positions[key] = p

    async def insert_executions(self, rows: Sequence[ExecutionRow]) -> int:
        new = 0
        for r in rows:
            if (r.signal_id, r.agent_id) not in self.executions:
                self.executions[(r.signal_id, r.agent_id)] = r
                new += 1
        return new


@dataclass
class FakePriceStore:
    """A `worker.ports.PriceStore` in memory: prices, open positions, balances, history.

    Positions are kept as `OpenPosition`s (their `sol_balance` is read from `balances`),
    agents' configs as JSON text in `configs`; `paused` agents' positions are not offered
    to exits, as the SQL's filter does.
    """

    prices: dict[str, tuple[Decimal, datetime]] = field(default_factory=dict)
    positions: dict[UUID, OpenPosition] = field(default_factory=dict)
    configs: dict[UUID, StoredConfigText] = field(default_factory=dict)  # by agent
    rule_sets: dict[UUID, str] = field(default_factory=dict)  # exit rules by id
    balances: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    paused: set[UUID] = field(default_factory=set)
    swaps: list[SwapRow] = field(default_factory=list)
    history: list[ClosedPosition] = field(default_factory=list)
    locked_wallets: list[str] = field(default_factory=list)
    locked_positions: list[UUID] = field(default_factory=list)
    history_ticks: list[PriceWrite] = field(default_factory=list)  # token_price_history
    configs_read: list[list[UUID]] = field(default_factory=list)  # agent_configs calls

    def _read(self, p: OpenPosition) -> OpenPosition:
        return replace(p, sol_balance=self.balances.get((p.wallet_address, SOL_MINT), Decimal(0)))

    def _open(self, tokens: set[str] | None = None) -> list[OpenPosition]:
        return sorted(
            (
                self._read(p)
                for p in self.positions.values()
                if (tokens is None or p.token_address in tokens) and p.agent_id not in self.paused
            ),
            key=lambda p: p.id,
        )

    async def latest_prices(self, tokens: Sequence[str]) -> dict[str, tuple[Decimal, datetime]]:
        return {t: self.prices[t] for t in tokens if t in self.prices}

    async def record_ticks(self, ticks: Sequence[PriceWrite]) -> None:
        self.history_ticks.extend(ticks)

    async def upsert_prices(self, prices: Sequence[PriceWrite]) -> set[str]:
        return keep_newer(self.prices, prices)

    async def trail_rows(self, tokens: Sequence[str]) -> list[TrailRow]:
        return [
            TrailRow(
                id=p.id,
                agent_id=p.agent_id,
                token_address=p.token_address,
                wallet_address=p.wallet_address,
                config_version=_version(self.configs[p.agent_id]),
                purchase_price=p.state.purchase_price,
                created_at=p.state.created_at,
                current_stop_loss_percentage=p.state.current_stop_loss_percentage,
                peak_price=p.state.peak_price,
                lowest_price=p.state.lowest_price,
                exit_rules_id=p.exit_rules_id,
            )
            for p in self._open(set(tokens))
        ]

    async def exit_rules(self, ids: Sequence[UUID]) -> dict[UUID, str]:
        return {i: self.rule_sets[i] for i in ids if i in self.rule_sets}

    async def agent_configs(
        self, agent_ids: Sequence[UUID], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> dict[UUID, tuple[str, StoredConfigText]]:
        self.configs_read.append(sorted(agent_ids))
        return {
            a: (_version(self.configs[a]), capped(self.configs[a], max_config_bytes))
            for a in agent_ids
        }

    async def lock_wallets_sol(self, wallets: Sequence[str]) -> None:
        self.locked_wallets.extend(sorted(set(wallets)))

    async def lock_positions(self, ids: Sequence[UUID]) -> list[OpenPosition]:
        wanted = set(ids)
        self.locked_positions.extend(sorted(wanted))
        return [p for p in self._open() if p.id in wanted]

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        _insert_swaps(self.swaps, swaps)

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        apply_deltas(self.balances, deltas)

    async def update_positions(self, writes: Sequence[PositionWrite], now: datetime) -> None:  # noqa: ARG002 - the fake keeps no timestamps
        for w in writes:
            self.positions[w.id] = replace(self.positions[w.id], state=w.state)

    async def update_trails(self, trails: Sequence[TrailUpdate], now: datetime) -> None:  # noqa: ARG002 - the fake keeps no timestamps
        for t in trails:
            p = self.positions[t.id]
            s = p.state
            sl, peak, low = t.onto(s.current_stop_loss_percentage, s.peak_price, s.lowest_price)
            state = replace(s, current_stop_loss_percentage=sl, peak_price=peak, lowest_price=low)
            self.positions[t.id] = replace(p, state=state)

    async def close_positions(self, closed: Sequence[ClosedPosition], now: datetime) -> None:  # noqa: ARG002 - the fake keeps no timestamps
        for c in closed:
            p = self.positions.pop(c.position.id)
            key = (p.wallet_address, p.token_address)
            if self.balances.get(key) == 0:
                del self.balances[key]
            self.history.append(c)
