"""The in-memory store answers as PostgreSQL does: one script, `PgStore` and `MemoryStore`.

The unit tests run `handle_signals` and `handle_prices` against `MemoryStore` (through
`tests.memory`), and so does `replay`. Each contract test below runs once over each store
(the `world` fixture: PostgreSQL through `PgStore`, or memory) and asserts the same: what
is refused, what is kept, what is offered to exits. Two more run the same batch of signals
and the same chunks of ticks through both stores at once and compare every decision,
balance, position and exit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import pytest

from tests.helpers.books import LONG_AGO, TOKEN_A, TOKEN_B, Account, make_account, set_price
from tests.memory import add_agent, wallet_of
from worker.db.accounts import FundedAgent
from worker.db.store import PgStore
from worker.domain.fills import Fees
from worker.domain.ledger import BalanceDelta, NewPosition, SwapRow
from worker.domain.models import SOL_MINT, PositionState, PriceTick, Signal
from worker.domain.records import PriceWrite, TrailUpdate
from worker.errors import DomainError
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import SignalOutcome, handle_signals
from worker.handlers.ticks import handle_prices
from worker.ports import PriceStore, SignalStore
from worker.replay.memory import MemoryStore, StoreViolation
from worker.settings import Settings, TradingSettings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
SECOND = timedelta(seconds=1)
TRADING = TradingSettings(fees=Fees(Decimal("0.000005"), Decimal(0)))
FIXED: dict[str, Any] = {"positionCalculator": {"randomization": {"enabled": False}}}
AGENTS: list[dict[str, Any]] = [
    {"config": FIXED},
    {"config": {**FIXED, "signals": {"minScore": 5}}},
    {"config": FIXED, "automated": False},
    {"config": None},  # the defaults: randomised sizes, the same on both stores
    # Created after signals "a" to "c" were made: decided only for "d" (made later).
    {"config": FIXED, "created_at": NOW + SECOND},
]


@dataclass(frozen=True)
class Seen:
    """What a batch did, with agents by their position in `AGENTS` (ids differ per store)."""

    outcomes: list[tuple[bool, int, list[tuple[int, str, str | None]]]]
    sol: list[Decimal]
    tokens: list[tuple[int, str, Decimal]]


def _signals(user_id: UUID) -> list[Signal]:
    def signal(token: str, key: str, price: str | None, made: datetime = NOW) -> Signal:
        return Signal(
            user_id=user_id,
            token_address=token,
            signal_type="Velocity (Dex Boost Detection)",
            signal_strength=3,
            idempotency_key=key,
            created_at=made,
            price_usd=Decimal(price) if price is not None else None,
        )

    return [
        signal(TOKEN_A, "a", "1"),
        signal(TOKEN_A, "b", "1.1"),  # already held from "a"
        signal(TOKEN_B, "c", None),  # priced by the stored tick
        signal(TOKEN_A, "a", "1"),  # a redelivery of "a", in a batch of its own
        # A new signal in a held token, in a later batch, after the last agent was created.
        signal(TOKEN_A, "d", "1", NOW + timedelta(seconds=2)),
    ]


async def _run(store: SignalStore, user_id: UUID) -> list[SignalOutcome]:
    signals = _signals(user_id)
    results = []
    for batch in (signals[:3], signals[3:4], signals[4:]):
        results += await handle_signals(store, batch, trading=TRADING)
    assert all(isinstance(r, SignalOutcome) for r in results)
    return [r for r in results if isinstance(r, SignalOutcome)]


def _seen(
    outcomes: list[SignalOutcome],
    agent_ids: list[UUID],
    sol: list[Decimal],
    tokens: list[tuple[int, str, Decimal]],
) -> Seen:
    index = {agent_id: i for i, agent_id in enumerate(agent_ids)}
    return Seen(
        [
            (
                o.is_new_signal,
                o.already_done,
                sorted(
                    (index[a.agent_id], a.decision.status.value, a.decision.reason)
                    for a in o.outcomes
                ),
            )
            for o in outcomes
        ],
        sol,
        sorted(tokens),
    )


# --- the two stores behind one seeding interface ----------------------------------------


class Store(SignalStore, PriceStore, Protocol):
    """Both ports, as `PgStore` and `MemoryStore` implement them."""


@dataclass(frozen=True)
class Spec:
    """An agent to seed: its config, automation switch, creation time and SOL."""

    config: dict[str, Any] | None = None
    automated: bool = True
    created_at: datetime = LONG_AGO
    sol: Decimal = Decimal(10)


def _spec(agent: dict[str, Any]) -> Spec:
    return Spec(agent["config"], agent.get("automated", True),
                agent.get("created_at", LONG_AGO))  # fmt: skip


class World(Protocol):
    """A store and what a test needs to seed it and read it back, for one kind of store."""

    kind: str

    @property
    def store(self) -> Store: ...

    async def account(self, specs: Sequence[Spec], like: Account | None = None) -> Account: ...
    async def user(self) -> UUID: ...
    async def set_price(self, token: str, price: Decimal, at: datetime) -> None: ...
    async def pause(self, agent_id: UUID, at: datetime) -> None: ...
    async def set_config(self, agent_id: UUID, config: dict[str, Any], at: datetime) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[None]: ...
    async def balances(self) -> dict[tuple[str, str], Decimal]: ...
    async def exits(self) -> list[tuple[UUID, str, Decimal]]: ...
    async def sales_of(self, position_id: UUID) -> tuple[list[str], list[str]]: ...
    async def sales(self) -> int: ...
    async def trail_of(self, position_id: UUID) -> tuple[Decimal | None, Decimal | None]: ...


class PgWorld:
    """PostgreSQL, through `PgStore`, in this test's own database."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.store = PgStore(conn)
        self.kind = "postgresql"

    async def account(self, specs: Sequence[Spec], like: Account | None = None) -> Account:
        assert like is None
        account = await make_account(
            self.conn, [s.config for s in specs], deposits=[s.sol for s in specs]
        )
        for spec, agent in zip(specs, account.agents, strict=True):
            await self.conn.execute(
                "UPDATE agents SET created_at = $2, automated_trading_simulation = $3 "
                "WHERE id = $1",
                agent.agent_id, spec.created_at, spec.automated,
            )  # fmt: skip
            # Its settings as they were from its creation (the triggers dated them now).
            await self.conn.execute(
                "UPDATE agent_config_history SET valid_from = $2 WHERE agent_id = $1",
                agent.agent_id, spec.created_at,
            )  # fmt: skip
        return account

    async def user(self) -> UUID:
        return (await make_account(self.conn, [])).user_id

    async def set_price(self, token: str, price: Decimal, at: datetime) -> None:
        await set_price(self.conn, token, price)
        await self.conn.execute(
            "UPDATE token_prices SET price_ts = $2 WHERE token_address = $1", token, at
        )

    async def pause(self, agent_id: UUID, at: datetime) -> None:
        await self.conn.execute(
            "UPDATE agents SET automated_trading_simulation = false WHERE id = $1", agent_id
        )
        await self._dated(agent_id, at)

    async def set_config(self, agent_id: UUID, config: dict[str, Any], at: datetime) -> None:
        await self.conn.execute(
            "UPDATE agents SET trading_config = $2::text::jsonb WHERE id = $1",
            agent_id,
            json.dumps(config),
        )
        await self._dated(agent_id, at)

    async def _dated(self, agent_id: UUID, at: datetime) -> None:
        """The version the update's trigger just recorded, as if made at `at` (the tests'
        events are dated in the past, the trigger dates an edit by the clock)."""
        await self.conn.execute(
            "UPDATE agent_config_history SET valid_from = $2 WHERE id = "
            "(SELECT max(id) FROM agent_config_history WHERE agent_id = $1)",
            agent_id,
            at,
        )

    def transaction(self) -> AbstractAsyncContextManager[None]:
        return self.conn.transaction()

    async def balances(self) -> dict[tuple[str, str], Decimal]:
        rows = await self.conn.fetch(
            "SELECT wallet_address, token_address, balance FROM agent_balances"
        )
        return {(r["wallet_address"], r["token_address"]): r["balance"] for r in rows}

    async def exits(self) -> list[tuple[UUID, str, Decimal]]:
        rows = await self.conn.fetch(
            "SELECT position_id, close_reason, profit_loss_sol FROM agent_historical_swaps"
        )
        return sorted((r["position_id"], r["close_reason"], r["profit_loss_sol"]) for r in rows)

    async def sales_of(self, position_id: UUID) -> tuple[list[str], list[str]]:
        row = await self.conn.fetchrow(
            "SELECT dca_transaction_ids, take_profit_transaction_ids FROM agent_positions "
            "WHERE id = $1",
            position_id,
        )
        assert row is not None
        return list(row["dca_transaction_ids"]), list(row["take_profit_transaction_ids"])

    async def sales(self) -> int:
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM agent_transactions WHERE input_mint <> $1 "
            "AND transaction_type = 'SWAP'",
            SOL_MINT,
        )
        return count

    async def trail_of(self, position_id: UUID) -> tuple[Decimal | None, Decimal | None]:
        row = await self.conn.fetchrow(
            "SELECT peak_price, lowest_price FROM agent_positions WHERE id = $1", position_id
        )
        assert row is not None
        return row["peak_price"], row["lowest_price"]


class MemoryWorld:
    """`MemoryStore`, seeded through `tests.memory`."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.kind = "memory"

    async def account(self, specs: Sequence[Spec], like: Account | None = None) -> Account:
        account = Account(like.user_id if like is not None else uuid.uuid4())
        for i, spec in enumerate(specs):
            agent = add_agent(
                self.store, account.user_id, config=spec.config, sol=spec.sol,
                agent_id=like.agents[i].agent_id if like is not None else None,
                wallet=like.agents[i].wallet_address if like is not None else None,
                automated_trading_simulation=spec.automated, created_at=spec.created_at,
            )  # fmt: skip
            account.agents.append(FundedAgent(agent.agent_id, wallet_of(agent), agent.name))
        return account

    async def user(self) -> UUID:
        user_id = uuid.uuid4()
        self.store.users.add(user_id)
        return user_id

    async def set_price(self, token: str, price: Decimal, at: datetime) -> None:
        self.store.prices[token] = (price, at)

    async def pause(self, agent_id: UUID, at: datetime) -> None:
        self.store.edit_agent(agent_id, at, automated_trading_simulation=False)

    async def set_config(self, agent_id: UUID, config: dict[str, Any], at: datetime) -> None:
        self.store.edit_agent(agent_id, at, config_text=json.dumps(config))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def balances(self) -> dict[tuple[str, str], Decimal]:
        return dict(self.store.balances)

    async def exits(self) -> list[tuple[UUID, str, Decimal]]:
        return sorted(
            (c.position.id, c.close_reason.value, c.pnl.profit_loss_sol)
            for c, _ in self.store.closed
        )

    async def sales_of(self, position_id: UUID) -> tuple[list[str], list[str]]:
        p = self.store.positions[position_id]
        return [str(i) for i in p.tx_dca], [str(i) for i in p.tx_tp]

    async def sales(self) -> int:
        return sum(1 for s in self.store.swaps if s.input_mint != SOL_MINT)

    async def trail_of(self, position_id: UUID) -> tuple[Decimal | None, Decimal | None]:
        state = self.store.positions[position_id].state
        return state.peak_price, state.lowest_price


@pytest.fixture(params=["postgresql", "memory"])
def world(request: pytest.FixtureRequest) -> World:
    """Each contract test runs once over PostgreSQL and once over memory."""
    if request.param == "memory":
        return MemoryWorld()
    return PgWorld(request.getfixturevalue("db_conn"))


async def _bought(world: World, specs: Sequence[Spec], token: str = TOKEN_A) -> Account:
    """An account whose agents each bought `token` at 1 USD (SOL at 100 USD) at `NOW`."""
    await world.set_price(SOL_MINT, Decimal(100), NOW - SECOND)
    account = await world.account(specs)
    signal = replace(_signals(account.user_id)[0], token_address=token)
    async with world.transaction():
        await handle_signals(world.store, [signal], trading=TRADING)
    return account


def _ticks(token: str, *prices: tuple[str, int]) -> list[PriceTick]:
    return [
        PriceTick(token, Decimal(price), NOW + timedelta(seconds=seconds))
        for price, seconds in prices
    ]


# --- the same script through both stores, compared -----------------------------------------


async def test_memory_and_postgresql_agree_on_a_batch(db_conn: asyncpg.Connection) -> None:
    pg, memory = PgWorld(db_conn), MemoryWorld()
    specs = [_spec(a) for a in AGENTS]
    account = await pg.account(specs)
    await memory.account(specs, like=account)  # the same ids: the same sizes are drawn
    seen = []
    for world in (pg, memory):
        await world.set_price(SOL_MINT, Decimal(100), NOW)
        await world.set_price(TOKEN_B, Decimal("0.5"), NOW)
        async with world.transaction():
            outcomes = await _run(world.store, account.user_id)
        balances = await world.balances()
        wallets = [a.wallet_address for a in account.agents]
        sol = [balances[(w, SOL_MINT)] for w in wallets]
        tokens = [(wallets.index(w), t, b) for (w, t), b in balances.items() if t != SOL_MINT]
        seen.append(_seen(outcomes, [a.agent_id for a in account.agents], sol, tokens))
    assert seen[1] == seen[0]
    # And the batch did what it says: buys, a skip for the held token, a replay.
    pg_seen = seen[0]
    statuses = [[s for _, s, _ in decisions] for _, _, decisions in pg_seen.outcomes]
    assert statuses[0] == ["success", "skipped", "skipped", "success"]
    assert statuses[1] == ["skipped", "skipped", "skipped", "skipped"]
    assert pg_seen.outcomes[3] == (False, 4, [])
    assert statuses[4] == ["skipped"] * 4 + ["success"]  # the newer agent's first signal
    assert "hold" in str(pg_seen.outcomes[4][2][0][2])


async def test_memory_and_postgresql_agree_on_ticks(db_conn: asyncpg.Connection) -> None:
    """Positions opened by a real batch in two tokens, then the same chunks of ticks through
    both stores: quiet ticks, take-profit sales (two in one chunk), a stale close, stop
    losses in both tokens in one chunk, and a paused agent's positions left alone."""
    pg, memory = PgWorld(db_conn), MemoryWorld()
    specs = [
        Spec(FIXED),
        Spec({**FIXED, "takeProfit": {"enabled": True}, "stopLoss": {"enabled": False}}),
        Spec({**FIXED, "stopLoss": {"defaultPercentage": -10}}),
        Spec(FIXED),
    ]
    account = await pg.account(specs)
    await memory.account(specs, like=account)
    paused = account.agents[3].agent_id
    settings = Settings()
    chunks = [
        [(TOKEN_A, "1.05", 1), (TOKEN_B, "1.02", 2), (TOKEN_A, "1.6", 3), (TOKEN_A, "2.6", 4)],
        [(TOKEN_A, "0.85", 5)],
        [(TOKEN_B, "0.5", 6), (TOKEN_A, "0.5", 7), (SOL_MINT, "90", 8), (TOKEN_A, "0.4", 9)],
    ]
    exits, states, opened = [], [], {}
    for world in (pg, memory):
        await world.set_price(SOL_MINT, Decimal(100), NOW - SECOND)
        await world.set_price(TOKEN_B, Decimal(1), NOW - SECOND)
        async with world.transaction():
            signals = _signals(account.user_id)[:3]
            await handle_signals(world.store, signals, trading=TRADING)
        ids = [p.id for p in await world.store.trail_rows([TOKEN_A, TOKEN_B])]
        opened = {p.id: p for p in await world.store.lock_positions(ids)}
        assert len(opened) == 8  # four agents, two tokens
        # Then one agent turns automated trading off (before the ticks): its positions are
        # still offered, but the version in force at the ticks' times leaves them alone.
        await world.pause(paused, NOW)
        assert len(await world.store.trail_rows([TOKEN_A, TOKEN_B])) == 8
        configs, outcomes = ConfigTexts(), []
        for chunk in chunks:
            ticks = [t for token, price, at in chunk for t in _ticks(token, (price, at))]
            async with world.transaction():
                done = await handle_prices(
                    world.store, ticks, configs=configs, trading=settings.trading
                )
            outcomes.append(done)
        exits.append((outcomes, await world.exits(), await world.sales()))
        now_open = {p.id: p for p in await world.store.lock_positions(list(opened))}
        states.append(
            ({i: p.state for i, p in now_open.items()}, await world.balances(),
             await world.store.latest_prices([SOL_MINT, TOKEN_A, TOKEN_B]))
        )  # fmt: skip
        # The paused agent's positions went through every tick untouched.
        for position in opened.values():
            if position.agent_id == paused:
                state = position.state
                assert await world.trail_of(position.id) == (state.peak_price, state.lowest_price)
    assert exits[1] == exits[0]
    assert states[1] == states[0]
    _, history, sales = exits[0]
    assert {reason for _, reason, _ in history} >= {"stop_loss"}
    assert {opened[i].token_address for i, _, _ in history} == {TOKEN_A, TOKEN_B}
    assert sales >= 4


async def test_a_chunk_lists_every_dca_and_take_profit_sale_on_its_position(world: World) -> None:
    """Two take-profit sales in one chunk and two DCA buys: the positions' transaction-id
    arrays list all of them, in order."""
    take_profit = {**FIXED, "takeProfit": {"enabled": True}, "stopLoss": {"enabled": False}}
    dca = {
        **FIXED,
        "stopLoss": {"enabled": False},
        "dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 10},
    }
    account = await _bought(world, [Spec(take_profit), Spec(dca)])
    [tp_id, dca_id] = [
        p.agent_id and p.id
        for a in account.agents
        for p in await world.store.lock_positions(
            [r.id for r in await world.store.trail_rows([TOKEN_A]) if r.agent_id == a.agent_id]
        )
    ]
    configs, settings = ConfigTexts(), Settings()

    async def chunk(*prices: tuple[str, int]) -> None:
        ticks = _ticks(TOKEN_A, *prices)
        async with world.transaction():
            await handle_prices(world.store, ticks, configs=configs, trading=settings.trading)

    await chunk(("1.6", 1), ("2.6", 2))  # take profit at +50% and +150%
    # DCA at -11%, then -16% (each tick at its own time: the second tick of the last
    # chunk comes 1 s after the DCA at 40 s, inside the 10 s cooldown).
    await chunk(("0.89", 20))
    await chunk(("0.79", 40), ("0.78", 41))
    tp_dca, tp_sales = await world.sales_of(tp_id)
    dca_buys, dca_tp = await world.sales_of(dca_id)
    assert (len(tp_sales), tp_dca) == (2, [])
    assert (len(dca_buys), dca_tp) == (2, [])
    [dca_position] = await world.store.lock_positions([dca_id])
    assert dca_position.state.dca_count == 2


async def test_a_config_changed_in_the_store_applies_on_the_next_tick(world: World) -> None:
    """Configs are held by version id: a new version is seen from its time on."""
    account = await _bought(world, [Spec(FIXED)])
    configs, settings = ConfigTexts(), Settings()

    async def tick(price: str, seconds: int) -> dict[str, int]:
        async with world.transaction():
            [outcome] = await handle_prices(
                world.store, _ticks(TOKEN_A, (price, seconds)), configs=configs,
                trading=settings.trading,
            )  # fmt: skip
            return outcome.closes

    assert await tick("0.9", 1) == {}  # -10%: inside the default -32% stop
    assert await tick("0.91", 2) == {}
    await world.set_config(
        account.agents[0].agent_id, {"stopLoss": {"defaultPercentage": -5}}, NOW + 2 * SECOND
    )
    # The stored stop of the open position stays -32% (it was set at the buy); the new
    # config's default is what the next tick ratchets from: max(-32, -5) = -5, crossed.
    assert await tick("0.9", 3) == {"stop_loss": 1}


async def test_an_edit_is_a_new_version_in_force_from_its_time(world: World) -> None:
    account = await _bought(world, [Spec(FIXED)])
    agent_id = account.agents[0].agent_id
    span = (NOW, NOW + 60 * SECOND)
    [first] = (await world.store.config_versions([agent_id], *span))[agent_id]
    await world.set_config(agent_id, {"stopLoss": {"defaultPercentage": -5}}, NOW + 10 * SECOND)
    [same, edited] = (await world.store.config_versions([agent_id], *span))[agent_id]
    assert same == first and edited.valid_from == NOW + 10 * SECOND
    assert edited.id is not None and edited.id != first.id
    # Before the edit only the first was in force; from it on, only the edit.
    assert (await world.store.config_versions([agent_id], NOW, NOW + 9 * SECOND)) == {
        agent_id: [first]
    }
    assert (await world.store.config_versions([agent_id], NOW + 10 * SECOND, span[1])) == {
        agent_id: [edited]
    }
    texts = await world.store.version_texts([edited.id])
    assert "-5" in str(texts[edited.id])


async def test_a_versions_earlier_ones_are_listed_newest_first(world: World) -> None:
    account = await _bought(world, [Spec(FIXED)])
    agent_id = account.agents[0].agent_id
    for seconds in (10, 20):
        await world.set_config(agent_id, {"dca": {"maxDCACount": seconds // 10}},
                               NOW + seconds * SECOND)  # fmt: skip
    span = (NOW, NOW + 60 * SECOND)
    first, second, third = (await world.store.config_versions([agent_id], *span))[agent_id]
    assert first.id is not None and second.id is not None and third.id is not None
    assert await world.store.earlier_versions([third.id, first.id], 50) == {
        third.id: [second.id, first.id]
    }
    assert await world.store.earlier_versions([third.id, second.id], 1) == {
        third.id: [second.id],
        second.id: [first.id],
    }


async def test_a_user_without_agents_exists(world: World) -> None:
    user_id, stranger = await world.user(), uuid.uuid4()
    assert await world.store.existing_users([user_id, stranger]) == {user_id}
    assert await world.store.fetch_agents([user_id], [TOKEN_A]) == {}


async def test_a_pause_is_a_version_the_exits_read(world: World) -> None:
    account = await _bought(world, [Spec(FIXED), Spec(FIXED)])
    rows = await world.store.trail_rows([TOKEN_A])
    assert len(rows) == 2
    paused = account.agents[0].agent_id
    await world.pause(paused, NOW + SECOND)
    # The positions are still offered: whether automation exits them depends on the time.
    assert len(await world.store.trail_rows([TOKEN_A])) == 2
    assert len(await world.store.lock_positions([r.id for r in rows])) == 2
    versions = await world.store.config_versions([paused], NOW + SECOND, NOW + 2 * SECOND)
    assert [v.automated_trading_simulation for v in versions[paused]] == [False]


async def test_a_price_is_stored_only_when_newer(world: World) -> None:
    at = NOW
    assert await world.store.upsert_prices([PriceWrite(TOKEN_A, Decimal(1), at)]) == {TOKEN_A}
    older, same = PriceWrite(TOKEN_A, Decimal(2), at - SECOND), PriceWrite(TOKEN_A, Decimal(3), at)
    assert await world.store.upsert_prices([older]) == set()
    assert await world.store.upsert_prices([same]) == set()
    assert await world.store.latest_prices([TOKEN_A, TOKEN_B]) == {TOKEN_A: (Decimal(1), at)}
    newer = PriceWrite(TOKEN_A, Decimal(4), at + SECOND)
    assert await world.store.upsert_prices([newer]) == {TOKEN_A}
    assert await world.store.fetch_prices([TOKEN_A]) == {TOKEN_A: Decimal(4)}


async def test_trails_only_rise_and_lows_only_fall(world: World) -> None:
    await _bought(world, [Spec(FIXED)])
    [row] = await world.store.trail_rows([TOKEN_A])
    low, peak = Decimal("0.005"), Decimal("0.02")
    async with world.transaction():
        await world.store.update_trails([TrailUpdate(row.id, peak, Decimal(-10), low, NOW)])
        # A later, smaller peak and stop and a higher low (ticks interleaved): ignored.
        await world.store.update_trails(
            [TrailUpdate(row.id, Decimal("0.015"), Decimal(-20), Decimal("0.008"), NOW)]
        )
    [after] = await world.store.trail_rows([TOKEN_A])
    assert (after.peak_price, after.current_stop_loss_percentage, after.lowest_price) == (
        peak, Decimal(-10), low,
    )  # fmt: skip


async def test_a_position_opens_with_all_of_its_purchase_held(world: World) -> None:
    """The INSERT writes a position's opening columns only: whatever else the state says
    (a part sold, DCA buys, take-profit levels) is not what a new position is."""
    await world.set_price(SOL_MINT, Decimal(100), NOW)
    account = await world.account([Spec(FIXED)])
    agent = account.agents[0]
    swap = _swap(agent)
    state = PositionState(
        purchase_price=Decimal(1), purchase_amount=Decimal(1), total_invested_sol=Decimal(1),
        created_at=NOW, remaining_amount=Decimal("0.5"), dca_count=2, take_profit_levels_hit=1,
    )  # fmt: skip
    position = NewPosition(uuid.uuid4(), agent.agent_id, agent.wallet_address, TOKEN_A, "A",
                           swap.id, state)  # fmt: skip
    async with world.transaction():
        await world.store.insert_swaps([swap])
        await world.store.insert_positions([position])
    [held] = await world.store.lock_positions([position.id])
    assert held.state == PositionState(
        purchase_price=Decimal(1), purchase_amount=Decimal(1), total_invested_sol=Decimal(1),
        created_at=NOW, remaining_amount=Decimal(1),
    )  # fmt: skip


async def test_a_position_may_name_exit_rules_that_are_not_stored(world: World) -> None:
    """No foreign key on purpose (schema 0004): such a position takes the default rules."""
    account = await world.account([Spec(FIXED)])
    agent, swap, rules = account.agents[0], _swap(account.agents[0]), uuid.uuid4()
    async with world.transaction():
        await world.store.insert_swaps([swap])
        await world.store.insert_positions([_position(agent, swap, rules)])
    [held] = await world.store.lock_positions(
        [r.id for r in await world.store.trail_rows([TOKEN_A])]
    )
    assert held.exit_rules_id == rules
    assert await world.store.exit_rules([rules]) == {}


# --- what both refuse --------------------------------------------------------------------


def _swap(agent: FundedAgent, **fields: Any) -> SwapRow:
    """A buy of one token A for one SOL by `agent`, a second past `NOW`."""
    return replace(
        SwapRow(
            id=uuid.uuid4(), agent_id=agent.agent_id, wallet_address=agent.wallet_address,
            time=NOW + SECOND, signal_id=None, value_usd=Decimal(1), input_mint=SOL_MINT,
            input_symbol="SOL", input_amount=Decimal(1), input_price=Decimal(1),
            output_mint=TOKEN_A, output_symbol="A", output_amount=Decimal(1),
            output_price=Decimal(1), network_fee_sol=Decimal(0), protocol_fee_sol=Decimal(0),
        ),
        **fields,
    )  # fmt: skip


def _position(agent: FundedAgent, swap: SwapRow, rules: UUID | None = None) -> NewPosition:
    state = PositionState(Decimal(1), Decimal(1), Decimal(1), NOW)
    return NewPosition(uuid.uuid4(), agent.agent_id, agent.wallet_address, TOKEN_A, "A",
                       swap.id, state, rules)  # fmt: skip


BIG = Decimal(10) ** 12
UNFIT_PRICE = PriceWrite(TOKEN_A, Decimal("999999999999.9999999999999999999"), NOW + SECOND)


async def _second_position(store: Store, agent: FundedAgent) -> Callable[[], Awaitable[None]]:
    first, second = _swap(agent), _swap(agent)
    await store.insert_swaps([first, second])
    await store.insert_positions([_position(agent, first)])
    return lambda: store.insert_positions([_position(agent, second)])


async def _second_swap(store: Store, agent: FundedAgent) -> Callable[[], Awaitable[None]]:
    swap = _swap(agent)
    await store.insert_swaps([swap])
    return lambda: store.insert_swaps([replace(swap, input_amount=Decimal(2))])


def _write(name: str, *args: Any) -> Callable[[Store, FundedAgent], Awaitable[Any]]:
    """A case whose refused write is the first: `name` of the store, with `args` built
    from the agent."""

    async def prepare(store: Store, agent: FundedAgent) -> Callable[[], Awaitable[None]]:
        built = [a(agent) if callable(a) else a for a in args]
        return lambda: getattr(store, name)(*built)

    return prepare


def _signal(agent: FundedAgent) -> list[Signal]:
    del agent
    return [replace(_signals(uuid.uuid4())[0], price_usd=UNFIT_PRICE.price_usd)]


REFUSALS: list[Any] = [
    # A value beyond its numeric column (PostgreSQL: numeric field overflow).
    pytest.param(_write("insert_swaps", lambda a: [_swap(a, value_usd=BIG)]),
                 asyncpg.NumericValueOutOfRangeError, "cannot hold", id="swap-overflow"),
    pytest.param(_write("apply_balance_deltas",
                        lambda a: [BalanceDelta(a.agent_id, a.wallet_address, TOKEN_A, "A", BIG)]),
                 asyncpg.NumericValueOutOfRangeError, "cannot hold", id="balance-overflow"),
    pytest.param(_write("upsert_prices", [UNFIT_PRICE]),
                 asyncpg.NumericValueOutOfRangeError, "cannot hold", id="price-overflow"),
    pytest.param(_write("record_ticks", [UNFIT_PRICE]),
                 asyncpg.NumericValueOutOfRangeError, "cannot hold", id="tick-overflow"),
    pytest.param(_write("insert_signals", _signal),
                 asyncpg.NumericValueOutOfRangeError, "cannot hold", id="signal-overflow"),
    # The ledger's own rules.
    pytest.param(_write("apply_balance_deltas",
                        lambda a: [BalanceDelta(a.agent_id, a.wallet_address, TOKEN_A, "A",
                                                Decimal(-1))]),
                 DomainError, "missing balance row", id="debit-of-a-missing-row"),
    pytest.param(_write("apply_balance_deltas",
                        lambda a: [BalanceDelta(a.agent_id, a.wallet_address, SOL_MINT, "SOL",
                                                Decimal(-11))]),
                 asyncpg.CheckViolationError, "would be", id="debit-below-zero"),
    pytest.param(_second_position, asyncpg.UniqueViolationError, "a second position",
                 id="second-position-in-a-token"),
    pytest.param(_second_swap, asyncpg.UniqueViolationError, "a second transaction",
                 id="second-transaction-with-an-id"),
    pytest.param(_write("upsert_prices", [PriceWrite(TOKEN_A, Decimal(1), NOW),
                                          PriceWrite(TOKEN_A, Decimal(2), NOW + SECOND)]),
                 asyncpg.CardinalityViolationError, "two prices of one token",
                 id="two-prices-of-a-token-in-one-upsert"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "pg_error", "memory_error"), REFUSALS)
async def test_both_stores_refuse_what_postgresql_refuses(
    world: World,
    case: Callable[[Store, FundedAgent], Awaitable[Callable[[], Awaitable[None]]]],
    pg_error: type[Exception],
    memory_error: str,
) -> None:
    """Where PostgreSQL rolls the transaction back, the memory store raises
    `StoreViolation` (in a replay: a bug, never an outcome)."""
    account = await world.account([Spec(FIXED, sol=Decimal(10))])
    agent = account.agents[0]
    in_memory = world.kind == "memory"
    refused: type[Exception] = StoreViolation if in_memory else pg_error
    match = memory_error if in_memory else None

    async def attempt() -> None:
        async with world.transaction():  # what it wrote before is rolled back with it
            write = await case(world.store, agent)
            await write()

    with pytest.raises(refused, match=match):
        await attempt()
