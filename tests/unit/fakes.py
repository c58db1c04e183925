"""In-memory fakes of `worker.ports`, with the database's rules that handlers rely on.

`FakeSignalStore` keeps users, agents, wallets, balances, positions, signals, executions
and swaps in dicts, and enforces what the schema would: one signal per (user, idempotency
key), one execution per (signal, agent) (`ON CONFLICT DO NOTHING`), one position per
(agent, wallet, token), no balance below zero and no debit of a missing balance row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.db.agents import AgentRow
from worker.db.signals import ExecutionRow
from worker.db.trades import BalanceDelta, NewPosition, SwapRow
from worker.domain.models import SOL_MINT, Signal


class ConstraintViolationError(Exception):
    """What PostgreSQL would raise: the handler's transaction would roll back."""


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


@dataclass
class FakeSignalStore:
    """A `worker.ports.SignalStore` in memory."""

    users: set[UUID] = field(default_factory=set)
    agents: dict[UUID, FakeAgent] = field(default_factory=dict)
    balances: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    prices: dict[str, Decimal] = field(default_factory=dict)
    signals: dict[tuple[UUID, str], int] = field(default_factory=dict)
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

    async def insert_signals(self, items: Sequence[Signal]) -> list[tuple[int, bool]]:
        out = []
        for s in items:
            key = (s.user_id, s.idempotency_key)
            if key in self.signals:
                out.append((self.signals[key], False))
            else:
                self.signals[key] = len(self.signals) + 1
                out.append((self.signals[key], True))
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
        self, user_ids: Sequence[UUID], tokens: Sequence[str]
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
                    trading_config=a.trading_config,
                    wallet_address=wallet,
                    sol_balance=self.balances.get((wallet, SOL_MINT)) if wallet else None,
                    open_positions=len(held),
                    held_tokens=frozenset(t for t in held if t in tokens),
                )
            )
        return out

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        return {t: self.prices[t] for t in tokens if t in self.prices}

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        if {s.id for s in swaps} & {s.id for s in self.swaps}:
            raise ConstraintViolationError("duplicate transaction id")
        self.swaps.extend(swaps)

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        merged: dict[tuple[str, str], Decimal] = {}
        for d in deltas:
            key = (d.wallet_address, d.token_address)
            merged[key] = merged.get(key, Decimal(0)) + d.delta
        for key, delta in merged.items():
            if delta < 0 and key not in self.balances:
                raise ConstraintViolationError(f"debit of a missing balance row {key}")
            balance = self.balances.get(key, Decimal(0)) + delta
            if balance < 0:
                raise ConstraintViolationError(f"balance {key} would be {balance}")
            self.balances[key] = balance

    async def insert_positions(self, positions: Sequence[NewPosition]) -> None:
        for p in positions:
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
