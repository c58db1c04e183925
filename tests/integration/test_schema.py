"""The schema of contract section 5 checked against the real PostgreSQL catalog, and the
rules it enforces by itself (keys, cascades, checks)."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import asyncpg
import pytest

from tests.builders import HUGE_PRICE, MINT, TINY, add_graph, add_wallet, count
from tests.integration.schema_catalogue import (
    CASCADE,
    EXPECTED_COLUMNS,
    EXPECTED_DEFAULTS,
    EXPECTED_FOREIGN_KEYS,
    EXPECTED_INDEXES,
    FK_ACTIONS,
    INDEX,
    PK,
    SELECT_COLUMNS,
    SELECT_FOREIGN_KEYS,
    SELECT_INDEXES,
    SELECT_TABLES,
    UNIQUE,
    type_of,
)
from worker.domain.models import SOL_MINT

pytestmark = pytest.mark.integration


async def test_tables_match_the_contract(db_conn: asyncpg.Connection) -> None:
    tables = {r["table_name"] for r in await db_conn.fetch(SELECT_TABLES)}
    assert tables == set(EXPECTED_COLUMNS)


async def test_columns_and_types_match_the_contract(db_conn: asyncpg.Connection) -> None:
    actual: dict[str, dict[str, str]] = {}
    for col in await db_conn.fetch(SELECT_COLUMNS):
        actual.setdefault(col["table_name"], {})[col["column_name"]] = type_of(col)
    for table, columns in EXPECTED_COLUMNS.items():
        assert actual.get(table) == columns, table
    assert set(actual) == set(EXPECTED_COLUMNS)


async def test_defaults_match_the_contract(db_conn: asyncpg.Connection) -> None:
    actual = {
        (c["table_name"], c["column_name"]): c["column_default"]
        for c in await db_conn.fetch(SELECT_COLUMNS)
        if c["column_default"] is not None
    }
    assert actual == EXPECTED_DEFAULTS


async def test_foreign_keys_and_delete_rules_match_the_contract(
    db_conn: asyncpg.Connection,
) -> None:
    rows = await db_conn.fetch(SELECT_FOREIGN_KEYS)
    actual = {
        (r["tbl"], r["col"]): (r["ref_tbl"], r["ref_col"], FK_ACTIONS[r["on_delete"]]) for r in rows
    }
    assert len(rows) == len(actual)  # single-column keys only
    assert actual == EXPECTED_FOREIGN_KEYS
    assert {FK_ACTIONS[r["on_update"]] for r in rows} == {CASCADE}


async def test_unique_keys_and_indexes_match_the_contract(db_conn: asyncpg.Connection) -> None:
    actual = Counter(
        (r["tbl"], tuple(r["cols"]), PK if r["is_primary"] else UNIQUE if r["is_unique"] else INDEX)
        for r in await db_conn.fetch(SELECT_INDEXES)
    )
    assert actual == Counter(EXPECTED_INDEXES)


async def test_transaction_type_has_the_four_values_in_order(db_conn: asyncpg.Connection) -> None:
    values = await db_conn.fetchval("SELECT enum_range(NULL::transaction_type)::text[]")
    assert values == ["DEPOSIT", "WITHDRAWAL", "SWAP", "BURN"]


async def test_the_worker_tables_say_what_they_are_for(db_conn: asyncpg.Connection) -> None:
    for table, words in (
        ("token_prices", "latest USD price"),
        ("consumer_offsets", "same transaction"),
        ("schema_migrations", "migrate"),
        ("exit_rule_sets", "positions were opened with"),
        ("dlq_redrives", "once each"),
        ("command_results", "applied or refused"),
        ("event_outbox", "transactional outbox"),
        ("notify_offsets", "after the post"),
        ("notify_posted", "posted once"),
    ):
        comment = await db_conn.fetchval("SELECT obj_description($1::regclass, 'pg_class')", table)
        assert comment is not None, table
        assert words in comment, table


# ---------------------------------------------------------------------- schema behaviour


async def test_a_second_execution_for_the_same_signal_and_agent_is_rejected(
    db_conn: asyncpg.Connection,
) -> None:
    graph = await add_graph(db_conn)

    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await db_conn.execute(
            """
            INSERT INTO signal_executions (signal_id, agent_id, status, error)
            VALUES ($1, $2, 'failed', 'again')
            """,
            graph.signal_id,
            graph.agent_id,
        )
    assert caught.value.constraint_name == "signal_executions_signal_id_agent_id_key"


async def test_deleting_a_user_removes_everything_of_its_agents(
    db_conn: asyncpg.Connection,
) -> None:
    graph = await add_graph(db_conn)
    bystander = await add_graph(db_conn)
    owned = (
        "api_keys",
        "agents",
        "agent_wallets",
        "agent_balances",
        "agent_positions",
        "agent_transactions",
        "agent_historical_swaps",
        "agent_balance_snapshots",
        "signal_executions",
    )
    before = {table: await count(db_conn, table) for table in owned}

    await db_conn.execute("DELETE FROM users WHERE id = $1", graph.user_id)

    after = {table: await count(db_conn, table) for table in owned}
    # The bystander's rows stay: exactly half of each table is gone.
    assert after == {table: n // 2 for table, n in before.items()}
    assert all(n > 0 for n in after.values())
    assert await db_conn.fetchval(
        "SELECT count(*) FROM agents WHERE user_id = $1", bystander.user_id
    )


async def test_deleting_a_user_keeps_its_signals_without_an_owner(
    db_conn: asyncpg.Connection,
) -> None:
    graph = await add_graph(db_conn)

    await db_conn.execute("DELETE FROM users WHERE id = $1", graph.user_id)

    row = await db_conn.fetchrow(
        "SELECT user_id, token_address FROM trading_signals WHERE id = $1", graph.signal_id
    )
    assert row is not None
    assert row["user_id"] is None
    assert row["token_address"] == MINT


async def test_deleting_a_transaction_unlinks_its_execution(db_conn: asyncpg.Connection) -> None:
    graph = await add_graph(db_conn)
    await db_conn.execute("DELETE FROM agent_positions")

    await db_conn.execute("DELETE FROM agent_transactions WHERE id = $1", graph.tx_id)

    assert await db_conn.fetchval(
        "SELECT transaction_id IS NULL FROM signal_executions WHERE signal_id = $1",
        graph.signal_id,
    )


async def test_an_agent_has_at_most_one_wallet_of_each_type(db_conn: asyncpg.Connection) -> None:
    graph = await add_graph(db_conn)

    await add_wallet(db_conn, graph.agent_id, "live")  # a second type is fine
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await add_wallet(db_conn, graph.agent_id, "simulation")
    assert caught.value.constraint_name == "agent_wallets_agent_id_wallet_type_key"


@pytest.mark.parametrize(
    ("table", "column", "value", "constraint"),
    [
        ("agents", "trading_mode", "paper", "agents_trading_mode_check"),
        ("agent_wallets", "wallet_type", "paper", "agent_wallets_wallet_type_check"),
        ("signal_executions", "status", "pending", "signal_executions_status_check"),
        ("signal_executions", "status", "SUCCESS", "signal_executions_status_check"),
        ("trading_signals", "signal_strength", 0, "trading_signals_signal_strength_check"),
        ("trading_signals", "signal_strength", 6, "trading_signals_signal_strength_check"),
        ("trading_signals", "signal_type", "  ", "trading_signals_signal_type_check"),
        ("trading_signals", "price_usd", Decimal(0), "trading_signals_price_usd_check"),
        ("trading_signals", "market_cap_usd", Decimal(0), "trading_signals_market_cap_usd_check"),
        ("trading_signals", "liquidity_usd", Decimal(-1), "trading_signals_liquidity_usd_check"),
        ("trading_signals", "holder_count", -1, "trading_signals_holder_count_check"),
        ("agent_balances", "balance", -TINY, "agent_balances_balance_check"),
        ("agent_positions", "purchase_amount", -TINY, "agent_positions_purchase_amount_check"),
        ("agent_positions", "remaining_amount", -TINY, "agent_positions_remaining_amount_check"),
        ("agent_positions", "moon_bag_amount", -TINY, "agent_positions_moon_bag_amount_check"),
        (
            "agent_positions",
            "total_invested_sol",
            Decimal("-0.00000001"),
            "agent_positions_total_invested_sol_check",
        ),
        ("agent_positions", "dca_count", -1, "agent_positions_dca_count_check"),
        ("agent_transactions", "input_amount", -TINY, "agent_transactions_input_amount_check"),
        ("agent_transactions", "output_amount", -TINY, "agent_transactions_output_amount_check"),
        (
            "agent_transactions",
            "network_fee_sol",
            Decimal("-0.00000001"),
            "agent_transactions_network_fee_sol_check",
        ),
        (
            "agent_historical_swaps",
            "close_reason",
            "rug_pull",
            "agent_historical_swaps_close_reason_check",
        ),
        (
            "agent_balance_snapshots",
            "sol_balance",
            Decimal(-1),
            "agent_balance_snapshots_sol_balance_check",
        ),
        ("token_prices", "price_usd", Decimal(0), "token_prices_price_usd_check"),
        ("consumer_offsets", "next_offset", -1, "consumer_offsets_next_offset_check"),
    ],
)
async def test_checks_reject_bad_values(
    db_conn: asyncpg.Connection, table: str, column: str, value: object, constraint: str
) -> None:
    await add_graph(db_conn)

    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db_conn.execute(f"UPDATE {table} SET {column} = $1", value)
    assert caught.value.constraint_name == constraint


async def test_checks_accept_the_edge_values(db_conn: asyncpg.Connection) -> None:
    await add_graph(db_conn)

    for statement in (
        "UPDATE agent_balances SET balance = 0",
        "UPDATE agent_positions SET remaining_amount = 0, peak_price = NULL",
        "UPDATE trading_signals SET signal_strength = 1, holder_count = 0",
        "UPDATE trading_signals SET signal_strength = 5",
        "UPDATE agent_historical_swaps SET close_reason = NULL, sale_price = -0.0001,"
        " profit_loss_sol = -1, change_percent = -100",
        "UPDATE agent_balance_snapshots SET unrealized_pnl_sol = -5",
        "UPDATE signal_executions SET status = 'skipped', transaction_id = NULL",
    ):
        await db_conn.execute(statement)
    for reason in ("stop_loss", "take_profit", "stale_trade", "manual"):
        await db_conn.execute("UPDATE agent_historical_swaps SET close_reason = $1", reason)


async def test_an_unknown_transaction_type_is_rejected(db_conn: asyncpg.Connection) -> None:
    await add_graph(db_conn)

    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await db_conn.execute("UPDATE agent_transactions SET transaction_type = 'SELL'")


async def test_smallest_amount_and_largest_price_round_trip_exactly(
    db_conn: asyncpg.Connection,
) -> None:
    graph = await add_graph(db_conn)

    await db_conn.execute("UPDATE agent_balances SET balance = $1", TINY)
    await db_conn.execute(
        "UPDATE agent_positions SET purchase_price = $1, remaining_amount = $2", HUGE_PRICE, TINY
    )
    await db_conn.execute("UPDATE token_prices SET price_usd = $1", HUGE_PRICE)
    await db_conn.execute(
        "UPDATE trading_signals SET price_usd = $1 WHERE id = $2", HUGE_PRICE, graph.signal_id
    )

    row = await db_conn.fetchrow(
        """
        SELECT b.balance, b.balance::text AS balance_text, p.purchase_price,
               p.purchase_price::text AS price_text, p.remaining_amount,
               (SELECT price_usd FROM token_prices) AS token_price,
               (SELECT price_usd FROM trading_signals WHERE id = $1) AS signal_price
        FROM agent_balances b, agent_positions p
        WHERE b.token_address = $2
        """,
        graph.signal_id,
        SOL_MINT,
    )
    assert row is not None
    assert row["balance_text"] == "0.000000000000000001"
    assert row["price_text"] == "123456789012.123456789012345678"
    for name, expected in (
        ("balance", TINY),
        ("remaining_amount", TINY),
        ("purchase_price", HUGE_PRICE),
        ("token_price", HUGE_PRICE),
        ("signal_price", HUGE_PRICE),
    ):
        assert isinstance(row[name], Decimal), name
        assert row[name] == expected, name
