-- 0004_exit_rules_and_signal_provenance: positions keep the exit rules they were opened
-- with; signals keep where they came from; rows the source system's API writes fit.
--
-- 1. exit_rule_sets: the exit sections (stopLoss, takeProfit, dca, staleTrade) of the
--    config a buy was decided with, as canonical JSON, stored once per distinct set: the id
--    is derived from the content (uuid v5), so every position opened with the same rules
--    points at the same row. Ticks use the agent's current config while it is valid; when
--    it is not (a bad edit), they use the position's opening rules, so no position is left
--    without its stop loss. agent_positions.exit_rules_id has no foreign key on purpose:
--    rule sets are never deleted, the buy writes its set in the same transaction, and a
--    per-row RI check would cost every buy; a position without a set (opened before this
--    file, or by another writer) falls back to the default rules.
-- 2. trading_signals.idempotency_key becomes nullable: the source system's own API
--    inserts signals without one (this worker always sets one; NULL keys never conflict).
-- 3. trading_signals.payload_digest / source_record: a digest of the validated message and
--    the Kafka coordinates (topic:partition:offset) of the record that stored the signal, so
--    a key reused with a different payload is told from a redelivery (and both records named).

CREATE TABLE exit_rule_sets (
    id         uuid        NOT NULL,
    rules      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT exit_rule_sets_pkey PRIMARY KEY (id)
);
COMMENT ON TABLE exit_rule_sets IS
    'signal-worker: the exit sections of the agent configs that positions were opened with, by content-derived id';

ALTER TABLE agent_positions ADD COLUMN exit_rules_id uuid;
COMMENT ON COLUMN agent_positions.exit_rules_id IS
    'signal-worker: the exit rules (exit_rule_sets) this position was opened with; used when the agent''s current config is invalid';

ALTER TABLE trading_signals ALTER COLUMN idempotency_key DROP NOT NULL;

ALTER TABLE trading_signals
    ADD COLUMN payload_digest bytea,
    ADD COLUMN source_record  text;
COMMENT ON COLUMN trading_signals.payload_digest IS
    'signal-worker: SHA-256 (first 16 bytes) of the validated message; another payload under the same key is a conflicting redelivery';
COMMENT ON COLUMN trading_signals.source_record IS
    'signal-worker: topic:partition:offset of the Kafka record that stored this signal';
