-- 0002_position_ledger_links: tie every trade of a position to it, so a full exit's P/L
-- can be checked from the ledger alone (contract section 6, invariant 5).
--
-- The design deletes a position when it closes and links its trades only through arrays
-- on the (deleted) position row. These columns are additions of this worker, not renames:
--   * agent_transactions.position_id: the position a SWAP opened, topped up (DCA) or sold
--     from (take profit, stop loss, stale trade); NULL for deposits and withdrawals. No
--     foreign key: the position row is deleted at a full exit, its trades stay.
--   * agent_historical_swaps.position_id: the position the full exit closed.
-- `signal-worker check` sums, per closed position, the SOL its sales returned minus the
-- SOL its buys cost, and compares it with profit_loss_sol.

ALTER TABLE agent_transactions ADD COLUMN position_id uuid;
COMMENT ON COLUMN agent_transactions.position_id IS
    'signal-worker: the position this swap opened, topped up or sold from (no FK: positions are deleted on exit)';
CREATE INDEX agent_transactions_position_id_idx ON agent_transactions (position_id);

ALTER TABLE agent_historical_swaps ADD COLUMN position_id uuid;
COMMENT ON COLUMN agent_historical_swaps.position_id IS
    'signal-worker: the position this full exit closed';
CREATE UNIQUE INDEX agent_historical_swaps_position_id_key
    ON agent_historical_swaps (position_id) WHERE position_id IS NOT NULL;

-- The net SOL that a position's take-profit sales have credited so far: with the closing
-- sale's credit it is what the position returned, so a full exit's profit_loss_sol is
-- cash flow (returned - total_invested_sol) for every close reason.
ALTER TABLE agent_positions
    ADD COLUMN take_profit_proceeds_sol numeric(20,8) NOT NULL DEFAULT 0
        CONSTRAINT agent_positions_take_profit_proceeds_sol_check
            CHECK (take_profit_proceeds_sol >= 0);
COMMENT ON COLUMN agent_positions.take_profit_proceeds_sol IS
    'signal-worker: net SOL credited by this position''s take-profit sales so far';
