"""The schema of contract section 5 (domain.md section 9 plus its deliberate differences),
checked against the real PostgreSQL catalog, and the `worker.db` agent and signal functions.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest

from worker.db.agents import fetch_subscribers, user_exists
from worker.db.signals import ExecutionRow, existing_executions, insert_executions, insert_signal
from worker.domain.models import SOL_MINT, ExecutionStatus, Signal, Subscriber

pytestmark = pytest.mark.integration

MINT = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
OTHER_MINT = "EKpQGSJtjMFqKZ9KQanSqYXRcF8fBopzLHYxdM65zcjm"
TINY = Decimal("0.000000000000000001")
HUGE_PRICE = Decimal("123456789012.123456789012345678")

# ------------------------------------------------------------------ the expected schema
# Written from domain.md section 9 and contract.md section 5 ("?" = nullable). Types as
# information_schema reports them, shortened: varchar(n), numeric(p,s), timestamptz, t[].

TS = "timestamptz"
TS_NULL = "timestamptz?"

EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "users": {
        "id": "uuid",
        "email": "varchar(255)",
        "password_hash": "varchar(255)?",
        "created_at": TS,
        "failed_login_attempts": "integer",
        "locked_until": TS_NULL,
    },
    "api_keys": {
        "id": "uuid",
        "user_id": "uuid",
        "name": "varchar(100)",
        "key_hash": "varchar(255)",
        "key_prefix": "varchar(12)",
        "scopes": "text[]?",
        "created_at": TS,
    },
    "agents": {
        "id": "uuid",
        "user_id": "uuid",
        "name": "varchar(255)",
        "trading_mode": "varchar(20)",
        "trading_config": "jsonb?",
        "created_at": TS,
        "updated_at": TS,
        "automated_trading_simulation": "boolean",
        "automated_trading_live": "boolean",
    },
    "agent_wallets": {
        "wallet_address": "varchar(44)",
        "agent_id": "uuid",
        "wallet_type": "varchar(20)",
        "created_at": TS,
        "updated_at": TS,
    },
    "agent_balances": {
        "id": "uuid",
        "agent_id": "uuid",
        "wallet_address": "varchar(44)",
        "token_address": "varchar(255)",
        "token_symbol": "varchar(50)",  # 20 in the design
        "balance": "numeric(30,18)",  # text in the design
        "last_updated": TS,
    },
    "agent_balance_snapshots": {
        "id": "uuid",
        "agent_id": "uuid",
        "snapshot_timestamp": TS,
        "portfolio_balance_sol": "numeric(20,8)",
        "sol_balance": "numeric(20,8)",
        "positions_value_sol": "numeric(20,8)",
        "unrealized_pnl_sol": "numeric(20,8)",
        "created_at": TS,
        "updated_at": TS,
        "wallet_address": "varchar(44)",
    },
    "trading_signals": {
        "id": "integer",
        "created_at": TS,
        "updated_at": TS,
        "token_address": "varchar(255)",
        "symbol": "varchar(50)?",
        "signal_type": "varchar(50)",
        "activation_reason": "text?",
        "signal_strength": "integer",
        "source": "varchar(100)?",
        "user_id": "uuid?",
        # contract section 5 additions (nullable since 0004: the source's API writes none)
        "idempotency_key": "varchar(200)?",
        "price_usd": "numeric(30,18)?",
        "market_cap_usd": "numeric(30,8)?",
        "liquidity_usd": "numeric(30,8)?",
        "holder_count": "integer?",
        # Added by 0004: which payload and which record stored the signal.
        "payload_digest": "bytea?",
        "source_record": "text?",
    },
    "signal_executions": {
        "id": "uuid",
        "signal_id": "integer",
        "agent_id": "uuid",
        "status": "varchar(20)",
        "transaction_id": "uuid?",
        "error": "text?",
        "executed_at": TS,
    },
    "agent_transactions": {
        "id": "uuid",
        "agent_id": "uuid",
        "wallet_address": "varchar(44)?",
        "transaction_type": "transaction_type",
        "transaction_value_usd": "numeric(20,8)",
        "transaction_time": TS,
        "destination_address": "varchar(255)?",
        "signal_id": "integer?",
        "fees": "numeric(20,8)?",
        "routes": "jsonb?",
        "input_mint": "varchar(255)?",
        "input_symbol": "varchar(50)?",
        "input_amount": "numeric(30,18)?",
        "input_price": "numeric(30,18)?",
        "output_mint": "varchar(255)?",
        "output_symbol": "varchar(50)?",
        "output_amount": "numeric(30,18)?",
        "output_price": "numeric(30,18)?",
        "slippage": "numeric(10,4)?",
        "price_impact": "numeric(10,4)?",
        "is_dca": "boolean",
        "transaction_hash": "varchar(255)?",
        "created_at": TS,
        "updated_at": TS,
        "swap_payload": "jsonb?",
        "is_take_profit": "boolean",
        "protocol_fee_sol": "numeric(20,8)?",
        "network_fee_sol": "numeric(20,8)?",
        # Added by 0002: the position a swap opened, topped up or sold from.
        "position_id": "uuid?",
    },
    "agent_historical_swaps": {
        "id": "uuid",
        "agent_id": "uuid",
        "wallet_address": "varchar(44)?",
        "token_address": "varchar(255)",
        "token_symbol": "varchar(50)",
        "amount": "numeric(30,18)",
        "purchase_price": "numeric(30,18)",
        "sale_price": "numeric(30,18)",
        "change_percent": "numeric(10,4)",
        "profit_loss_usd": "numeric(20,8)",
        "profit_loss_sol": "numeric(20,8)",
        "purchase_time": TS,
        "sale_time": TS,
        "purchase_transaction_id": "uuid?",
        "sale_transaction_id": "uuid?",
        "signal_id": "integer?",
        "created_at": TS,
        "close_reason": "varchar(20)?",
        # Added by 0002: the position the full exit closed.
        "position_id": "uuid?",
    },
    "agent_positions": {
        "id": "uuid",
        "agent_id": "uuid",
        "wallet_address": "varchar(44)",
        "token_address": "varchar(255)",
        "token_symbol": "varchar(50)",
        "purchase_transaction_id": "uuid",
        "purchase_price": "numeric(30,18)",
        "purchase_amount": "numeric(30,18)",
        "current_stop_loss_percentage": "numeric(5,2)?",
        "peak_price": "numeric(30,18)?",
        "last_stop_loss_update": TS_NULL,
        "created_at": TS,
        "updated_at": TS,
        "dca_count": "integer",
        "dca_transaction_ids": "text[]?",
        "last_dca_time": TS_NULL,
        "lowest_price": "numeric(30,18)?",
        "total_invested_sol": "numeric(20,8)",
        "remaining_amount": "numeric(30,18)?",
        "take_profit_levels_hit": "integer",
        "take_profit_transaction_ids": "text[]",
        "last_take_profit_time": TS_NULL,
        "moon_bag_activated": "boolean",
        "moon_bag_amount": "numeric(30,18)?",
        "realized_profit_sol": "numeric(20,8)",
        "tp_batch_start_level": "integer",
        "total_take_profit_levels": "integer?",
        # Added by 0002: net SOL of the take-profit sales so far.
        "take_profit_proceeds_sol": "numeric(20,8)",
        # Added by 0004: the exit rules the position was opened with.
        "exit_rules_id": "uuid?",
    },
    # The worker's own tables.
    "token_prices": {
        "token_address": "varchar(255)",
        "price_usd": "numeric(30,18)",
        "price_ts": TS,
        "updated_at": TS,
    },
    "consumer_offsets": {
        "consumer_group": "text",
        "topic": "text",
        "partition": "integer",
        "next_offset": "bigint",
        "updated_at": TS,
    },
    "schema_migrations": {"name": "text", "checksum": "char(64)", "applied_at": TS},
    "exit_rule_sets": {"id": "uuid", "rules": "jsonb", "created_at": TS},
}

NOW = "now()"
UUID_DEFAULT = "gen_random_uuid()"
EMPTY_TEXT_ARRAY = "'{}'::text[]"
EXPECTED_DEFAULTS: dict[tuple[str, str], str] = {
    **{
        (table, "id"): UUID_DEFAULT
        for table in (
            "users",
            "api_keys",
            "agents",
            "agent_balances",
            "agent_balance_snapshots",
            "signal_executions",
            "agent_transactions",
            "agent_historical_swaps",
            "agent_positions",
        )
    },
    **{
        (table, column): NOW
        for table, columns in EXPECTED_COLUMNS.items()
        for column in columns
        if column in ("created_at", "updated_at", "last_updated", "executed_at", "applied_at")
    },
    ("trading_signals", "id"): "nextval('trading_signals_id_seq'::regclass)",
    ("users", "failed_login_attempts"): "0",
    ("api_keys", "scopes"): EMPTY_TEXT_ARRAY,
    ("agents", "trading_mode"): "'simulation'::character varying",
    ("agents", "automated_trading_simulation"): "true",
    ("agents", "automated_trading_live"): "true",
    ("agent_transactions", "is_dca"): "false",
    ("agent_transactions", "is_take_profit"): "false",
    ("agent_positions", "dca_count"): "0",
    ("agent_positions", "dca_transaction_ids"): EMPTY_TEXT_ARRAY,
    ("agent_positions", "total_invested_sol"): "0",
    ("agent_positions", "take_profit_levels_hit"): "0",
    ("agent_positions", "take_profit_transaction_ids"): EMPTY_TEXT_ARRAY,
    ("agent_positions", "moon_bag_activated"): "false",
    ("agent_positions", "realized_profit_sol"): "0",
    ("agent_positions", "tp_batch_start_level"): "0",
    ("agent_positions", "take_profit_proceeds_sol"): "0",  # added by 0002
}

CASCADE, SET_NULL = "CASCADE", "SET NULL"
# (table, column) -> (referenced table, referenced column, ON DELETE); all ON UPDATE CASCADE.
EXPECTED_FOREIGN_KEYS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("api_keys", "user_id"): ("users", "id", CASCADE),
    ("agents", "user_id"): ("users", "id", CASCADE),
    ("agent_wallets", "agent_id"): ("agents", "id", CASCADE),
    ("agent_balances", "agent_id"): ("agents", "id", CASCADE),
    ("agent_balances", "wallet_address"): ("agent_wallets", "wallet_address", CASCADE),
    ("agent_balance_snapshots", "agent_id"): ("agents", "id", CASCADE),
    ("agent_balance_snapshots", "wallet_address"): ("agent_wallets", "wallet_address", CASCADE),
    ("trading_signals", "user_id"): ("users", "id", SET_NULL),
    ("signal_executions", "signal_id"): ("trading_signals", "id", CASCADE),
    ("signal_executions", "agent_id"): ("agents", "id", CASCADE),
    ("signal_executions", "transaction_id"): ("agent_transactions", "id", SET_NULL),
    ("agent_transactions", "agent_id"): ("agents", "id", CASCADE),
    ("agent_transactions", "wallet_address"): ("agent_wallets", "wallet_address", CASCADE),
    ("agent_transactions", "signal_id"): ("trading_signals", "id", SET_NULL),
    ("agent_historical_swaps", "agent_id"): ("agents", "id", CASCADE),
    ("agent_historical_swaps", "wallet_address"): ("agent_wallets", "wallet_address", CASCADE),
    ("agent_historical_swaps", "purchase_transaction_id"): ("agent_transactions", "id", SET_NULL),
    ("agent_historical_swaps", "sale_transaction_id"): ("agent_transactions", "id", SET_NULL),
    ("agent_historical_swaps", "signal_id"): ("trading_signals", "id", SET_NULL),
    ("agent_positions", "agent_id"): ("agents", "id", CASCADE),
    ("agent_positions", "wallet_address"): ("agent_wallets", "wallet_address", CASCADE),
    ("agent_positions", "purchase_transaction_id"): ("agent_transactions", "id", CASCADE),
}

PK, UNIQUE, INDEX = "primary key", "unique", "index"
_HS = "agent_historical_swaps"
EXPECTED_INDEXES: list[tuple[str, tuple[str, ...], str]] = [
    ("users", ("id",), PK),
    ("users", ("email",), UNIQUE),
    ("api_keys", ("id",), PK),
    ("api_keys", ("key_hash",), UNIQUE),
    ("api_keys", ("user_id",), INDEX),
    # dropped by 0003: ("api_keys", ("key_hash",), INDEX),
    ("agents", ("id",), PK),
    ("agents", ("user_id",), INDEX),
    ("agents", ("automated_trading_simulation",), INDEX),
    ("agents", ("automated_trading_live",), INDEX),
    ("agent_wallets", ("wallet_address",), PK),
    ("agent_wallets", ("agent_id", "wallet_type"), UNIQUE),
    ("agent_wallets", ("agent_id",), INDEX),
    ("agent_balances", ("id",), PK),
    ("agent_balances", ("wallet_address", "token_address"), UNIQUE),
    # dropped by 0003: ("agent_balances", ("agent_id",), INDEX),
    # dropped by 0003: ("agent_balances", ("wallet_address",), INDEX),
    ("agent_balances", ("agent_id", "wallet_address"), INDEX),
    ("agent_balances", ("token_address",), INDEX),
    ("agent_balance_snapshots", ("id",), PK),
    ("agent_balance_snapshots", ("agent_id", "wallet_address", "snapshot_timestamp"), UNIQUE),
    # dropped by 0003: the snapshots (agent_id, wallet_address, snapshot_timestamp) index
    ("agent_balance_snapshots", ("wallet_address",), INDEX),
    ("agent_balance_snapshots", ("snapshot_timestamp",), INDEX),
    ("trading_signals", ("id",), PK),
    ("trading_signals", ("user_id", "idempotency_key"), UNIQUE),
    ("trading_signals", ("token_address",), INDEX),
    ("trading_signals", ("signal_type",), INDEX),
    ("trading_signals", ("created_at",), INDEX),
    ("trading_signals", ("user_id",), INDEX),
    ("signal_executions", ("id",), PK),
    ("signal_executions", ("signal_id", "agent_id"), UNIQUE),
    # dropped by 0003: ("signal_executions", ("signal_id",), INDEX),
    ("signal_executions", ("agent_id",), INDEX),
    ("agent_transactions", ("id",), PK),
    # dropped by 0003: ("agent_transactions", ("agent_id",), INDEX),
    ("agent_transactions", ("wallet_address",), INDEX),
    ("agent_transactions", ("agent_id", "wallet_address"), INDEX),
    # dropped by 0003: ("agent_transactions", ("transaction_type",), INDEX),
    ("agent_transactions", ("transaction_time",), INDEX),
    ("agent_transactions", ("signal_id",), INDEX),
    ("agent_transactions", ("agent_id", "transaction_time"), INDEX),
    ("agent_transactions", ("agent_id", "transaction_type"), INDEX),
    (_HS, ("id",), PK),
    # dropped by 0003: (_HS, ("agent_id",), INDEX),
    (_HS, ("wallet_address",), INDEX),
    (_HS, ("agent_id", "wallet_address"), INDEX),
    (_HS, ("token_address",), INDEX),
    (_HS, ("signal_id",), INDEX),
    (_HS, ("purchase_transaction_id",), INDEX),
    (_HS, ("sale_transaction_id",), INDEX),
    (_HS, ("purchase_time",), INDEX),
    (_HS, ("sale_time",), INDEX),
    (_HS, ("agent_id", "token_address"), INDEX),
    (_HS, ("agent_id", "purchase_time"), INDEX),
    (_HS, ("agent_id", "sale_time"), INDEX),
    (_HS, ("agent_id", "created_at"), INDEX),
    (_HS, ("agent_id", "signal_id"), INDEX),
    ("agent_positions", ("id",), PK),
    ("agent_positions", ("agent_id", "wallet_address", "token_address"), UNIQUE),
    ("agent_positions", ("purchase_transaction_id",), UNIQUE),
    # dropped by 0003: ("agent_positions", ("agent_id", "wallet_address"), INDEX),
    ("agent_positions", ("token_address",), INDEX),  # price-tick exits scan per token
    # dropped by 0003: ("agent_positions", ("agent_id",), INDEX),
    # dropped by 0003: ("agent_positions", ("purchase_transaction_id",), INDEX),
    ("token_prices", ("token_address",), PK),
    ("consumer_offsets", ("consumer_group", "topic", "partition"), PK),
    ("schema_migrations", ("name",), PK),
    # Added by 0002.
    ("agent_transactions", ("position_id",), INDEX),
    ("agent_historical_swaps", ("position_id",), UNIQUE),
    # Added by 0004.
    ("exit_rule_sets", ("id",), PK),
]

SELECT_COLUMNS = """
SELECT table_name, column_name, data_type, udt_name, is_nullable,
       character_maximum_length, numeric_precision, numeric_scale, datetime_precision,
       column_default
FROM information_schema.columns
WHERE table_schema = 'public'
"""
SELECT_TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
"""
SELECT_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text AS tbl, a.attname AS col,
       c.confrelid::regclass::text AS ref_tbl, af.attname AS ref_col,
       c.confdeltype::text AS on_delete, c.confupdtype::text AS on_update
FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey, c.confkey) AS k(attnum, ref_attnum)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = k.ref_attnum
WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
"""
SELECT_INDEXES = """
SELECT t.relname AS tbl, i.indisprimary AS is_primary, i.indisunique AS is_unique,
       array_agg(a.attname ORDER BY k.ord) AS cols
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE t.relnamespace = 'public'::regnamespace
GROUP BY i.indexrelid, t.relname, i.indisprimary, i.indisunique
"""
_FK_ACTIONS = {"c": CASCADE, "n": SET_NULL, "a": "NO ACTION", "r": "RESTRICT", "d": "SET DEFAULT"}


def _type_of(col: asyncpg.Record) -> str:
    data_type = col["data_type"]
    if data_type == "character varying":
        shown = f"varchar({col['character_maximum_length']})"
    elif data_type == "character":
        shown = f"char({col['character_maximum_length']})"
    elif data_type == "numeric":
        shown = f"numeric({col['numeric_precision']},{col['numeric_scale']})"
    elif data_type == "timestamp with time zone":
        assert col["datetime_precision"] == 6, col["column_name"]
        shown = TS
    elif data_type == "ARRAY":
        shown = f"{col['udt_name'].removeprefix('_')}[]"
    elif data_type == "USER-DEFINED":
        shown = col["udt_name"]
    else:
        shown = data_type
    return shown + ("?" if col["is_nullable"] == "YES" else "")


async def test_tables_match_the_contract(db_conn: asyncpg.Connection) -> None:
    tables = {r["table_name"] for r in await db_conn.fetch(SELECT_TABLES)}
    assert tables == set(EXPECTED_COLUMNS)


async def test_columns_and_types_match_the_contract(db_conn: asyncpg.Connection) -> None:
    actual: dict[str, dict[str, str]] = {}
    for col in await db_conn.fetch(SELECT_COLUMNS):
        actual.setdefault(col["table_name"], {})[col["column_name"]] = _type_of(col)
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
        (r["tbl"], r["col"]): (r["ref_tbl"], r["ref_col"], _FK_ACTIONS[r["on_delete"]])
        for r in rows
    }
    assert len(rows) == len(actual)  # single-column keys only
    assert actual == EXPECTED_FOREIGN_KEYS
    assert {_FK_ACTIONS[r["on_update"]] for r in rows} == {CASCADE}


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
    ):
        comment = await db_conn.fetchval("SELECT obj_description($1::regclass, 'pg_class')", table)
        assert comment is not None, table
        assert words in comment, table


# --------------------------------------------------------------------- test data helpers


async def add_user(conn: asyncpg.Connection) -> UUID:
    email = f"{uuid.uuid4().hex}@example.com"
    user_id: UUID = await conn.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
    return user_id


async def add_agent(
    conn: asyncpg.Connection,
    user_id: UUID,
    *,
    mode: str = "simulation",
    config: Any = None,
    simulation_on: bool = True,
    live_on: bool = True,
) -> UUID:
    agent_id: UUID = await conn.fetchval(
        """
        INSERT INTO agents (user_id, name, trading_mode, trading_config,
                            automated_trading_simulation, automated_trading_live)
        VALUES ($1, 'agent', $2, $3::jsonb, $4, $5) RETURNING id
        """,
        user_id,
        mode,
        None if config is None else json.dumps(config),
        simulation_on,
        live_on,
    )
    return agent_id


async def add_wallet(conn: asyncpg.Connection, agent_id: UUID, wallet_type: str) -> str:
    address = f"sim_{uuid.uuid4().hex}"
    await conn.execute(
        "INSERT INTO agent_wallets (wallet_address, agent_id, wallet_type) VALUES ($1, $2, $3)",
        address,
        agent_id,
        wallet_type,
    )
    return address


async def add_balance(
    conn: asyncpg.Connection, agent_id: UUID, wallet: str, token: str, amount: Decimal
) -> None:
    await conn.execute(
        """
        INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance)
        VALUES ($1, $2, $3, 'SYM', $4)
        """,
        agent_id,
        wallet,
        token,
        amount,
    )


async def add_signal(conn: asyncpg.Connection, user_id: UUID | None) -> int:
    signal_id: int = await conn.fetchval(
        """
        INSERT INTO trading_signals (token_address, signal_type, signal_strength, user_id,
                                     idempotency_key)
        VALUES ($1, 'Velocity (Dex Boost Detection)', 3, $2, $3) RETURNING id
        """,
        MINT,
        user_id,
        uuid.uuid4().hex,
    )
    return signal_id


async def add_transaction(
    conn: asyncpg.Connection, agent_id: UUID, wallet: str, signal_id: int | None
) -> UUID:
    tx_id: UUID = await conn.fetchval(
        """
        INSERT INTO agent_transactions (
            agent_id, wallet_address, transaction_type, transaction_value_usd, transaction_time,
            signal_id, input_mint, input_symbol, input_amount, input_price,
            output_mint, output_symbol, output_amount, output_price,
            protocol_fee_sol, network_fee_sol
        )
        VALUES ($1, $2, 'SWAP', 15, now(), $3, $4, 'SOL', 0.1, 1, $5, 'TOK', 1000, 0.0001, 0,
                0.000005)
        RETURNING id
        """,
        agent_id,
        wallet,
        signal_id,
        SOL_MINT,
        MINT,
    )
    return tx_id


async def add_position(
    conn: asyncpg.Connection, agent_id: UUID, wallet: str, token: str, tx_id: UUID | None = None
) -> UUID:
    if tx_id is None:
        tx_id = await add_transaction(conn, agent_id, wallet, None)
    position_id: UUID = await conn.fetchval(
        """
        INSERT INTO agent_positions (agent_id, wallet_address, token_address, token_symbol,
                                     purchase_transaction_id, purchase_price, purchase_amount,
                                     total_invested_sol)
        VALUES ($1, $2, $3, 'TOK', $4, 0.0001, 1000, 0.100005) RETURNING id
        """,
        agent_id,
        wallet,
        token,
        tx_id,
    )
    return position_id


@dataclass(frozen=True)
class Graph:
    """One user with every kind of row hanging off it."""

    user_id: UUID
    agent_id: UUID
    wallet: str
    signal_id: int
    tx_id: UUID


async def add_graph(conn: asyncpg.Connection) -> Graph:
    user_id = await add_user(conn)
    await conn.execute(
        """
        INSERT INTO api_keys (user_id, name, key_hash, key_prefix, scopes)
        VALUES ($1, 'ci', $2, 'nex_abcd', ARRAY['signals'])
        """,
        user_id,
        uuid.uuid4().hex,
    )
    agent_id = await add_agent(conn, user_id)
    wallet = await add_wallet(conn, agent_id, "simulation")
    await add_balance(conn, agent_id, wallet, SOL_MINT, Decimal("0.899995"))
    await add_balance(conn, agent_id, wallet, MINT, Decimal(1000))
    signal_id = await add_signal(conn, user_id)
    tx_id = await add_transaction(conn, agent_id, wallet, signal_id)
    await add_position(conn, agent_id, wallet, MINT, tx_id)
    await conn.execute(
        """
        INSERT INTO signal_executions (signal_id, agent_id, status, transaction_id)
        VALUES ($1, $2, 'success', $3)
        """,
        signal_id,
        agent_id,
        tx_id,
    )
    await conn.execute(
        """
        INSERT INTO agent_historical_swaps (
            agent_id, wallet_address, token_address, token_symbol, amount, purchase_price,
            sale_price, change_percent, profit_loss_usd, profit_loss_sol, purchase_time,
            sale_time, purchase_transaction_id, signal_id, close_reason
        )
        VALUES ($1, $2, $3, 'TOK', 10, 0.0001, 0.0002, 100, 0.15, 0.001, now(), now(), $4, $5,
                'take_profit')
        """,
        agent_id,
        wallet,
        MINT,
        tx_id,
        signal_id,
    )
    await conn.execute(
        """
        INSERT INTO agent_balance_snapshots (
            agent_id, wallet_address, snapshot_timestamp, portfolio_balance_sol, sol_balance,
            positions_value_sol, unrealized_pnl_sol
        )
        VALUES ($1, $2, date_trunc('hour', now()), 1, 0.9, 0.1, -0.000005)
        """,
        agent_id,
        wallet,
    )
    await conn.execute(
        """
        INSERT INTO token_prices (token_address, price_usd, price_ts) VALUES ($1, 150, now())
        ON CONFLICT DO NOTHING
        """,
        SOL_MINT,
    )
    await conn.execute(
        """
        INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
        VALUES ('signal-worker', 'trading-signals', 0, 42)
        ON CONFLICT DO NOTHING
        """
    )
    return Graph(user_id, agent_id, wallet, signal_id, tx_id)


async def count(conn: asyncpg.Connection, table: str) -> int:
    n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return n


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


# ------------------------------------------------------------------- worker.db.agents


async def test_user_exists(db_conn: asyncpg.Connection) -> None:
    user_id = await add_user(db_conn)

    assert await user_exists(db_conn, user_id) is True
    assert await user_exists(db_conn, uuid.uuid4()) is False


@dataclass(frozen=True)
class Fleet:
    user_id: UUID
    expected: list[Subscriber]


async def add_fleet(conn: asyncpg.Connection) -> Fleet:
    """One user's agents in every wallet situation, plus another user's agent."""
    user_id = await add_user(conn)
    config = {"signals": {"minScore": 3}, "purchaseLimits": {"minimumAgentBalance": 0.5}}
    expected: list[Subscriber] = []

    # Simulation wallet with SOL and two positions, one in the signal's token; its live
    # wallet's positions do not count.
    full = await add_agent(conn, user_id, config=config)
    sim = await add_wallet(conn, full, "simulation")
    live = await add_wallet(conn, full, "live")
    await add_balance(conn, full, sim, SOL_MINT, Decimal("1.5"))
    await add_balance(conn, full, sim, MINT, Decimal(1000))
    await add_balance(conn, full, live, SOL_MINT, Decimal(7))
    await add_position(conn, full, sim, MINT)
    await add_position(conn, full, sim, OTHER_MINT)
    await add_position(conn, full, live, "LiveOnlyMint1111111111111111111111111111111")
    expected.append(
        Subscriber(
            full,
            "simulation",
            True,
            True,
            sim,
            Decimal("1.5"),
            2,
            True,
        )
    )

    # No wallet at all.
    bare = await add_agent(conn, user_id)
    expected.append(Subscriber(bare, "simulation", True, True, None, None, 0, False))

    # Live mode, but only a simulation wallet: no wallet for its mode.
    mismatched = await add_agent(conn, user_id, mode="live", config={})
    other_sim = await add_wallet(conn, mismatched, "simulation")
    await add_balance(conn, mismatched, other_sim, SOL_MINT, Decimal(3))
    await add_position(conn, mismatched, other_sim, MINT)
    expected.append(Subscriber(mismatched, "live", True, True, None, None, 0, False))

    # A wallet with a token but no SOL row; automated simulation trading off.
    no_sol = await add_agent(conn, user_id, simulation_on=False)
    no_sol_wallet = await add_wallet(conn, no_sol, "simulation")
    await add_balance(conn, no_sol, no_sol_wallet, OTHER_MINT, Decimal(5))
    await add_position(conn, no_sol, no_sol_wallet, OTHER_MINT)
    expected.append(Subscriber(no_sol, "simulation", False, True, no_sol_wallet, None, 1, False))

    # Live mode with a live wallet holding the smallest amount of SOL.
    live_agent = await add_agent(conn, user_id, mode="live", live_on=False)
    live_wallet = await add_wallet(conn, live_agent, "live")
    await add_balance(conn, live_agent, live_wallet, SOL_MINT, TINY)
    expected.append(Subscriber(live_agent, "live", True, False, live_wallet, TINY, 0, False))

    # Someone else's agent, holding the token: never a subscriber.
    stranger = await add_user(conn)
    theirs = await add_agent(conn, stranger)
    their_wallet = await add_wallet(conn, theirs, "simulation")
    await add_balance(conn, theirs, their_wallet, SOL_MINT, Decimal(2))
    await add_position(conn, theirs, their_wallet, MINT)

    return Fleet(user_id, sorted(expected, key=lambda s: s.agent_id))


def assert_exact_balances(subscribers: list[Subscriber]) -> None:
    # Equality alone would not notice a float: 1.5 == Decimal("1.5").
    balances = [s.sol_balance for s in subscribers if s.sol_balance is not None]
    assert len(balances) == 2
    assert all(type(b) is Decimal for b in balances)


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


def make_signal(user_id: UUID, key: str = "key-1", **fields: Any) -> Signal:
    values: dict[str, Any] = {
        "user_id": user_id,
        "token_address": MINT,
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 4,
        "idempotency_key": key,
        "created_at": datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        **fields,
    }
    return Signal(**values)


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
    assert await insert_executions(db_conn, rows) == 3
    assert await existing_executions(db_conn, signal_id) == set(agents[:3])

    replay = [
        ExecutionRow(signal_id, agents[0], ExecutionStatus.FAILED, None, "replayed"),
        *rows[1:],
        ExecutionRow(signal_id, agents[3], ExecutionStatus.SKIPPED, None, "at limit"),
    ]
    assert await insert_executions(db_conn, replay) == 1
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

    assert await insert_executions(db_conn, [row, row]) == 1
    assert await insert_executions(db_conn, []) == 0
    assert await existing_executions(db_conn, signal_id) == {graph.agent_id}
