-- 0014_notify_offsets: `signal-worker notify`'s progress per webhook, so that each event of
-- EVENTS_TOPIC is posted to a webhook once, across restarts and relay re-sends.
--
-- A webhook is known by `webhook_id`: 16 bytes of SHA-256, in hex, over its URL without
-- secrets' clear text (`worker.domain.notify.webhook_id`); no URL, token or chat secret is
-- stored.
--
-- notify_offsets: the next record to read, per webhook and partition of the events topic,
-- written in the transaction that records the post it follows (offsets-with-effects, as
-- `consumer_offsets` for the worker). notify reads with manual assignment from here, never
-- from a Kafka consumer group.
--
-- notify_posted: the events already posted (or refused by the webhook with a 4xx), by
-- event_id, so that an event the relay sent twice (a crash between Kafka's acknowledgement and
-- the outbox mark) is posted once. Pruned per partition to the last
-- `notify.DEDUPE_WINDOW` records behind the stored offset: a relay re-send lies at most one
-- relay batch behind its first copy in the same partition.

CREATE TABLE notify_offsets (
    webhook_id  varchar(64)    NOT NULL,
    topic       text           NOT NULL,
    partition   integer        NOT NULL,
    next_offset bigint         NOT NULL,
    updated_at  timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT notify_offsets_pkey PRIMARY KEY (webhook_id, topic, partition),
    CONSTRAINT notify_offsets_next_offset_check CHECK (next_offset >= 0)
);
COMMENT ON TABLE notify_offsets IS
    'signal-worker notify: the next offset of EVENTS_TOPIC per webhook and partition, stored '
    'after the post it follows succeeded';

CREATE TABLE notify_posted (
    webhook_id   varchar(64)    NOT NULL,
    event_id     uuid           NOT NULL,
    topic        text           NOT NULL,
    partition    integer        NOT NULL,
    kafka_offset bigint         NOT NULL,
    outcome      varchar(10)    NOT NULL,
    reason       text,
    posted_at    timestamptz(6) NOT NULL DEFAULT now(),
    CONSTRAINT notify_posted_pkey PRIMARY KEY (webhook_id, event_id),
    CONSTRAINT notify_posted_outcome_check CHECK (outcome IN ('posted', 'refused'))
);
CREATE INDEX notify_posted_offset_idx ON notify_posted (webhook_id, topic, partition, kafka_offset);
COMMENT ON TABLE notify_posted IS
    'signal-worker notify: events posted (or refused) per webhook by event_id, so a re-sent '
    'event is posted once; pruned to a window of offsets behind notify_offsets';
