"""The expected schema of contract section 5 (domain.md section 9 plus its deliberate
differences and this worker's additions), and the catalog queries that read the real one."""

from __future__ import annotations

import asyncpg

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
        # Added by 0007: the time the signal was decided at (NULL: created_at).
        "event_at": TS_NULL,
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
        # Added by 0006: the id of the topic the offset belongs to.
        "topic_id": "text?",
        # Added by 0009: the decision time of the record before the offset.
        "event_at": TS_NULL,
    },
    # Added by 0010: where each partition stands in the one order, for the other workers.
    "order_bounds": {
        "consumer_group": "text",
        "topic": "text",
        "partition": "integer",
        "bound_at": TS_NULL,
        "bound_rank": "integer",
        "bound_tie": "jsonb",
        "excluded": "boolean",
        "promised_at": TS_NULL,
        "promised_from": "bigint?",
        "updated_at": TS,
    },
    # Added by 0011: each command from COMMANDS_TOPIC once, applied or refused.
    "command_results": {
        "id": "bigint",
        "user_id": "uuid",
        "idempotency_key": "varchar(200)",
        "command": "varchar(40)",
        "status": "varchar(10)",
        "reason": "text?",
        "agent_id": "uuid?",
        "payload": "jsonb",
        "changes": "jsonb?",
        "event_at": TS,
        "source_record": "text?",
        "created_at": TS,
    },
    # Added by 0013: the transactional outbox of trade events.
    "event_outbox": {
        "id": "bigint",
        "event_id": "uuid",
        "user_id": "uuid?",
        "type": "varchar(30)",
        "event_at": TS,
        "payload": "jsonb",
        "created_at": TS,
        "published_at": TS_NULL,
    },
    # Added by 0014: `notify`'s progress per webhook.
    "notify_offsets": {
        "webhook_id": "varchar(64)",
        "topic": "text",
        "partition": "integer",
        "next_offset": "bigint",
        "updated_at": TS,
    },
    "notify_posted": {
        "webhook_id": "varchar(64)",
        "event_id": "uuid",
        "topic": "text",
        "partition": "integer",
        "kafka_offset": "bigint",
        "outcome": "varchar(10)",
        "reason": "text?",
        "posted_at": TS,
    },
    # Added by 0012: dead letters redriven by `dlq redrive`, once each by original record.
    "dlq_redrives": {
        "original_topic": "text",
        "original_partition": "integer",
        "original_offset": "bigint",
        "dlq_topic": "text",
        "dlq_partition": "integer",
        "dlq_offset": "bigint",
        "reason": "text",
        "status": "text",
        "forced": "boolean",
        "sent_to": "text?",
        "created_at": TS,
        "sent_at": TS_NULL,
    },
    "schema_migrations": {"name": "text", "checksum": "char(64)", "applied_at": TS},
    "exit_rule_sets": {"id": "uuid", "rules": "jsonb", "created_at": TS},
    # Added by 0005 (partitioned by day; the partitions are not listed).
    "token_price_history": {
        "token_address": "varchar(255)",
        "price_usd": "numeric(30,18)",
        "price_ts": TS,
        "recorded_at": TS,
        # Added by 0007: the time the tick was decided at (NULL: price_ts).
        "event_at": TS_NULL,
    },
    # Added by 0008 (written by triggers on agents).
    "agent_config_history": {
        "id": "bigint",
        "agent_id": "uuid",
        "valid_from": TS,
        "trading_mode": "varchar(20)",
        "trading_config": "jsonb?",
        "automated_trading_simulation": "boolean",
        "automated_trading_live": "boolean",
        "recorded_at": TS,
    },
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
        if column
        in (
            "created_at",
            "updated_at",
            "last_updated",
            "executed_at",
            "applied_at",
            "recorded_at",
            "posted_at",
        )
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
    ("order_bounds", "bound_rank"): "0",  # added by 0010
    ("order_bounds", "bound_tie"): "'[]'::jsonb",
    ("order_bounds", "excluded"): "false",
    ("dlq_redrives", "forced"): "false",  # added by 0012
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
    ("agent_config_history", "agent_id"): ("agents", "id", CASCADE),  # added by 0008
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
    ("order_bounds", ("consumer_group", "topic", "partition"), PK),
    ("dlq_redrives", ("original_topic", "original_partition", "original_offset"), PK),
    ("command_results", ("id",), PK),
    ("event_outbox", ("id",), PK),
    ("event_outbox", ("event_id",), UNIQUE),
    ("event_outbox", ("id",), INDEX),
    ("event_outbox", ("published_at",), INDEX),
    ("notify_offsets", ("webhook_id", "topic", "partition"), PK),
    ("notify_posted", ("webhook_id", "event_id"), PK),
    ("notify_posted", ("webhook_id", "topic", "partition", "kafka_offset"), INDEX),
    ("command_results", ("user_id", "idempotency_key"), UNIQUE),
    ("command_results", ("agent_id", "event_at"), INDEX),
    ("command_results", ("event_at",), INDEX),
    ("schema_migrations", ("name",), PK),
    # Added by 0002.
    ("agent_transactions", ("position_id",), INDEX),
    ("agent_historical_swaps", ("position_id",), UNIQUE),
    # Added by 0004.
    ("exit_rule_sets", ("id",), PK),
    # Added by 0005.
    ("token_price_history", ("token_address", "price_ts"), INDEX),
    # Added by 0008.
    ("agent_config_history", ("id",), PK),
    ("agent_config_history", ("agent_id", "valid_from", "id"), INDEX),
]

SELECT_COLUMNS = """
SELECT table_name, column_name, data_type, udt_name, is_nullable,
       character_maximum_length, numeric_precision, numeric_scale, datetime_precision,
       column_default
FROM information_schema.columns
WHERE table_schema = 'public'
  AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)
"""
SELECT_TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
  AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)
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
WHERE t.relnamespace = 'public'::regnamespace AND NOT t.relispartition
GROUP BY i.indexrelid, t.relname, i.indisprimary, i.indisunique
"""
FK_ACTIONS = {"c": CASCADE, "n": SET_NULL, "a": "NO ACTION", "r": "RESTRICT", "d": "SET DEFAULT"}


def type_of(col: asyncpg.Record) -> str:
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
