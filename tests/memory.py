"""The tests' store in memory: `worker.replay.memory.MemoryStore`, the one the replay runs.

`RecordingStore` adds only what a unit test asserts on and the store does not keep: the
lock calls and the config reads, in order. The helpers seed it as a test needs (an agent
with a funded wallet, an open position, a changed or paused agent); what the store then
answers is held to PostgreSQL by `tests/integration/test_store_contract.py`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES, StoredConfigText
from worker.domain.ledger import NewPosition
from worker.domain.models import PositionState
from worker.domain.records import AgentSetup, ClosedPosition, OpenPosition
from worker.replay.memory import MemoryStore


@dataclass
class RecordingStore(MemoryStore):
    """A `MemoryStore` that lists the locks taken and the configs read."""

    locked_signals: list[int] = field(default_factory=list)
    locked_users: list[UUID] = field(default_factory=list)
    locked_wallets: list[str] = field(default_factory=list)
    locked_positions: list[UUID] = field(default_factory=list)
    configs_read: list[list[UUID]] = field(default_factory=list)  # version_texts calls, by agent

    @property
    def history(self) -> list[ClosedPosition]:
        """The full exits, in order."""
        return [c for c, _ in self.closed]

    async def lock_signals(self, signal_ids: Sequence[int]) -> None:
        self.locked_signals.extend(signal_ids)
        await super().lock_signals(signal_ids)

    async def lock_users_sol_balances(self, user_ids: Sequence[UUID]) -> None:
        self.locked_users.extend(user_ids)
        await super().lock_users_sol_balances(user_ids)

    async def lock_wallets_sol(self, wallets: Sequence[str]) -> None:
        self.locked_wallets.extend(sorted(set(wallets)))
        await super().lock_wallets_sol(wallets)

    async def lock_positions(self, ids: Sequence[UUID]) -> list[OpenPosition]:
        self.locked_positions.extend(sorted(set(ids)))
        return await super().lock_positions(ids)

    async def version_texts(
        self, version_ids: Sequence[int], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> dict[int, StoredConfigText]:
        wanted = set(version_ids)
        owners = {a.agent_id for a in self.agents.values() for v in a.versions if v.id in wanted}
        self.configs_read.append(sorted(owners))
        return await super().version_texts(version_ids, max_config_bytes)


def config_text(config: Any) -> StoredConfigText:
    """A config as its stored JSON text (None: NULL)."""
    return None if config is None else json.dumps(config)


def add_agent(
    store: MemoryStore,
    user_id: UUID | None = None,
    *,
    config: Any = None,
    sol: Decimal | None = Decimal(10),
    agent_id: UUID | None = None,
    wallet: str | None = None,
    **fields: Any,
) -> AgentSetup:
    """An agent of `user_id` (a new user if None) with `config` and `sol` SOL in its
    simulation wallet; `fields` set the other `AgentSetup` fields."""
    agent_id = agent_id or uuid.uuid4()
    agent = AgentSetup(
        user_id or uuid.uuid4(),
        agent_id,
        f"agent {agent_id.hex[:8]}",
        wallet or f"sim_{agent_id.hex}",
        config_text(config),
        **fields,
    )
    store.add_agent(agent, sol)
    return agent


def wallet_of(agent: AgentSetup) -> str:
    """The agent's simulation wallet (the tests' agents have one)."""
    assert agent.wallet_address is not None
    return agent.wallet_address


def set_config(store: MemoryStore, agent_id: UUID, config: Any) -> None:
    """The agent's config changed (an update of its row: a new version, and in force at
    any time: the store's history is replaced)."""
    store.add_agent(replace(store.agents[agent_id], config_text=config_text(config), versions=()))


def pause(store: MemoryStore, agent_id: UUID) -> None:
    """The agent's automated simulation trading turned off."""
    store.add_agent(
        replace(store.agents[agent_id], automated_trading_simulation=False, versions=())
    )


def open_position(
    store: MemoryStore,
    agent: AgentSetup,
    token: str,
    state: PositionState,
    *,
    position_id: UUID | None = None,
    symbol: str = "TKN",
    exit_rules_id: UUID | None = None,
) -> OpenPosition:
    """An open position of `agent` in `token`, its tokens in the wallet's balance; returned
    as the store holds it."""
    position = NewPosition(
        position_id or uuid.uuid4(),
        agent.agent_id,
        wallet_of(agent),
        token,
        symbol,
        uuid.uuid4(),
        state,
        exit_rules_id,
    )
    store.add_position(position)
    store.balances[(wallet_of(agent), token)] = state.purchase_amount
    return held(store, position.id)


def held(store: MemoryStore, position_id: UUID) -> OpenPosition:
    """The open position as the store holds it now."""
    p = store.positions[position_id]
    return replace(p.row, state=p.state)
