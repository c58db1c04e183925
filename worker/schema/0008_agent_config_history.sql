-- 0008_agent_config_history: every version of an agent's decision-relevant settings, with
-- the time from which it is in force, kept by a trigger whoever writes `agents` (this
-- worker's commands, Nexgent's own UI, a hand-written UPDATE).
--
-- What a decision reads from an agents row: trading_config, trading_mode and the two
-- automated-trading switches (docs/domain.md section 9). A version holds all four; an
-- UPDATE that changes none of them (a rename, updated_at) records nothing.
--
-- valid_from, the time from which a version is in force:
--   * the first version (INSERT): the agent's created_at. An event earlier than that is
--     not the agent's (signals: `agents.created_at <= signal time`, as before); a tick
--     earlier than an agent's first version takes the first version.
--   * a later version (UPDATE): clock_timestamp() when the trigger runs, raised to the
--     previous version's valid_from should the clock read earlier (a created_at in the
--     future, a clock step back), so versions never go back in time. Versions with equal
--     valid_from are ordered by id (the later write wins).
--   The version in force at a time t is the last by (valid_from, id) with valid_from <= t,
--   else the first. An edit's transaction commits a moment after its valid_from: an event
--   of that moment decided before the commit was decided with the version it could see.
-- Backfill: one version per existing agent, its settings as they are now, valid from its
-- created_at (earlier edits were not kept).
-- Deleting an agent deletes its history (ON DELETE CASCADE, as its executions, positions
-- and transactions go): there is nothing left to decide or replay for it.

CREATE TABLE agent_config_history (
    id                           bigint       GENERATED ALWAYS AS IDENTITY,
    agent_id                     uuid         NOT NULL,
    valid_from                   timestamptz(6) NOT NULL,
    trading_mode                 varchar(20)  NOT NULL,
    trading_config               jsonb,
    automated_trading_simulation boolean      NOT NULL,
    automated_trading_live       boolean      NOT NULL,
    recorded_at                  timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT agent_config_history_pkey PRIMARY KEY (id),
    CONSTRAINT agent_config_history_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX agent_config_history_agent_id_valid_from_idx
    ON agent_config_history (agent_id, valid_from, id);
COMMENT ON TABLE agent_config_history IS
    'signal-worker: each version of an agent''s trading_config, trading_mode and automated '
    'trading switches, in force from valid_from (written by triggers on agents)';

CREATE FUNCTION agent_config_history_record() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    since timestamptz;
BEGIN
    IF TG_OP = 'INSERT' THEN
        since := NEW.created_at;
    ELSE
        SELECT GREATEST(clock_timestamp(), max(h.valid_from)) INTO since
          FROM agent_config_history h WHERE h.agent_id = NEW.id;
    END IF;
    INSERT INTO agent_config_history (agent_id, valid_from, trading_mode, trading_config,
                                      automated_trading_simulation, automated_trading_live)
    VALUES (NEW.id, since, NEW.trading_mode, NEW.trading_config,
            NEW.automated_trading_simulation, NEW.automated_trading_live);
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_config_history_insert
    AFTER INSERT ON agents
    FOR EACH ROW EXECUTE FUNCTION agent_config_history_record();

CREATE TRIGGER agents_config_history_update
    AFTER UPDATE OF trading_config, trading_mode, automated_trading_simulation,
                    automated_trading_live ON agents
    FOR EACH ROW
    WHEN (OLD.trading_config IS DISTINCT FROM NEW.trading_config
          OR OLD.trading_mode IS DISTINCT FROM NEW.trading_mode
          OR OLD.automated_trading_simulation IS DISTINCT FROM NEW.automated_trading_simulation
          OR OLD.automated_trading_live IS DISTINCT FROM NEW.automated_trading_live)
    EXECUTE FUNCTION agent_config_history_record();

INSERT INTO agent_config_history (agent_id, valid_from, trading_mode, trading_config,
                                  automated_trading_simulation, automated_trading_live)
SELECT id, created_at, trading_mode, trading_config,
       automated_trading_simulation, automated_trading_live
  FROM agents
 ORDER BY created_at, id;
