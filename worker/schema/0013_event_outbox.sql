-- 0013_event_outbox: every effect users and downstream systems care about, as an event, written
-- in the transaction of the effect (a transactional outbox), for the relay to publish to
-- EVENTS_TOPIC (`worker.events`).
--
-- The events are written by triggers on the tables that hold the effects, once per statement
-- (transition tables), so no writer of the worker can forget one; only in a transaction that
-- asks for them: `signal_worker.events` set to `on` (the worker's connections, when
-- EVENTS_ENABLED). A hand-written INSERT emits nothing.
--
-- Types (`type`, and `payload.type`):
--   buy, dca_buy          a SWAP paying SOL (agent_transactions)
--   take_profit_sale      a SWAP of a take-profit level (the last one, which closes the
--                         position, is also the `position_closed` of its exit)
--   position_closed       a full exit with its reason and P/L (agent_historical_swaps); a
--                         stop-loss, stale or manual exit's sale is this event's
--                         `sale_transaction_id`, not an event of its own
--   execution_skipped, execution_failed
--                         an agent's decision not to trade, or failure to (signal_executions)
--   command_result        a command applied or refused (command_results)
--   dead_letter           a record the worker dead-lettered (written by the worker)
-- event_id is derived from what the event is about (md5 of its type and natural key: the
-- same input gives the same ids, so a consumer drops a re-sent event by its id); event_at is
-- the decision time of the record that caused it.

CREATE TABLE event_outbox (
    id           bigint        GENERATED ALWAYS AS IDENTITY,
    event_id     uuid          NOT NULL,
    user_id      uuid,
    type         varchar(30)   NOT NULL,
    event_at     timestamptz(6) NOT NULL,
    payload      jsonb         NOT NULL,
    created_at   timestamptz(6) NOT NULL DEFAULT now(),
    published_at timestamptz(6),
    CONSTRAINT event_outbox_pkey PRIMARY KEY (id),
    CONSTRAINT event_outbox_event_id_key UNIQUE (event_id)
);
CREATE INDEX event_outbox_unpublished_idx ON event_outbox (id) WHERE published_at IS NULL;
CREATE INDEX event_outbox_published_at_idx ON event_outbox (published_at)
    WHERE published_at IS NOT NULL;
COMMENT ON TABLE event_outbox IS
    'signal-worker: the transactional outbox of trade events, published to EVENTS_TOPIC by the '
    'relay in commit order per user, pruned after EVENTS_RETENTION_HOURS';

CREATE FUNCTION signal_worker_events_on() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('signal_worker.events', true), '') = 'on'
$$;

CREATE FUNCTION event_outbox_transactions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT signal_worker_events_on() THEN
        RETURN NULL;
    END IF;
    INSERT INTO event_outbox (event_id, user_id, type, event_at, payload)
    SELECT md5(e.type || ':' || t.id::text)::uuid, a.user_id, e.type, t.transaction_time,
           jsonb_build_object(
               'type', e.type, 'user_id', a.user_id, 'agent_id', t.agent_id,
               'wallet_address', t.wallet_address, 'position_id', t.position_id,
               'transaction_id', t.id, 'signal_id', t.signal_id,
               'token_address', CASE WHEN e.type = 'take_profit_sale' THEN t.input_mint
                                     ELSE t.output_mint END,
               'token_symbol', CASE WHEN e.type = 'take_profit_sale' THEN t.input_symbol
                                    ELSE t.output_symbol END,
               'sol', CASE WHEN e.type = 'take_profit_sale' THEN t.output_amount
                           ELSE t.input_amount END,
               'token_amount', CASE WHEN e.type = 'take_profit_sale' THEN t.input_amount
                                    ELSE t.output_amount END,
               'price_sol', CASE WHEN e.type = 'take_profit_sale' THEN t.input_price
                                 ELSE t.output_price END,
               'value_usd', t.transaction_value_usd,
               'network_fee_sol', t.network_fee_sol, 'protocol_fee_sol', t.protocol_fee_sol,
               'event_at', t.transaction_time)
      FROM new_rows t
      JOIN agents a ON a.id = t.agent_id
     CROSS JOIN LATERAL (SELECT CASE
              WHEN t.is_dca THEN 'dca_buy'
              WHEN t.is_take_profit THEN 'take_profit_sale'
              WHEN t.input_mint = 'So11111111111111111111111111111111111111112' THEN 'buy'
          END AS type) e
     WHERE t.transaction_type = 'SWAP' AND e.type IS NOT NULL
     ORDER BY t.transaction_time, t.id
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION event_outbox_exits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT signal_worker_events_on() THEN
        RETURN NULL;
    END IF;
    INSERT INTO event_outbox (event_id, user_id, type, event_at, payload)
    SELECT md5('position_closed:' || coalesce(h.position_id, h.id)::text)::uuid, a.user_id,
           'position_closed', h.sale_time,
           jsonb_build_object(
               'type', 'position_closed', 'user_id', a.user_id, 'agent_id', h.agent_id,
               'wallet_address', h.wallet_address, 'position_id', h.position_id,
               'purchase_transaction_id', h.purchase_transaction_id,
               'sale_transaction_id', h.sale_transaction_id, 'signal_id', h.signal_id,
               'token_address', h.token_address, 'token_symbol', h.token_symbol,
               'close_reason', h.close_reason, 'amount', h.amount,
               'purchase_price', h.purchase_price, 'sale_price', h.sale_price,
               'change_percent', h.change_percent, 'profit_loss_sol', h.profit_loss_sol,
               'profit_loss_usd', h.profit_loss_usd, 'purchase_time', h.purchase_time,
               'event_at', h.sale_time)
      FROM new_rows h
      JOIN agents a ON a.id = h.agent_id
     ORDER BY h.sale_time, h.id
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION event_outbox_executions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT signal_worker_events_on() THEN
        RETURN NULL;
    END IF;
    INSERT INTO event_outbox (event_id, user_id, type, event_at, payload)
    SELECT md5('execution_' || x.status || ':' || s.user_id::text || ':' || x.agent_id::text
               || ':' || s.idempotency_key)::uuid,
           s.user_id, 'execution_' || x.status, coalesce(s.event_at, s.created_at),
           jsonb_build_object(
               'type', 'execution_' || x.status, 'user_id', s.user_id,
               'agent_id', x.agent_id, 'signal_id', x.signal_id,
               'signal_key', s.idempotency_key, 'token_address', s.token_address,
               'token_symbol', s.symbol, 'reason', x.error,
               'event_at', coalesce(s.event_at, s.created_at))
      FROM new_rows x
      JOIN trading_signals s ON s.id = x.signal_id
     WHERE x.status IN ('skipped', 'failed')
     ORDER BY coalesce(s.event_at, s.created_at), x.signal_id, x.agent_id
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION event_outbox_commands() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT signal_worker_events_on() THEN
        RETURN NULL;
    END IF;
    INSERT INTO event_outbox (event_id, user_id, type, event_at, payload)
    SELECT md5('command_result:' || r.user_id::text || ':' || r.idempotency_key)::uuid,
           r.user_id, 'command_result', r.event_at,
           jsonb_build_object(
               'type', 'command_result', 'user_id', r.user_id, 'agent_id', r.agent_id,
               'command', r.command, 'idempotency_key', r.idempotency_key,
               'status', r.status, 'reason', r.reason, 'changes', r.changes,
               'source_record', r.source_record, 'event_at', r.event_at)
      FROM new_rows r
     ORDER BY r.event_at, r.id
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER agent_transactions_events AFTER INSERT ON agent_transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_transactions();
CREATE TRIGGER agent_historical_swaps_events AFTER INSERT ON agent_historical_swaps
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_exits();
CREATE TRIGGER signal_executions_events AFTER INSERT ON signal_executions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_executions();
CREATE TRIGGER command_results_events AFTER INSERT ON command_results
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_commands();
