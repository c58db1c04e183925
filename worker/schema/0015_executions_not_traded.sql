-- 0015_executions_not_traded: one event per signal for the agents that did not trade on it,
-- instead of one per agent (0013's execution_skipped / execution_failed).
--
-- At fan-out 100 a signal's skipped and failed executions were most of the events, and the
-- outbox, the relay and Kafka carried each alone (the benchmark: the relay cost the pipeline
-- a quarter of its throughput). A signal's executions are written in one statement, so one
-- event per signal and statement says the same: `executions_not_traded`, with each agent's
-- status (`skipped` or `failed`) and reason, in agent id order. Its id is derived from the
-- signal's natural key (user, idempotency key).

CREATE OR REPLACE FUNCTION event_outbox_executions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT signal_worker_events_on() THEN
        RETURN NULL;
    END IF;
    INSERT INTO event_outbox (event_id, user_id, type, event_at, payload)
    SELECT md5('executions_not_traded:' || s.user_id::text || ':' || s.idempotency_key)::uuid,
           s.user_id, 'executions_not_traded', coalesce(s.event_at, s.created_at),
           jsonb_build_object(
               'type', 'executions_not_traded', 'user_id', s.user_id,
               'signal_id', s.id, 'signal_key', s.idempotency_key,
               'token_address', s.token_address, 'token_symbol', s.symbol,
               'executions', jsonb_agg(jsonb_build_object(
                   'agent_id', x.agent_id, 'status', x.status, 'reason', x.error)
                   ORDER BY x.agent_id),
               'event_at', coalesce(s.event_at, s.created_at))
      FROM new_rows x
      JOIN trading_signals s ON s.id = x.signal_id
     WHERE x.status IN ('skipped', 'failed')
     GROUP BY s.id
     ORDER BY coalesce(s.event_at, s.created_at), s.id
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END
$$;
