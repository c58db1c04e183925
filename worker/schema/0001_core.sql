-- 0001_core: the eleven entities of the design (docs/domain.md section 9) and the two
-- tables the worker adds for itself (token_prices, consumer_offsets).
--
-- Forward-only: once applied anywhere, never edit this file (`migrate` refuses to run when
-- an applied file's checksum changed); add schema/NNNN_name.sql instead.
--
-- Table and column names, types, precisions, defaults, foreign keys (ON DELETE CASCADE
-- from parents, SET NULL where the design says so; ON UPDATE CASCADE everywhere), unique
-- keys and indexes are those of the design. Deliberate differences (contract.md section 5):
--   * agent_balances.balance is numeric(30,18), not text: balances are summed and compared
--     in SQL, and a text column cannot be checked or summed exactly.
--   * every symbol column is varchar(50) (the design has 20 in balances, positions,
--     transactions and historical swaps but 50 in signals, so a long signal symbol failed
--     the buy's write).
--   * uuid primary keys DEFAULT gen_random_uuid(); updated_at / last_updated DEFAULT now()
--     (the design sets both only in the application).
--   * transaction_type keeps all four values DEPOSIT, WITHDRAWAL, SWAP, BURN (the design's
--     Prisma file lists three, its migrations four); it is the design's "TransactionType".
--   * CHECK constraints (the design has none): wallet_type and trading_mode are
--     'simulation' or 'live'; execution status is 'success', 'failed' or 'skipped' (the
--     outcomes of contract section 3, in place of PENDING/EXECUTED/FAILED);
--     signal_strength is 1 to 5; balances, amounts, prices, fees and counters that cannot
--     be negative are >= 0; close_reason is one of the four reasons of a full exit.
--   * trading_signals gains idempotency_key (UNIQUE with user_id: the same key from the
--     same user is the same signal, however often it is delivered) and the optional
--     market data of the signal: price_usd, market_cap_usd, liquidity_usd, holder_count.
-- Some of the design's plain indexes repeat a unique key's columns (api_keys.key_hash,
-- agent_positions.purchase_transaction_id, the snapshots' key); they are kept as designed.

CREATE TYPE transaction_type AS ENUM ('DEPOSIT', 'WITHDRAWAL', 'SWAP', 'BURN');

-- ------------------------------------------------------------------------------- users

CREATE TABLE users (
    id                    uuid         NOT NULL DEFAULT gen_random_uuid(),
    email                 varchar(255) NOT NULL,
    password_hash         varchar(255),
    created_at            timestamptz(6) NOT NULL DEFAULT now(),
    failed_login_attempts integer      NOT NULL DEFAULT 0,
    locked_until          timestamptz(6),
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_failed_login_attempts_check CHECK (failed_login_attempts >= 0)
);

CREATE TABLE api_keys (
    id          uuid         NOT NULL DEFAULT gen_random_uuid(),
    user_id     uuid         NOT NULL,
    name        varchar(100) NOT NULL,
    key_hash    varchar(255) NOT NULL,
    key_prefix  varchar(12)  NOT NULL,
    scopes      text[]                DEFAULT '{}',
    created_at  timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);
CREATE INDEX api_keys_key_hash_idx ON api_keys (key_hash);

-- ------------------------------------------------------------------------------ agents

CREATE TABLE agents (
    id                           uuid         NOT NULL DEFAULT gen_random_uuid(),
    user_id                      uuid         NOT NULL,
    name                         varchar(255) NOT NULL,
    trading_mode                 varchar(20)  NOT NULL DEFAULT 'simulation',
    trading_config               jsonb,
    created_at                   timestamptz(6) NOT NULL DEFAULT now(),
    updated_at                   timestamptz(6) NOT NULL DEFAULT now(),
    automated_trading_simulation boolean      NOT NULL DEFAULT true,
    automated_trading_live       boolean      NOT NULL DEFAULT true,
    CONSTRAINT agents_pkey PRIMARY KEY (id),
    CONSTRAINT agents_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agents_trading_mode_check CHECK (trading_mode IN ('simulation', 'live'))
);
CREATE INDEX agents_user_id_idx ON agents (user_id);
CREATE INDEX agents_automated_trading_simulation_idx ON agents (automated_trading_simulation);
CREATE INDEX agents_automated_trading_live_idx ON agents (automated_trading_live);

CREATE TABLE agent_wallets (
    wallet_address varchar(44) NOT NULL,
    agent_id       uuid        NOT NULL,
    wallet_type    varchar(20) NOT NULL,
    created_at     timestamptz(6) NOT NULL DEFAULT now(),
    updated_at     timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT agent_wallets_pkey PRIMARY KEY (wallet_address),
    CONSTRAINT agent_wallets_agent_id_wallet_type_key UNIQUE (agent_id, wallet_type),
    CONSTRAINT agent_wallets_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_wallets_wallet_type_check CHECK (wallet_type IN ('simulation', 'live'))
);
CREATE INDEX agent_wallets_agent_id_idx ON agent_wallets (agent_id);

CREATE TABLE agent_balances (
    id             uuid           NOT NULL DEFAULT gen_random_uuid(),
    agent_id       uuid           NOT NULL,
    wallet_address varchar(44)    NOT NULL,
    token_address  varchar(255)   NOT NULL,
    token_symbol   varchar(50)    NOT NULL,
    balance        numeric(30,18) NOT NULL,
    last_updated   timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT agent_balances_pkey PRIMARY KEY (id),
    CONSTRAINT agent_balances_wallet_address_token_address_key
        UNIQUE (wallet_address, token_address),
    CONSTRAINT agent_balances_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_balances_wallet_address_fkey FOREIGN KEY (wallet_address)
        REFERENCES agent_wallets (wallet_address) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_balances_balance_check CHECK (balance >= 0)
);
CREATE INDEX agent_balances_agent_id_idx ON agent_balances (agent_id);
CREATE INDEX agent_balances_wallet_address_idx ON agent_balances (wallet_address);
CREATE INDEX agent_balances_agent_id_wallet_address_idx
    ON agent_balances (agent_id, wallet_address);
CREATE INDEX agent_balances_token_address_idx ON agent_balances (token_address);

-- ----------------------------------------------------------------------------- signals

CREATE TABLE trading_signals (
    id                serial       NOT NULL,
    created_at        timestamptz(6) NOT NULL DEFAULT now(),
    updated_at        timestamptz(6) NOT NULL DEFAULT now(),
    token_address     varchar(255) NOT NULL,
    symbol            varchar(50),
    signal_type       varchar(50)  NOT NULL,
    activation_reason text,
    signal_strength   integer      NOT NULL,
    source            varchar(100),
    user_id           uuid,
    idempotency_key   varchar(200) NOT NULL,
    price_usd         numeric(30,18),
    market_cap_usd    numeric(30,8),
    liquidity_usd     numeric(30,8),
    holder_count      integer,
    CONSTRAINT trading_signals_pkey PRIMARY KEY (id),
    CONSTRAINT trading_signals_user_id_idempotency_key_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT trading_signals_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT trading_signals_signal_strength_check CHECK (signal_strength BETWEEN 1 AND 5),
    CONSTRAINT trading_signals_signal_type_check CHECK (btrim(signal_type) <> ''),
    CONSTRAINT trading_signals_price_usd_check CHECK (price_usd > 0),
    CONSTRAINT trading_signals_market_cap_usd_check CHECK (market_cap_usd > 0),
    CONSTRAINT trading_signals_liquidity_usd_check CHECK (liquidity_usd > 0),
    CONSTRAINT trading_signals_holder_count_check CHECK (holder_count >= 0)
);
CREATE INDEX trading_signals_token_address_idx ON trading_signals (token_address);
CREATE INDEX trading_signals_signal_type_idx ON trading_signals (signal_type);
CREATE INDEX trading_signals_created_at_idx ON trading_signals (created_at);
CREATE INDEX trading_signals_user_id_idx ON trading_signals (user_id);

-- ------------------------------------------------------------------------ transactions

CREATE TABLE agent_transactions (
    id                    uuid             NOT NULL DEFAULT gen_random_uuid(),
    agent_id              uuid             NOT NULL,
    wallet_address        varchar(44),
    transaction_type      transaction_type NOT NULL,
    transaction_value_usd numeric(20,8)    NOT NULL,
    transaction_time      timestamptz(6)   NOT NULL,
    destination_address   varchar(255),
    signal_id             integer,
    fees                  numeric(20,8),
    routes                jsonb,
    input_mint            varchar(255),
    input_symbol          varchar(50),
    input_amount          numeric(30,18),
    input_price           numeric(30,18),
    output_mint           varchar(255),
    output_symbol         varchar(50),
    output_amount         numeric(30,18),
    output_price          numeric(30,18),
    slippage              numeric(10,4),
    price_impact          numeric(10,4),
    is_dca                boolean          NOT NULL DEFAULT false,
    transaction_hash      varchar(255),
    created_at            timestamptz(6)   NOT NULL DEFAULT now(),
    updated_at            timestamptz(6)   NOT NULL DEFAULT now(),
    swap_payload          jsonb,
    is_take_profit        boolean          NOT NULL DEFAULT false,
    protocol_fee_sol      numeric(20,8),
    network_fee_sol       numeric(20,8),
    CONSTRAINT agent_transactions_pkey PRIMARY KEY (id),
    CONSTRAINT agent_transactions_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_transactions_wallet_address_fkey FOREIGN KEY (wallet_address)
        REFERENCES agent_wallets (wallet_address) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_transactions_signal_id_fkey FOREIGN KEY (signal_id)
        REFERENCES trading_signals (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT agent_transactions_transaction_value_usd_check CHECK (transaction_value_usd >= 0),
    CONSTRAINT agent_transactions_fees_check CHECK (fees >= 0),
    CONSTRAINT agent_transactions_input_amount_check CHECK (input_amount >= 0),
    CONSTRAINT agent_transactions_input_price_check CHECK (input_price >= 0),
    CONSTRAINT agent_transactions_output_amount_check CHECK (output_amount >= 0),
    CONSTRAINT agent_transactions_output_price_check CHECK (output_price >= 0),
    CONSTRAINT agent_transactions_protocol_fee_sol_check CHECK (protocol_fee_sol >= 0),
    CONSTRAINT agent_transactions_network_fee_sol_check CHECK (network_fee_sol >= 0)
);
CREATE INDEX agent_transactions_agent_id_idx ON agent_transactions (agent_id);
CREATE INDEX agent_transactions_wallet_address_idx ON agent_transactions (wallet_address);
CREATE INDEX agent_transactions_agent_id_wallet_address_idx
    ON agent_transactions (agent_id, wallet_address);
CREATE INDEX agent_transactions_transaction_type_idx ON agent_transactions (transaction_type);
CREATE INDEX agent_transactions_transaction_time_idx ON agent_transactions (transaction_time);
CREATE INDEX agent_transactions_signal_id_idx ON agent_transactions (signal_id);
CREATE INDEX agent_transactions_agent_id_transaction_time_idx
    ON agent_transactions (agent_id, transaction_time);
CREATE INDEX agent_transactions_agent_id_transaction_type_idx
    ON agent_transactions (agent_id, transaction_type);

-- --------------------------------------------------------------------------- positions

CREATE TABLE agent_positions (
    id                           uuid           NOT NULL DEFAULT gen_random_uuid(),
    agent_id                     uuid           NOT NULL,
    wallet_address               varchar(44)    NOT NULL,
    token_address                varchar(255)   NOT NULL,
    token_symbol                 varchar(50)    NOT NULL,
    purchase_transaction_id      uuid           NOT NULL,
    purchase_price               numeric(30,18) NOT NULL,
    purchase_amount              numeric(30,18) NOT NULL,
    current_stop_loss_percentage numeric(5,2),
    peak_price                   numeric(30,18),
    last_stop_loss_update        timestamptz(6),
    created_at                   timestamptz(6) NOT NULL DEFAULT now(),
    updated_at                   timestamptz(6) NOT NULL DEFAULT now(),
    dca_count                    integer        NOT NULL DEFAULT 0,
    dca_transaction_ids          text[]                  DEFAULT '{}',
    last_dca_time                timestamptz(6),
    lowest_price                 numeric(30,18),
    total_invested_sol           numeric(20,8)  NOT NULL DEFAULT 0,
    remaining_amount             numeric(30,18),
    take_profit_levels_hit       integer        NOT NULL DEFAULT 0,
    take_profit_transaction_ids  text[]         NOT NULL DEFAULT '{}',
    last_take_profit_time        timestamptz(6),
    moon_bag_activated           boolean        NOT NULL DEFAULT false,
    moon_bag_amount              numeric(30,18),
    realized_profit_sol          numeric(20,8)  NOT NULL DEFAULT 0,
    tp_batch_start_level         integer        NOT NULL DEFAULT 0,
    total_take_profit_levels     integer,
    CONSTRAINT agent_positions_pkey PRIMARY KEY (id),
    CONSTRAINT agent_positions_agent_id_wallet_address_token_address_key
        UNIQUE (agent_id, wallet_address, token_address),
    CONSTRAINT agent_positions_purchase_transaction_id_key UNIQUE (purchase_transaction_id),
    CONSTRAINT agent_positions_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_positions_wallet_address_fkey FOREIGN KEY (wallet_address)
        REFERENCES agent_wallets (wallet_address) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_positions_purchase_transaction_id_fkey FOREIGN KEY (purchase_transaction_id)
        REFERENCES agent_transactions (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_positions_purchase_price_check CHECK (purchase_price >= 0),
    CONSTRAINT agent_positions_purchase_amount_check CHECK (purchase_amount >= 0),
    CONSTRAINT agent_positions_peak_price_check CHECK (peak_price >= 0),
    CONSTRAINT agent_positions_lowest_price_check CHECK (lowest_price >= 0),
    CONSTRAINT agent_positions_total_invested_sol_check CHECK (total_invested_sol >= 0),
    CONSTRAINT agent_positions_remaining_amount_check CHECK (remaining_amount >= 0),
    CONSTRAINT agent_positions_moon_bag_amount_check CHECK (moon_bag_amount >= 0),
    CONSTRAINT agent_positions_dca_count_check CHECK (dca_count >= 0),
    CONSTRAINT agent_positions_take_profit_levels_hit_check CHECK (take_profit_levels_hit >= 0),
    CONSTRAINT agent_positions_tp_batch_start_level_check CHECK (tp_batch_start_level >= 0),
    CONSTRAINT agent_positions_total_take_profit_levels_check
        CHECK (total_take_profit_levels >= 0)
);
CREATE INDEX agent_positions_agent_id_wallet_address_idx
    ON agent_positions (agent_id, wallet_address);
-- Price-tick exits scan every open position in the ticked token.
CREATE INDEX agent_positions_token_address_idx ON agent_positions (token_address);
CREATE INDEX agent_positions_agent_id_idx ON agent_positions (agent_id);
CREATE INDEX agent_positions_purchase_transaction_id_idx
    ON agent_positions (purchase_transaction_id);

-- ----------------------------------------------------------------------------- history

CREATE TABLE agent_historical_swaps (
    id                      uuid           NOT NULL DEFAULT gen_random_uuid(),
    agent_id                uuid           NOT NULL,
    wallet_address          varchar(44),
    token_address           varchar(255)   NOT NULL,
    token_symbol            varchar(50)    NOT NULL,
    amount                  numeric(30,18) NOT NULL,
    purchase_price          numeric(30,18) NOT NULL,
    -- No CHECK: the net SOL of a sale (gross minus fees) can be negative for a worthless token.
    sale_price              numeric(30,18) NOT NULL,
    change_percent          numeric(10,4)  NOT NULL,
    profit_loss_usd         numeric(20,8)  NOT NULL,
    profit_loss_sol         numeric(20,8)  NOT NULL,
    purchase_time           timestamptz(6) NOT NULL,
    sale_time               timestamptz(6) NOT NULL,
    purchase_transaction_id uuid,
    sale_transaction_id     uuid,
    signal_id               integer,
    created_at              timestamptz(6) NOT NULL DEFAULT now(),
    close_reason            varchar(20),
    CONSTRAINT agent_historical_swaps_pkey PRIMARY KEY (id),
    CONSTRAINT agent_historical_swaps_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_historical_swaps_wallet_address_fkey FOREIGN KEY (wallet_address)
        REFERENCES agent_wallets (wallet_address) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_historical_swaps_purchase_transaction_id_fkey
        FOREIGN KEY (purchase_transaction_id)
        REFERENCES agent_transactions (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT agent_historical_swaps_sale_transaction_id_fkey FOREIGN KEY (sale_transaction_id)
        REFERENCES agent_transactions (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT agent_historical_swaps_signal_id_fkey FOREIGN KEY (signal_id)
        REFERENCES trading_signals (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT agent_historical_swaps_amount_check CHECK (amount >= 0),
    CONSTRAINT agent_historical_swaps_purchase_price_check CHECK (purchase_price >= 0),
    CONSTRAINT agent_historical_swaps_close_reason_check
        CHECK (close_reason IN ('stop_loss', 'take_profit', 'stale_trade', 'manual'))
);
CREATE INDEX agent_historical_swaps_agent_id_idx ON agent_historical_swaps (agent_id);
CREATE INDEX agent_historical_swaps_wallet_address_idx ON agent_historical_swaps (wallet_address);
CREATE INDEX agent_historical_swaps_agent_id_wallet_address_idx
    ON agent_historical_swaps (agent_id, wallet_address);
CREATE INDEX agent_historical_swaps_token_address_idx ON agent_historical_swaps (token_address);
CREATE INDEX agent_historical_swaps_signal_id_idx ON agent_historical_swaps (signal_id);
CREATE INDEX agent_historical_swaps_purchase_transaction_id_idx
    ON agent_historical_swaps (purchase_transaction_id);
CREATE INDEX agent_historical_swaps_sale_transaction_id_idx
    ON agent_historical_swaps (sale_transaction_id);
CREATE INDEX agent_historical_swaps_purchase_time_idx ON agent_historical_swaps (purchase_time);
CREATE INDEX agent_historical_swaps_sale_time_idx ON agent_historical_swaps (sale_time);
CREATE INDEX agent_historical_swaps_agent_id_token_address_idx
    ON agent_historical_swaps (agent_id, token_address);
CREATE INDEX agent_historical_swaps_agent_id_purchase_time_idx
    ON agent_historical_swaps (agent_id, purchase_time);
CREATE INDEX agent_historical_swaps_agent_id_sale_time_idx
    ON agent_historical_swaps (agent_id, sale_time);
CREATE INDEX agent_historical_swaps_agent_id_created_at_idx
    ON agent_historical_swaps (agent_id, created_at);
CREATE INDEX agent_historical_swaps_agent_id_signal_id_idx
    ON agent_historical_swaps (agent_id, signal_id);

CREATE TABLE agent_balance_snapshots (
    id                    uuid           NOT NULL DEFAULT gen_random_uuid(),
    agent_id              uuid           NOT NULL,
    snapshot_timestamp    timestamptz(6) NOT NULL,
    portfolio_balance_sol numeric(20,8)  NOT NULL,
    sol_balance           numeric(20,8)  NOT NULL,
    positions_value_sol   numeric(20,8)  NOT NULL,
    unrealized_pnl_sol    numeric(20,8)  NOT NULL,
    created_at            timestamptz(6) NOT NULL DEFAULT now(),
    updated_at            timestamptz(6) NOT NULL DEFAULT now(),
    wallet_address        varchar(44)    NOT NULL,
    CONSTRAINT agent_balance_snapshots_pkey PRIMARY KEY (id),
    CONSTRAINT abs_agent_wallet_timestamp_key
        UNIQUE (agent_id, wallet_address, snapshot_timestamp),
    CONSTRAINT agent_balance_snapshots_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_balance_snapshots_wallet_address_fkey FOREIGN KEY (wallet_address)
        REFERENCES agent_wallets (wallet_address) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT agent_balance_snapshots_portfolio_balance_sol_check
        CHECK (portfolio_balance_sol >= 0),
    CONSTRAINT agent_balance_snapshots_sol_balance_check CHECK (sol_balance >= 0),
    CONSTRAINT agent_balance_snapshots_positions_value_sol_check
        CHECK (positions_value_sol >= 0)
);
CREATE INDEX abs_agent_wallet_timestamp_idx
    ON agent_balance_snapshots (agent_id, wallet_address, snapshot_timestamp);
CREATE INDEX abs_wallet_address_idx ON agent_balance_snapshots (wallet_address);
CREATE INDEX agent_balance_snapshots_snapshot_timestamp_idx
    ON agent_balance_snapshots (snapshot_timestamp);

-- -------------------------------------------------------------------------- executions

CREATE TABLE signal_executions (
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    signal_id      integer     NOT NULL,
    agent_id       uuid        NOT NULL,
    status         varchar(20) NOT NULL,
    transaction_id uuid,
    error          text,
    executed_at    timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT signal_executions_pkey PRIMARY KEY (id),
    CONSTRAINT signal_executions_signal_id_agent_id_key UNIQUE (signal_id, agent_id),
    CONSTRAINT signal_executions_signal_id_fkey FOREIGN KEY (signal_id)
        REFERENCES trading_signals (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT signal_executions_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT signal_executions_transaction_id_fkey FOREIGN KEY (transaction_id)
        REFERENCES agent_transactions (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT signal_executions_status_check
        CHECK (status IN ('success', 'failed', 'skipped'))
);
CREATE INDEX signal_executions_signal_id_idx ON signal_executions (signal_id);
CREATE INDEX signal_executions_agent_id_idx ON signal_executions (agent_id);

-- ----------------------------------------------------------------- the worker's own

CREATE TABLE token_prices (
    token_address varchar(255)   NOT NULL,
    price_usd     numeric(30,18) NOT NULL,
    price_ts      timestamptz    NOT NULL,
    updated_at    timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT token_prices_pkey PRIMARY KEY (token_address),
    CONSTRAINT token_prices_price_usd_check CHECK (price_usd > 0)
);
COMMENT ON TABLE token_prices IS
    'signal-worker: the latest USD price of each token (SOL included, under its mint), from '
    'the price ticks and the prices that signals carry; a tick older than price_ts never '
    'replaces it';

CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT consumer_offsets_pkey PRIMARY KEY (consumer_group, topic, partition),
    CONSTRAINT consumer_offsets_partition_check CHECK (partition >= 0),
    CONSTRAINT consumer_offsets_next_offset_check CHECK (next_offset >= 0)
);
COMMENT ON TABLE consumer_offsets IS
    'signal-worker: the next Kafka offset to process per (group, topic, partition), written '
    'in the same transaction as the rows that offset produced, so a record is applied '
    'exactly once across crashes and rebalances';
