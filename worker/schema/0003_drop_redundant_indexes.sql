-- 0003_drop_redundant_indexes: indexes of the design that only cost writes.
--
-- Each index dropped here is a leading prefix of another index (or the same columns as a
-- unique key) on the same table. PostgreSQL answers every query, and checks every foreign
-- key on delete, that the dropped one served with the wider index just as well, so they
-- only made each buy, sale and execution write more index entries: the hot path of the
-- worker writes agent_transactions, agent_balances, agent_positions and
-- signal_executions once or more per agent and signal. (The design's (transaction_type)
-- index on its own is dropped too: four values, never selective; agent-scoped queries use
-- (agent_id, transaction_type).)
--
--   dropped                                            served by
--   agent_transactions (agent_id)                      (agent_id, wallet_address), ...
--   agent_transactions (transaction_type)              (agent_id, transaction_type)
--   agent_balances (agent_id)                          (agent_id, wallet_address)
--   agent_balances (wallet_address)                    UNIQUE (wallet_address, token_address)
--   agent_positions (agent_id)                         UNIQUE (agent_id, wallet_address, token_address)
--   agent_positions (agent_id, wallet_address)         the same unique key
--   agent_positions (purchase_transaction_id)          UNIQUE (purchase_transaction_id)
--   signal_executions (signal_id)                      UNIQUE (signal_id, agent_id)
--   agent_historical_swaps (agent_id)                  (agent_id, wallet_address), ...
--   api_keys (key_hash)                                UNIQUE (key_hash)
--   agent_balance_snapshots (agent_id, wallet_address, snapshot_timestamp)
--                                                      the unique key on the same columns
--
-- The SOL balance row of a wallet is updated by every trade; a fill factor below 100
-- leaves room on its page so that those updates are HOT (no index entries at all).

DROP INDEX agent_transactions_agent_id_idx;
DROP INDEX agent_transactions_transaction_type_idx;
DROP INDEX agent_balances_agent_id_idx;
DROP INDEX agent_balances_wallet_address_idx;
DROP INDEX agent_positions_agent_id_idx;
DROP INDEX agent_positions_agent_id_wallet_address_idx;
DROP INDEX agent_positions_purchase_transaction_id_idx;
DROP INDEX signal_executions_signal_id_idx;
DROP INDEX agent_historical_swaps_agent_id_idx;
DROP INDEX api_keys_key_hash_idx;
DROP INDEX abs_agent_wallet_timestamp_idx;

ALTER TABLE agent_balances SET (fillfactor = 80);
ALTER TABLE agent_positions SET (fillfactor = 85);
