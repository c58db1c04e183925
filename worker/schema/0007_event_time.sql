-- 0007_event_time: the decision time of each stored signal and recorded tick.
--
-- The worker decides every record at its decision time: the record's event time (a
-- signal's payload created_at, a tick's payload ts, else the Kafka record timestamp),
-- raised to the previous decision time of its partition when earlier and to the time
-- already decided when it arrives later than the lateness bound. Every decision (stale
-- holds, DCA cooldowns, which agents a signal is offered to) and every time written on the
-- ledger's rows use it, never the moment of processing. It is kept here so that `replay`
-- decides each record at the same time as the live worker did, and so that a redelivered
-- signal is decided at its first delivery's time. NULL for rows stored before this
-- migration (or by another writer): their created_at / price_ts is their decision time.

ALTER TABLE trading_signals ADD COLUMN event_at timestamptz;
COMMENT ON COLUMN trading_signals.event_at IS
    'signal-worker: the time the signal was decided at (its event time, kept monotone per '
    'partition and raised for records later than the lateness bound); NULL: created_at is';

ALTER TABLE token_price_history ADD COLUMN event_at timestamptz;
COMMENT ON COLUMN token_price_history.event_at IS
    'signal-worker: the time the tick was decided at (its event time, kept monotone per '
    'partition and raised for records later than the lateness bound); NULL: price_ts is';
