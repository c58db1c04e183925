-- 0005_price_history: every price tick the worker took, kept for a while, so that `report`
-- can value open positions and `replay` can see the prices the live worker saw.
--
-- Why a table and not the price topic: a replay over a time range must see the ticks in the
-- order and with the timestamps the worker used, next to the signals it stored, whatever
-- the topic's retention, compaction or partition count is, and without a broker at hand
-- (a copy of the database is enough). Only ticks that moved the price are kept (a tick not
-- newer than the stored price changes nothing, live or replayed), in the same transaction
-- as their effects, so the history holds each of them exactly once.
--
-- Partitioned by day on price_ts, so that retention drops whole days (no DELETE, no bloat):
-- `signal_worker_price_history_upkeep(days)` creates the partitions of today and the next
-- two days and drops those older than `days`; the worker runs it at start-up and hourly
-- (setting PRICE_HISTORY_DAYS). A tick outside the partitions that exist (an old tick
-- replayed from the topic, a clock far ahead) lands in the DEFAULT partition rather than
-- failing its batch; the upkeep trims that one by age too.

CREATE TABLE token_price_history (
    token_address varchar(255)   NOT NULL,
    price_usd     numeric(30,18) NOT NULL,
    price_ts      timestamptz    NOT NULL,
    recorded_at   timestamptz    NOT NULL DEFAULT now()
) PARTITION BY RANGE (price_ts);
COMMENT ON TABLE token_price_history IS
    'signal-worker: every price tick that moved a token''s stored price (token_prices), by day; PRICE_HISTORY_DAYS are kept';

CREATE INDEX token_price_history_token_address_price_ts_idx
    ON token_price_history (token_address, price_ts);

CREATE TABLE token_price_history_default PARTITION OF token_price_history DEFAULT;

CREATE FUNCTION signal_worker_price_history_upkeep(keep_days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    cutoff timestamptz := (today - keep_days)::timestamp AT TIME ZONE 'UTC';
    day date;
    part record;
BEGIN
    -- One upkeep at a time (several workers run it each hour).
    PERFORM pg_advisory_xact_lock(hashtext('signal_worker_price_history_upkeep'));
    FOR day IN SELECT generate_series(today, today + 2, interval '1 day')::date LOOP
        IF to_regclass(format('token_price_history_p%s', to_char(day, 'YYYYMMDD'))) IS NULL
           AND NOT EXISTS (
               SELECT 1 FROM token_price_history_default
                WHERE price_ts >= day::timestamp AT TIME ZONE 'UTC'
                  AND price_ts < (day + 1)::timestamp AT TIME ZONE 'UTC')
        THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF token_price_history FOR VALUES FROM (%L) TO (%L)',
                format('token_price_history_p%s', to_char(day, 'YYYYMMDD')),
                day::timestamp AT TIME ZONE 'UTC',
                (day + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
    FOR part IN
        SELECT c.relname
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'token_price_history'::regclass
           AND c.relname ~ '^token_price_history_p[0-9]{8}$'
           AND to_date(substring(c.relname from '[0-9]{8}$'), 'YYYYMMDD') < cutoff::date
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
    END LOOP;
    DELETE FROM token_price_history_default WHERE price_ts < cutoff;
END;
$$;
COMMENT ON FUNCTION signal_worker_price_history_upkeep(integer) IS
    'signal-worker: create the price-history partitions of today and the next two days, drop those older than keep_days';

SELECT signal_worker_price_history_upkeep(30);
