-- 0010_order_bounds: where each partition stands in the one order, for the other workers.
--
-- Every worker applies its partitions' records in one order by decision time (see
-- worker/pipeline/timeline.py); with several workers, a record is applied only once no
-- partition of the group, this worker's or another's, can still apply something before it.
-- So each worker writes here, for every partition it owns, the least key of what that
-- partition may still apply (its first record not applied yet, or, when it has nothing
-- waiting, the least key a record still to come can have), after every commit and while it
-- waits; and reads the others' rows. A partition no worker consumes (blocked: a recreated
-- topic) is `excluded`: nothing waits for it. A row stays when its partition moves to
-- another worker: it still says what the old owner committed, and the new owner updates it.
--
-- A partition read to its end also promises that nothing it brings from `promised_from` on
-- is decided before `promised_at` (its clock less LATENESS_MS); a record that comes after all
-- stamped earlier is late and decided then. The promise is written before anything is
-- applied on its strength, and restored with the partition, so a restart or a new owner
-- decides a late record as the uninterrupted worker would have.
--
-- The key: `bound_at` (a decision time; NULL: unknown, everything waits), `bound_rank`
-- (0 SOL/USD tick, 1 other tick, 2 signal) and `bound_tie` (the tie-break after them, a
-- JSON array; empty for "any record from (bound_at, bound_rank) on").

CREATE TABLE order_bounds (
    consumer_group text         NOT NULL,
    topic          text         NOT NULL,
    partition      integer      NOT NULL CHECK (partition >= 0),
    bound_at       timestamptz,
    bound_rank     integer      NOT NULL DEFAULT 0,
    bound_tie      jsonb        NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(bound_tie) = 'array'),
    excluded       boolean      NOT NULL DEFAULT false,
    promised_at    timestamptz,
    promised_from  bigint       CHECK (promised_from >= 0),
    updated_at     timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
COMMENT ON TABLE order_bounds IS
    'signal-worker: per partition, the least key (decision time, rank, tie-break) it may still '
    'apply, for the other workers of the group (worker/pipeline/timeline.py)';
