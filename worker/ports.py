"""The `Protocol`s that handlers depend on; `worker.db.store.PgStore` implements them on asyncpg.

They speak only in domain values (`worker.domain.records`, `worker.domain.ledger`): the
handlers import this and the domain, never `worker.db` (an import-linter contract).

A handler sees one store per transaction: the consumer opens the transaction (its offsets
go into the same one) and hands the handler a store bound to that connection. The other
implementation is `worker.replay.memory.MemoryStore`, which the replay and the unit tests
run; `tests/integration/test_store_contract.py` holds it to `PgStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from worker.domain.commands import AgentState, Transfer
from worker.domain.config_history import ConfigVersion
from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES, StoredConfigText
from worker.domain.exit_rules import ExitRules
from worker.domain.ledger import BalanceDelta, NewPosition, SwapRow
from worker.domain.models import Signal
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


class SignalStore(Protocol):
    """What `worker.handlers.signals.handle_signals` reads and writes, set-based, in one
    transaction."""

    async def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        """The ids among `user_ids` that name a user."""
        ...

    async def insert_signals(self, signals: Sequence[Signal]) -> list[StoredSignal]:
        """Store each signal once per (user, idempotency key): how each stands, in order."""
        ...

    async def lock_signals(self, signal_ids: Sequence[int]) -> None:
        """Serialise with other transactions working on these (stored before) signals."""
        ...

    async def executions_of(self, signal_ids: Sequence[int]) -> dict[int, set[UUID]]:
        """The agents that already have an execution, by signal."""
        ...

    async def lock_users_sol_balances(self, user_ids: Sequence[UUID]) -> None:
        """Lock the SOL balance rows of these users' wallets, in the order every writer uses."""
        ...

    async def fetch_agents(
        self,
        user_ids: Sequence[UUID],
        tokens: Sequence[str],
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
        span: tuple[datetime, datetime] | None = None,
    ) -> dict[UUID, list[AgentRow]]:
        """Every agent of each user, by agent id, with its holdings among `tokens` and its
        settings in force over `span` (None: the current ones; `AgentRow.at`); a config
        over `max_config_bytes` comes as an `OversizedConfig`, never as its text."""
        ...

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        """The latest USD price of each token that has one."""
        ...

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        """Write the swap transactions."""
        ...

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        """Add each delta to its (wallet, token) balance; a debit may not go below zero."""
        ...

    async def insert_exit_rules(self, rules: Sequence[ExitRules]) -> None:
        """Store the exit rule sets new positions point at (each id once, ever)."""
        ...

    async def insert_positions(self, positions: Sequence[NewPosition]) -> None:
        """Open the positions."""
        ...

    async def insert_executions(self, rows: Sequence[ExecutionRow]) -> int:
        """Write the executions (one per signal and agent at most); how many were new."""
        ...


class PriceStore(Protocol):
    """What `worker.handlers.ticks.handle_prices` reads and writes, set-based, in one
    transaction."""

    async def latest_prices(self, tokens: Sequence[str]) -> dict[str, tuple[Decimal, datetime]]:
        """The stored (USD price, observed at) of each token that has one."""
        ...

    async def upsert_prices(self, prices: Sequence[PriceWrite]) -> set[str]:
        """Store each price (one per token) unless one at least as new is stored; the tokens
        whose price was stored."""
        ...

    async def record_ticks(self, ticks: Sequence[PriceWrite]) -> None:
        """Append the ticks that moved prices to the price history."""
        ...

    async def trail_rows(self, tokens: Sequence[str]) -> list[TrailRow]:
        """A few columns of the open simulation positions in `tokens` (whether automation
        exits them is the version in force's to say)."""
        ...

    async def config_versions(
        self,
        agent_ids: Sequence[UUID],
        since: datetime,
        until: datetime,
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
    ) -> dict[UUID, list[ConfigVersion]]:
        """Each agent's versions in force at some time of [`since`, `until`], in order,
        without their texts (`version_texts`), except the one version (id None) of an agent
        without history, which carries its row's; agents deleted are absent."""
        ...

    async def version_texts(
        self, version_ids: Sequence[int], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> dict[int, StoredConfigText]:
        """Each version's `trading_config` JSON text (None: NULL; an `OversizedConfig` over
        `max_config_bytes`)."""
        ...

    async def exit_rules(self, ids: Sequence[UUID]) -> dict[UUID, str]:
        """The exit rule sets (JSON text) positions were opened with, by id."""
        ...

    async def earlier_versions(
        self, version_ids: Sequence[int], limit: int
    ) -> dict[int, list[int]]:
        """For each version (by id), the ids of its agent's versions before it (by
        `valid_from`, then id), newest first, at most `limit`; a version without earlier
        ones (or unknown) is absent."""
        ...

    async def lock_wallets_sol(self, wallets: Sequence[str]) -> None:
        """Lock the wallets' SOL balance rows, in the order every writer uses."""
        ...

    async def lock_positions(self, ids: Sequence[UUID]) -> list[OpenPosition]:
        """Lock and read whole those positions still open, in id order."""
        ...

    async def insert_swaps(self, swaps: Sequence[SwapRow]) -> None:
        """Write the swap transactions."""
        ...

    async def apply_balance_deltas(self, deltas: Sequence[BalanceDelta]) -> None:
        """Add each delta to its (wallet, token) balance; a debit may not go below zero."""
        ...

    async def update_positions(self, writes: Sequence[PositionWrite]) -> None:
        """The new state of positions that traded and stay open."""
        ...

    async def update_trails(self, trails: Sequence[TrailUpdate]) -> None:
        """Raise peaks and stops, lower lows; never the other way."""
        ...

    async def close_positions(self, closed: Sequence[ClosedPosition]) -> None:
        """Record each full exit in the history and delete the position (and empty balances)."""
        ...


class CommandStore(PriceStore, Protocol):
    """What `worker.handlers.commands.handle_commands` reads and writes, in one transaction
    (`worker.db.commands.CommandQueries` and the price store's reads and exit writes)."""

    async def lock_command(self, user_id: UUID, key: str) -> None:
        """Serialise with another transaction applying the same command."""
        ...

    async def command_result(self, user_id: UUID, key: str) -> dict[str, Any] | None:
        """The stored result of the command (user, key), if any."""
        ...

    async def insert_command_result(
        self,
        *,
        user_id: UUID,
        key: str,
        command: str,
        status: str,
        reason: str | None,
        agent_id: UUID | None,
        payload: str,
        changes: str | None,
        at: datetime,
        record: str | None,
    ) -> None:
        """Record a command's outcome (once per (user, key))."""
        ...

    async def user_exists(self, user_id: UUID) -> bool:
        """True when `user_id` names a user."""
        ...

    async def email_taken(self, email: str) -> bool:
        """True when a user has this email."""
        ...

    async def insert_user(self, user_id: UUID, email: str, at: datetime) -> bool:
        """Create the user; False when its id or email was taken meanwhile."""
        ...

    async def agent_state(
        self, agent_id: UUID, max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> AgentState | None:
        """The agent, its simulation wallet and SOL (None: no such agent)."""
        ...

    async def agent_exists(self, agent_id: UUID) -> bool:
        """True when `agent_id` names an agent."""
        ...

    async def wallet_taken(self, wallet: str) -> bool:
        """True when some agent has this wallet address."""
        ...

    async def insert_agent(
        self,
        *,
        agent_id: UUID,
        user_id: UUID,
        name: str,
        trading_mode: str,
        config_text: str,
        wallet: str,
        balance_id: UUID,
        at: datetime,
    ) -> None:
        """The agent, its simulation wallet and a SOL balance row of 0."""
        ...

    async def update_agent(
        self,
        agent_id: UUID,
        at: datetime,
        *,
        name: str | None = None,
        config_text: str | None = None,
        set_config: bool = False,
        automated_simulation: bool | None = None,
        automated_live: bool | None = None,
    ) -> None:
        """Change the agent's columns given; a new config version is in force from `at`."""
        ...

    async def lock_sol(self, wallet: str) -> Decimal | None:
        """Lock the wallet's SOL balance row and read it."""
        ...

    async def insert_transfer(self, transfer: Transfer, balance_id: UUID) -> None:
        """The transfer's transaction and its move of the wallet's SOL."""
        ...

    async def open_positions_of(
        self, agent_id: UUID, token: str | None
    ) -> Sequence[tuple[UUID, str]]:
        """The agent's open simulation positions (id, token)."""
        ...


class PipelineStore(SignalStore, CommandStore, Protocol):
    """What the pipeline's transactions use (`worker.db.store.PgStore` on one connection):
    the handlers' stores, and the agents per user that size the transactions."""

    async def agent_counts(self, user_ids: Sequence[UUID]) -> dict[UUID, int]:
        """The number of agents of each user (users without agents are left out)."""
        ...
