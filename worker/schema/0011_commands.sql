-- 0011_commands: what users ask of their agents through COMMANDS_TOPIC, and what came of it.
--
-- command_results: one row per command (per (user_id, idempotency_key), however often it is
-- delivered), written in the transaction that applies it, with its offset: `applied` with
-- what it changed, or `refused` with the reason. `payload` is the command as validated;
-- `event_at` its decision time (the clock of everything it wrote). No foreign key on
-- user_id: a command for a user that does not exist is refused, and its row says so.
-- Replay reads the applied commands back as events (deposits, withdrawals, manual closes).
--
-- agent_config_history: a version written by a command (or by anything that sets
-- `signal_worker.decided_at` in its transaction) is in force from that decision time, not
-- from the clock reading of the trigger, so a command's config change is placed in the
-- one order exactly where the command is, live and in every replay of the same stream.

CREATE TABLE command_results (
    id              bigint        GENERATED ALWAYS AS IDENTITY,
    user_id         uuid          NOT NULL,
    idempotency_key varchar(200)  NOT NULL,
    command         varchar(40)   NOT NULL,
    status          varchar(10)   NOT NULL,
    reason          text,
    agent_id        uuid,
    payload         jsonb         NOT NULL,
    changes         jsonb,
    event_at        timestamptz(6) NOT NULL,
    source_record   text,
    created_at      timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT command_results_pkey PRIMARY KEY (id),
    CONSTRAINT command_results_user_id_idempotency_key_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT command_results_status_check CHECK (status IN ('applied', 'refused')),
    CONSTRAINT command_results_reason_check CHECK ((status = 'refused') = (reason IS NOT NULL))
);
CREATE INDEX command_results_agent_id_event_at_idx ON command_results (agent_id, event_at);
CREATE INDEX command_results_event_at_idx ON command_results (event_at);
COMMENT ON TABLE command_results IS
    'signal-worker: each command from COMMANDS_TOPIC once, applied or refused (with why)';

CREATE OR REPLACE FUNCTION agent_config_history_record() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    since timestamptz;
    decided text := current_setting('signal_worker.decided_at', true);
BEGIN
    IF TG_OP = 'INSERT' THEN
        since := NEW.created_at;
    ELSE
        SELECT GREATEST(CASE WHEN decided IS NULL OR decided = '' THEN clock_timestamp()
                             ELSE decided::timestamptz END,
                        max(h.valid_from)) INTO since
          FROM agent_config_history h WHERE h.agent_id = NEW.id;
    END IF;
    INSERT INTO agent_config_history (agent_id, valid_from, trading_mode, trading_config,
                                      automated_trading_simulation, automated_trading_live)
    VALUES (NEW.id, since, NEW.trading_mode, NEW.trading_config,
            NEW.automated_trading_simulation, NEW.automated_trading_live);
    RETURN NULL;
END
$$;
