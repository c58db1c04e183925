"""The fakes of `worker.ports` answer as PostgreSQL does, for the handlers.

The unit tests of `handle_signals` and `handle_prices` run against `tests.unit.fakes`;
these run the same batch of signals (new ones, a second signal in a held token, a replay)
and the same ticks through a fake and through `worker.db.store` on the real database, and
compare every decision, balance, position and exit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account, set_price, set_sol_price
from tests.unit.fakes import FakeAgent, FakePriceStore, FakeSignalStore
from worker.config_cache import ConfigTexts
from worker.db.store import PgStore
from worker.domain.ledger import BalanceDelta, SwapRow
from worker.domain.models import SOL_MINT, Signal
from worker.domain.records import AgentSetup, PriceWrite
from worker.handlers import SignalOutcome, handle_signals
from worker.messages import PriceTickV1
from worker.ports import SignalStore
from worker.prices import Tick, handle_prices
from worker.replay.memory import MemoryStore, StoreViolation
from worker.settings import Settings, TradingSettings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
SECOND = timedelta(seconds=1)
TRADING = TradingSettings(network_fee_sol=Decimal("0.000005"), protocol_fee_bps=Decimal(0))
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
        results += await handle_signals(store, batch, trading=TRADING, now=NOW)
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


async def test_the_fake_store_and_postgresql_agree_on_a_batch(db_conn: asyncpg.Connection) -> None:
    # PostgreSQL.
    await set_sol_price(db_conn, "100")
    await set_price(db_conn, TOKEN_B, "0.5")
    account = await make_account(db_conn, [a["config"] for a in AGENTS])
    await db_conn.execute(
        "UPDATE agents SET automated_trading_simulation = false WHERE id = $1",
        account.agents[2].agent_id,
    )
    pg_ids = [a.agent_id for a in account.agents]
    newer = account.agents[-1].agent_id
    await db_conn.execute("UPDATE agents SET created_at = $2 WHERE id = $1", newer, NOW + SECOND)
    async with db_conn.transaction():
        pg_out = await _run(PgStore(db_conn), account.user_id)
    wallets = [a.wallet_address for a in account.agents]
    rows = await db_conn.fetch(
        "SELECT wallet_address, token_address, balance FROM agent_balances "
        "WHERE wallet_address = ANY($1::varchar[])",
        wallets,
    )
    pg_sol = [
        next(
            r["balance"]
            for r in rows
            if r["wallet_address"] == w and r["token_address"] == SOL_MINT
        )
        for w in wallets
    ]
    pg_tokens = [
        (wallets.index(r["wallet_address"]), r["token_address"], r["balance"])
        for r in rows
        if r["token_address"] != SOL_MINT
    ]

    # The fake, with the same user id and agents in the same order.
    fake = FakeSignalStore(prices={SOL_MINT: Decimal(100), TOKEN_B: Decimal("0.5")})
    for i, spec in enumerate(AGENTS):
        agent = FakeAgent(
            account.user_id,
            pg_ids[i],
            {"simulation": wallets[i]},
            spec["config"],
            automated_trading_simulation=spec.get("automated", True),
            created_at=spec.get("created_at"),  # the others: None, always there
        )
        fake.add_agent(agent, sol=Decimal(10))
    fake_out = await _run(fake, account.user_id)
    fake_sol = [fake.balances[(w, SOL_MINT)] for w in wallets]
    fake_tokens = [
        (wallets.index(w), t, amount) for (w, t), amount in fake.balances.items() if t != SOL_MINT
    ]

    pg = _seen(pg_out, pg_ids, pg_sol, pg_tokens)
    assert _seen(fake_out, pg_ids, fake_sol, fake_tokens) == pg
    # And the batch did what it says: buys, a skip for the held token, a replay.
    statuses = [[s for _, s, _ in decisions] for _, _, decisions in pg.outcomes]
    assert statuses[0] == ["success", "skipped", "skipped", "success"]
    assert statuses[1] == ["skipped", "skipped", "skipped", "skipped"]
    assert pg.outcomes[3] == (False, 4, [])
    assert statuses[4] == ["skipped"] * 4 + ["success"]  # the newer agent's first signal
    assert "hold" in str(pg.outcomes[4][2][0][2])


async def test_the_fake_price_store_and_postgresql_agree_on_ticks(
    db_conn: asyncpg.Connection,
) -> None:
    """Positions opened by a real batch in two tokens, then the same chunks of ticks through
    both stores: quiet ticks, take-profit sales (two in one chunk), a stale close, stop
    losses in both tokens in one chunk, and a paused agent's positions left alone."""
    await set_sol_price(db_conn, "100")
    await set_price(db_conn, TOKEN_B, "1")
    configs: list[dict[str, Any] | None] = [
        FIXED,
        {**FIXED, "takeProfit": {"enabled": True}, "stopLoss": {"enabled": False}},
        {**FIXED, "stopLoss": {"defaultPercentage": -10}},
        FIXED,
    ]
    account = await make_account(db_conn, configs)
    async with db_conn.transaction():
        await handle_signals(
            PgStore(db_conn), _signals(account.user_id)[:3], trading=TRADING, now=NOW
        )
    # The prices as if observed just before the ticks below.
    await db_conn.execute("UPDATE token_prices SET price_ts = $1", NOW)
    pg = PgStore(db_conn)
    all_ids = [p.id for p in await pg.trail_rows([TOKEN_A, TOKEN_B])]
    opened = await pg.lock_positions(all_ids)
    assert len(opened) == 8  # four agents, two tokens
    # Then one agent turns automated trading off: its positions are no longer offered.
    paused = account.agents[3].agent_id
    await db_conn.execute(
        "UPDATE agents SET automated_trading_simulation = false WHERE id = $1", paused
    )
    ids = [p.id for p in await pg.trail_rows([TOKEN_A, TOKEN_B])]
    assert len(ids) == 6  # the paused agent's positions are not offered
    paused_positions = [p for p in opened if p.agent_id == paused]

    fake = FakePriceStore(prices=await pg.latest_prices([SOL_MINT, TOKEN_A, TOKEN_B]))
    fake.paused.add(paused)
    for p in opened:  # all of them: the fake must leave the paused ones alone as PostgreSQL does
        fake.positions[p.id] = p
    agents = [a.agent_id for a in account.agents]
    fake.configs = {a: text for a, (_, text) in (await pg.agent_configs(agents)).items()}
    rows = await db_conn.fetch("SELECT wallet_address, token_address, balance FROM agent_balances")
    fake.balances = {(r["wallet_address"], r["token_address"]): r["balance"] for r in rows}

    settings = Settings()
    chunks = [
        [(TOKEN_A, "1.05", 1), (TOKEN_B, "1.02", 2), (TOKEN_A, "1.6", 3), (TOKEN_A, "2.6", 4)],
        [(TOKEN_A, "0.85", 5)],
        [(TOKEN_B, "0.5", 6), (TOKEN_A, "0.5", 7), (SOL_MINT, "90", 8), (TOKEN_A, "0.4", 9)],
    ]
    pg_configs, fake_configs = ConfigTexts(), ConfigTexts()
    for chunk in chunks:
        ticks = []
        for token, price, seconds in chunk:
            ts = NOW + timedelta(seconds=seconds)
            message = PriceTickV1(token_address=token, price_usd=Decimal(price), ts=ts)
            ticks.append(Tick(message, ts))
        now = ticks[-1].ts
        async with db_conn.transaction():
            pg_exits = await handle_prices(
                pg, ticks, configs=pg_configs, settings=settings, now=now
            )
        fake_exits = await handle_prices(
            fake, ticks, configs=fake_configs, settings=settings, now=now
        )
        assert fake_exits == pg_exits, chunk

    pg_open = {p.id: p.state for p in await pg.lock_positions(ids)}
    assert {i: p.state for i, p in fake.positions.items() if i in ids} == pg_open
    rows = await db_conn.fetch("SELECT wallet_address, token_address, balance FROM agent_balances")
    assert fake.balances == {(r["wallet_address"], r["token_address"]): r["balance"] for r in rows}
    assert fake.prices == await pg.latest_prices([SOL_MINT, TOKEN_A, TOKEN_B])
    history = await db_conn.fetch(
        "SELECT position_id, close_reason, profit_loss_sol FROM agent_historical_swaps"
    )
    assert sorted(
        (c.position.id, c.close_reason.value, c.pnl.profit_loss_sol) for c in fake.history
    ) == sorted((r["position_id"], r["close_reason"], r["profit_loss_sol"]) for r in history)
    assert {r["close_reason"] for r in history} >= {"stop_loss"}
    assert {c.position.token_address for c in fake.history} == {TOKEN_A, TOKEN_B}
    sales = await db_conn.fetchval(
        "SELECT count(*) FROM agent_transactions WHERE input_mint = ANY($1::varchar[])",
        [TOKEN_A, TOKEN_B],
    )
    assert sales == len(fake.swaps) >= 4
    # The take-profit agent sold at +60% and +160% in one chunk: both sales are listed on
    # its position, in order, until it closed.
    tp_sales = await db_conn.fetch(
        "SELECT id::text AS id FROM agent_transactions WHERE is_take_profit ORDER BY output_amount"
    )
    assert len(tp_sales) >= 2
    # The paused agent's positions went through every tick untouched, in both stores.
    for position in paused_positions:
        row = await db_conn.fetchrow(
            "SELECT peak_price, lowest_price FROM agent_positions WHERE id = $1", position.id
        )
        assert row is not None
        state = position.state
        assert (row["peak_price"], row["lowest_price"]) == (state.peak_price, state.lowest_price)
        assert fake.positions[position.id] == position


async def test_a_chunk_lists_every_dca_and_take_profit_sale_on_its_position(
    db_conn: asyncpg.Connection,
) -> None:
    """Two take-profit sales in one chunk and two DCA buys: the positions' transaction-id
    arrays list all of them."""
    await set_sol_price(db_conn, "100")
    take_profit = {**FIXED, "takeProfit": {"enabled": True}, "stopLoss": {"enabled": False}}
    dca = {
        **FIXED,
        "stopLoss": {"enabled": False},
        "dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 10},
    }
    account = await make_account(db_conn, [take_profit, dca])
    async with db_conn.transaction():
        await handle_signals(
            PgStore(db_conn), _signals(account.user_id)[:1], trading=TRADING, now=NOW
        )
    store, configs, settings = PgStore(db_conn), ConfigTexts(), Settings()

    async def chunk(*prices: tuple[str, int]) -> None:
        ticks = []
        for price, seconds in prices:
            ts = NOW + timedelta(seconds=seconds)
            message = PriceTickV1(token_address=TOKEN_A, price_usd=Decimal(price), ts=ts)
            ticks.append(Tick(message, ts))
        async with db_conn.transaction():
            await handle_prices(store, ticks, configs=configs, settings=settings, now=ticks[-1].ts)

    await chunk(("1.6", 1), ("2.6", 2))  # take profit at +50% and +150%
    # DCA at -11%, then -16% (a chunk's ticks share the time they are processed at, so the
    # 10 s cooldown keeps a second DCA out of the same chunk).
    await chunk(("0.89", 20))
    await chunk(("0.79", 40), ("0.78", 41))
    rows = {
        r["agent_id"]: r
        for r in await db_conn.fetch(
            "SELECT agent_id, dca_transaction_ids, take_profit_transaction_ids, dca_count "
            "FROM agent_positions"
        )
    }
    tp_row, dca_row = rows[account.agents[0].agent_id], rows[account.agents[1].agent_id]
    tp_ids = await db_conn.fetch(
        "SELECT id::text AS id FROM agent_transactions WHERE is_take_profit "
        "ORDER BY transaction_time, output_amount DESC"
    )
    dca_ids = await db_conn.fetch(
        "SELECT id::text AS id FROM agent_transactions WHERE is_dca ORDER BY transaction_time"
    )
    assert len(tp_ids) == 2
    assert set(tp_row["take_profit_transaction_ids"]) == {r["id"] for r in tp_ids}
    assert tp_row["dca_transaction_ids"] == []
    assert len(dca_ids) == dca_row["dca_count"] == 2
    assert set(dca_row["dca_transaction_ids"]) == {r["id"] for r in dca_ids}
    assert dca_row["take_profit_transaction_ids"] == []


async def test_a_config_changed_in_the_database_applies_on_the_next_tick(
    db_conn: asyncpg.Connection,
) -> None:
    """Configs are held by the agents row's version (`xmin`): an update is seen at once."""
    await set_sol_price(db_conn, "100")
    account = await make_account(db_conn, [FIXED])
    async with db_conn.transaction():
        await handle_signals(
            PgStore(db_conn), _signals(account.user_id)[:1], trading=TRADING, now=NOW
        )
    store, configs, settings = PgStore(db_conn), ConfigTexts(), Settings()

    async def tick(price: str, seconds: int) -> dict[str, int]:
        ts = NOW + timedelta(seconds=seconds)
        message = PriceTickV1(token_address=TOKEN_A, price_usd=Decimal(price), ts=ts)
        async with db_conn.transaction():
            [outcome] = await handle_prices(
                store, [Tick(message, ts)], configs=configs, settings=settings, now=ts
            )
            return outcome.closes

    assert await tick("0.9", 1) == {}  # -10%: inside the default -32% stop
    assert await tick("0.91", 2) == {}
    await db_conn.execute(
        "UPDATE agents SET trading_config = $2::jsonb WHERE id = $1",
        account.agents[0].agent_id,
        '{"stopLoss": {"defaultPercentage": -5}}',
    )
    # The stored stop of the open position stays -32% (it was set at the buy); the new
    # config's default is what the next tick ratchets from: max(-32, -5) = -5, crossed.
    assert await tick("0.9", 3) == {"stop_loss": 1}


def _unfit_writes(user_id: UUID, wallet: str, agent_id: UUID) -> dict[str, Any]:
    """One write per kind whose value no column holds (a second past `NOW`)."""
    big = Decimal(10) ** 12
    at = NOW + timedelta(seconds=1)
    swap = SwapRow(
        id=uuid.uuid4(), agent_id=agent_id, wallet_address=wallet, time=at, signal_id=None,
        value_usd=big, input_mint=SOL_MINT, input_symbol="SOL", input_amount=Decimal(1),
        input_price=Decimal(1), output_mint=TOKEN_A, output_symbol="A", output_amount=Decimal(1),
        output_price=Decimal(1), network_fee_sol=Decimal(0), protocol_fee_sol=Decimal(0),
    )  # fmt: skip
    price = PriceWrite(TOKEN_A, Decimal("999999999999.9999999999999999999"), at)
    signal = replace(_signals(user_id)[0], idempotency_key="unfit", price_usd=price.price_usd)
    return {
        "insert_swaps": [swap],
        "apply_balance_deltas": [BalanceDelta(agent_id, wallet, TOKEN_A, "A", big)],
        "upsert_prices": [price],
        "record_ticks": [price],
        "insert_signals": [signal],
    }


@pytest.mark.parametrize(
    "write",
    ["insert_swaps", "apply_balance_deltas", "upsert_prices", "record_ticks", "insert_signals"],
)
async def test_the_memory_store_refuses_what_postgresql_cannot_hold(
    db_conn: asyncpg.Connection, write: str
) -> None:
    """A value beyond its numeric column: PostgreSQL refuses it (numeric field overflow),
    and so does the replay's memory store, where the same value would otherwise be kept."""
    account = await make_account(db_conn, [FIXED])
    agent = account.agents[0]
    args = _unfit_writes(account.user_id, agent.wallet_address, agent.agent_id)[write]
    with pytest.raises(asyncpg.NumericValueOutOfRangeError):
        async with db_conn.transaction():
            await getattr(PgStore(db_conn), write)(args)
    memory = MemoryStore()
    memory.add_agent(
        AgentSetup(account.user_id, agent.agent_id, "a", agent.wallet_address, None), Decimal(10)
    )
    with pytest.raises(StoreViolation, match="cannot hold"):
        await getattr(memory, write)(args)
