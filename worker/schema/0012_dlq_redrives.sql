-- 0012_dlq_redrives: dead letters sent back to their original topic by `signal-worker dlq
-- redrive`, once each by the coordinates of the record that was dead-lettered.
--
-- The order makes a crash safe: the row is committed as 'pending' BEFORE the record is sent,
-- and marked 'sent' (with where the broker put it) once the broker acknowledged it. A crash
-- after the send but before the mark leaves 'pending': the redrive may or may not have gone
-- out, so it is never sent again on its own (at most once); `dlq redrive --force` sends a
-- pending one again, after the operator has looked. A 'sent' row is never redriven again:
-- if the redriven record fails once more, its new dead letter has new original coordinates.

CREATE TABLE dlq_redrives (
    original_topic     text        NOT NULL,
    original_partition integer     NOT NULL CHECK (original_partition >= 0),
    original_offset    bigint      NOT NULL CHECK (original_offset >= 0),
    dlq_topic          text        NOT NULL,
    dlq_partition      integer     NOT NULL CHECK (dlq_partition >= 0),
    dlq_offset         bigint      NOT NULL CHECK (dlq_offset >= 0),
    reason             text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('pending', 'sent')),
    forced             boolean     NOT NULL DEFAULT false,
    sent_to            text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    PRIMARY KEY (original_topic, original_partition, original_offset),
    CHECK ((status = 'sent') = (sent_to IS NOT NULL AND sent_at IS NOT NULL))
);
COMMENT ON TABLE dlq_redrives IS
    'signal-worker: dead letters redriven to their original topic by `dlq redrive`, once each '
    'by original coordinates: pending (committed before the send), then sent (after the ack)';
