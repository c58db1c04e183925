"""The ports of `worker.ports` on one asyncpg connection: the db modules' functions, bound."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.db import agents, positions, prices, signals, trades
from worker.db.agents import AgentRow
from worker.db.positions import (
    ClosedPosition,
    OpenPosition,
    PositionWrite,
    TrailRow,
    TrailUpdate,
)
from worker.db.signals import ExecutionRow, StoredSignal
from worker.db.trades import BalanceDelta, NewPosition, SwapRow
from worker.domain.config import ExitRules
from worker.domain.models import Signal


class PgSignalStore:
    """The signal handler's reads and writes inside the caller's transaction on `conn`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        """See `worker.ports.SignalStore`."""
        return await agents.existing_users(self.conn, user_ids)

    async def insert_signals(self, items: Sequence[Signal]) -> list[StoredSignal]:
        """See `worker.ports.SignalStore`."""
        return await signals.insert_signals(self.conn, items)

    async def lock_signals(self, signal_ids: Sequence[int]) -> None:
        """See `worker.ports.SignalStore`."""
        await signals.lock_signals(self.conn, signal_ids)

    async def executions_of(self, signal_ids: Sequence[int]) -> dict[int, set[UUID]]:
        """See `worker.ports.SignalStore`."""
        return await signals.executions_of(self.conn, signal_ids)

    async def lock_users_sol_balances(self, user_ids: Sequence[UUID]) -> None:
        """See `worker.ports.SignalStore`."""
        await trades.lock_users_sol_balances(self.conn, user_ids)

    async def fetch_agents(
        self, user_ids: Sequence[UUID], tokens: Sequence[str]
    ) -> dict[UUID, list[AgentRow]]:
        """See `worker.ports.SignalStore`."""
        return await agents.fetch_agents(self.conn, user_ids, tokens)

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        """See `worker.ports.SignalStore`."""
        return await prices.fetch_prices(self.conn, tokens)

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        """See `worker.ports.SignalStore`."""
        await trades.insert_swaps(self.conn, swaps)

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        """See `worker.ports.SignalStore`."""
        await trades.apply_balance_deltas(self.conn, deltas)

    async def insert_exit_rules(self, rules: Sequence[ExitRules]) -> None:
        """See `worker.ports.SignalStore`."""
        await trades.insert_exit_rules(self.conn, rules)

    async def insert_positions(self, positions: Sequence[NewPosition]) -> None:
        """See `worker.ports.SignalStore`."""
        await trades.insert_positions(self.conn, positions)

    async def insert_executions(self, rows: Sequence[ExecutionRow]) -> int:
        """See `worker.ports.SignalStore`."""
        return await signals.insert_executions(self.conn, rows)


class PgPriceStore:
    """The price handler's reads and writes inside the caller's transaction on `conn`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def upsert_price(self, token: str, price_usd: Decimal, ts: datetime) -> bool:
        """See `worker.ports.PriceStore`."""
        return await prices.upsert_price(self.conn, token, price_usd, ts)

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        """See `worker.ports.PriceStore`."""
        return await prices.fetch_prices(self.conn, tokens)

    async def trail_rows(self, token: str) -> list[TrailRow]:
        """See `worker.ports.PriceStore`."""
        return await positions.trail_rows(self.conn, token)

    async def agent_configs(self, agent_ids: Sequence[UUID]) -> dict[UUID, tuple[str, str | None]]:
        """See `worker.ports.PriceStore`."""
        return await agents.agent_configs(self.conn, agent_ids)

    async def exit_rules(self, ids: Sequence[UUID]) -> dict[UUID, str]:
        """See `worker.ports.PriceStore`."""
        return await positions.exit_rules(self.conn, ids)

    async def open_positions(self, token: str, ids: Sequence[UUID]) -> list[OpenPosition]:
        """See `worker.ports.PriceStore`."""
        return await positions.open_positions(self.conn, token, ids)

    async def lock_wallets_sol(self, wallets: Sequence[str]) -> None:
        """See `worker.ports.PriceStore`."""
        await positions.lock_wallets_sol(self.conn, wallets)

    async def lock_positions(self, token: str, ids: Sequence[UUID]) -> list[OpenPosition]:
        """See `worker.ports.PriceStore`."""
        return await positions.lock_positions(self.conn, token, ids)

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        """See `worker.ports.PriceStore`."""
        await trades.insert_swaps(self.conn, swaps)

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        """See `worker.ports.PriceStore`."""
        await trades.apply_balance_deltas(self.conn, deltas)

    async def update_positions(self, writes: Sequence[PositionWrite], now: datetime) -> None:
        """See `worker.ports.PriceStore`."""
        await positions.update_positions(self.conn, writes, now)

    async def update_trails(self, trails: Sequence[TrailUpdate], now: datetime) -> None:
        """See `worker.ports.PriceStore`."""
        await positions.update_trails(self.conn, trails, now)

    async def close_positions(self, closed: Sequence[ClosedPosition], now: datetime) -> None:
        """See `worker.ports.PriceStore`."""
        await positions.close_positions(self.conn, closed, now)
