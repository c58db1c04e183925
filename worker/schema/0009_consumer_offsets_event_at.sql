-- 0009_consumer_offsets_event_at: where each partition stands in event time.
--
-- The worker applies its partitions' records in one order by decision time (see
-- worker/pipeline/timeline.py): a record's decision time is its event time, but always after
-- the decision time of the previous record of its partition. So the next record of a
-- partition is placed by the decision time of the last one applied; it is stored here, in
-- the same transaction as next_offset, so a restart, a redelivery or a new owner places the
-- partition's next records exactly as an uninterrupted worker would have. NULL for offsets
-- stored before this migration and by `offsets reset` (the next record is then placed at its
-- own event time).

ALTER TABLE consumer_offsets ADD COLUMN event_at timestamptz;
COMMENT ON COLUMN consumer_offsets.event_at IS
    'signal-worker: the decision time of the record before next_offset (the worker''s event '
    'clock); NULL when unknown';
