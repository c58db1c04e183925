"""The `worker.db` reads and writes of agents and signals, against the real PostgreSQL."""

from __future__ import annotations

import uuid
from decimal import Decimal
from operator import itemgetter

import asyncpg
import orjson
import pytest

from tests.builders import (
    HUGE_PRICE,
    MINT,
    OTHER_MINT,
    add_agent,
    add_fleet,
    add_graph,
    add_signal,
    add_user,
    assert_exact_balances,
    count,
    make_signal,
)
from worker.db.bulk import Bulk, Column
from worker.db.store import PgStore
from worker.domain.models import ExecutionStatus, Signal, Subscriber
from worker.domain.records import ExecutionRow

pytestmark = pytest.mark.integration

# ------------------------------------------------------------------- worker.db.agents


async def fetch_subscribers(
    conn: asyncpg.Connection, user_id: uuid.UUID, token: str
) -> list[Subscriber]:
    """The fan-out's read (`fetch_agents`), as the subscribers of one signal for `token`."""
    agents = await PgStore(conn).fetch_agents([user_id], [token])
    return [agent.subscriber(token) for agent in agents.get(user_id, [])]


async def insert_signal(conn: asyncpg.Connection, signal: Signal) -> tuple[int, bool]:
    """`insert_signals` of one signal: (its id, whether it is new)."""
    [stored] = await PgStore(conn).insert_signals([signal])
    return stored.id, stored.is_new


async def existing_executions(conn: asyncpg.Connection, signal_id: int) -> set[uuid.UUID]:
    return (await PgStore(conn).executions_of([signal_id])).get(signal_id, set())


async def test_existing_users_names_only_users_that_exist(db_conn: asyncpg.Connection) -> None:
    user_id = await add_user(db_conn)
    stranger = uuid.uuid4()

    assert await PgStore(db_conn).existing_users([user_id, stranger, user_id]) == {user_id}
    assert await PgStore(db_conn).existing_users([]) == set()


async def test_fetch_subscribers_returns_every_agent_with_its_mode_wallet(
    db_conn: asyncpg.Connection,
) -> None:
    fleet = await add_fleet(db_conn)

    subscribers = await fetch_subscribers(db_conn, fleet.user_id, MINT)

    assert subscribers == fleet.expected
    assert_exact_balances(subscribers)


async def test_fetch_subscribers_is_the_same_with_the_pool_json_codec(
    db_conn: asyncpg.Connection,
) -> None:
    fleet = await add_fleet(db_conn)
    await db_conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )

    subscribers = await fetch_subscribers(db_conn, fleet.user_id, MINT)

    assert subscribers == fleet.expected
    assert_exact_balances(subscribers)


async def test_fetch_subscribers_checks_holdings_against_the_given_token(
    db_conn: asyncpg.Connection,
) -> None:
    fleet = await add_fleet(db_conn)

    holds = {
        s.agent_id: s.holds_token
        for s in await fetch_subscribers(db_conn, fleet.user_id, OTHER_MINT)
    }

    assert holds == {
        s.agent_id: s.wallet_address is not None and s.open_positions > 0 for s in fleet.expected
    }
    assert sum(holds.values()) == 2


async def test_fetch_subscribers_of_a_user_without_agents_is_empty(
    db_conn: asyncpg.Connection,
) -> None:
    user_id = await add_user(db_conn)

    assert await fetch_subscribers(db_conn, user_id, MINT) == []
    assert await fetch_subscribers(db_conn, uuid.uuid4(), MINT) == []


# ------------------------------------------------------------------ worker.db.signals


async def test_insert_signal_stores_every_field(db_conn: asyncpg.Connection) -> None:
    user_id = await add_user(db_conn)
    signal = make_signal(
        user_id,
        symbol="BONK",
        activation_reason="volume x10",
        source="cli",
        price_usd=HUGE_PRICE,
        market_cap_usd=Decimal("1234567.12345678"),
        liquidity_usd=Decimal("0.00000001"),
        holder_count=0,
        digest=bytes(range(16)),
        record="trading-signals:3:41",
    )

    signal_id, inserted = await insert_signal(db_conn, signal)

    assert inserted is True
    row = await db_conn.fetchrow("SELECT * FROM trading_signals WHERE id = $1", signal_id)
    assert row is not None
    stored = dict(row.items())
    del stored["id"], stored["updated_at"]
    assert stored == {
        "user_id": user_id,
        "token_address": MINT,
        "symbol": "BONK",
        "signal_type": "Velocity (Dex Boost Detection)",
        "activation_reason": "volume x10",
        "signal_strength": 4,
        "source": "cli",
        "idempotency_key": "key-1",
        "price_usd": HUGE_PRICE,
        "market_cap_usd": Decimal("1234567.12345678"),
        "liquidity_usd": Decimal("0.00000001"),
        "holder_count": 0,
        "created_at": signal.created_at,
        "payload_digest": bytes(range(16)),
        "source_record": "trading-signals:3:41",
        # Its decision time: no `at` set, so its created_at (schema 0007).
        "event_at": signal.created_at,
    }


async def test_insert_signal_is_idempotent_per_user_and_key(db_conn: asyncpg.Connection) -> None:
    user_id = await add_user(db_conn)
    other_user = await add_user(db_conn)

    first = await insert_signal(db_conn, make_signal(user_id, "k"))
    again = await insert_signal(db_conn, make_signal(user_id, "k", signal_strength=1))
    other_key = await insert_signal(db_conn, make_signal(user_id, "k2"))
    other_owner = await insert_signal(db_conn, make_signal(other_user, "k"))

    assert first[1] is True
    assert again == (first[0], False)
    assert other_key[1] is True
    assert other_owner[1] is True
    assert len({first[0], other_key[0], other_owner[0]}) == 3
    assert await count(db_conn, "trading_signals") == 3
    # The duplicate changed nothing.
    assert (
        await db_conn.fetchval(
            "SELECT signal_strength FROM trading_signals WHERE id = $1", first[0]
        )
        == 4
    )


async def test_insert_signal_with_only_required_fields(db_conn: asyncpg.Connection) -> None:
    user_id = await add_user(db_conn)

    signal_id, inserted = await insert_signal(db_conn, make_signal(user_id))

    assert inserted
    assert (
        await db_conn.fetchval(
            "SELECT num_nulls(symbol, activation_reason, source, price_usd, market_cap_usd,"
            " liquidity_usd, holder_count) FROM trading_signals WHERE id = $1",
            signal_id,
        )
        == 7
    )


async def test_insert_executions_writes_each_pair_once_and_counts_new_rows(
    db_conn: asyncpg.Connection,
) -> None:
    graph = await add_graph(db_conn)
    signal_id = await add_signal(db_conn, graph.user_id)
    agents = [await add_agent(db_conn, graph.user_id) for _ in range(4)]
    rows = [
        ExecutionRow(signal_id, agents[0], ExecutionStatus.SUCCESS, graph.tx_id, None),
        ExecutionRow(signal_id, agents[1], ExecutionStatus.FAILED, None, "no price for SOL"),
        ExecutionRow(
            signal_id, agents[2], ExecutionStatus.SKIPPED, None, "signal strength 2 is below 3"
        ),
    ]

    assert await existing_executions(db_conn, signal_id) == set()
    assert await PgStore(db_conn).insert_executions(rows) == 3
    assert await existing_executions(db_conn, signal_id) == set(agents[:3])

    replay = [
        ExecutionRow(signal_id, agents[0], ExecutionStatus.FAILED, None, "replayed"),
        *rows[1:],
        ExecutionRow(signal_id, agents[3], ExecutionStatus.SKIPPED, None, "at limit"),
    ]
    assert await PgStore(db_conn).insert_executions(replay) == 1
    assert await existing_executions(db_conn, signal_id) == set(agents)

    stored = {
        r["agent_id"]: (r["status"], r["transaction_id"], r["error"])
        for r in await db_conn.fetch(
            "SELECT agent_id, status, transaction_id, error FROM signal_executions"
            " WHERE signal_id = $1",
            signal_id,
        )
    }
    assert stored == {
        agents[0]: ("success", graph.tx_id, None),  # the first write wins
        agents[1]: ("failed", None, "no price for SOL"),
        agents[2]: ("skipped", None, "signal strength 2 is below 3"),
        agents[3]: ("skipped", None, "at limit"),
    }
    # The graph's own signal still has only its one execution.
    assert await existing_executions(db_conn, graph.signal_id) == {graph.agent_id}


async def test_insert_executions_with_a_pair_twice_in_one_batch(
    db_conn: asyncpg.Connection,
) -> None:
    graph = await add_graph(db_conn)
    signal_id = await add_signal(db_conn, graph.user_id)
    row = ExecutionRow(signal_id, graph.agent_id, ExecutionStatus.SKIPPED, None, "held")

    assert await PgStore(db_conn).insert_executions([row, row]) == 1
    assert await PgStore(db_conn).insert_executions([]) == 0
    assert await existing_executions(db_conn, signal_id) == {graph.agent_id}


# --------------------------------------------------------------------- worker.db.bulk


async def test_bulk_numbers_travel_as_text_and_arrive_exact(db_conn: asyncpg.Connection) -> None:
    """`numeric` columns are sent as `str(Decimal)` (cheaper than asyncpg's binary encoding):
    every digit, the exponent form, the sign, the scale and NULL arrive as sent."""
    values = [
        Decimal("1E-8"),
        Decimal("0.000000001"),
        Decimal("-12.5"),
        Decimal("123456789012345678901234567890.123456789012345678901"),
        Decimal("7.10"),
        Decimal("1E+3"),
        None,
    ]
    numbers: Bulk[tuple[int, Decimal | None]] = Bulk(
        "t", [Column("i", "int", itemgetter(0)), Column("v", "numeric", itemgetter(1))]
    )
    rows = await db_conn.fetch(
        numbers.sql("SELECT t.i, t.v, t.v::text AS text FROM {rows} ORDER BY t.i"),
        *numbers.args(list(enumerate(values))),
    )
    assert [r["v"] for r in rows] == values
    assert [r["text"] for r in rows] == [
        "0.00000001", "0.000000001", "-12.5",
        "123456789012345678901234567890.123456789012345678901", "7.10", "1000", None,
    ]  # fmt: skip
