-- 0006_consumer_offsets_topic_id: the id of the topic each stored offset belongs to.
--
-- A stored offset only means something in the log it was read from. A topic deleted and
-- recreated under the same name, or the same name on another cluster, is another log whose
-- offsets start again at 0: seeking there to the stored offset would skip (or, past its end,
-- drop) records nobody processed. Kafka (2.8 and later) gives every topic an id at
-- creation; the worker stores it with the offsets and, on assignment, refuses to consume a
-- partition whose topic id changed (see worker/offset_checks.py). NULL where the broker
-- gives no ids, and for offsets stored before this migration (the worker fills it in with
-- the next offset it stores). Kafka's text form: 22 characters of URL-safe base64.

ALTER TABLE consumer_offsets ADD COLUMN topic_id text;
ALTER TABLE consumer_offsets ADD CONSTRAINT consumer_offsets_topic_id_check
    CHECK (topic_id ~ '^[A-Za-z0-9_-]{22}$');
COMMENT ON COLUMN consumer_offsets.topic_id IS
    'signal-worker: the Kafka topic id (as kafka-topics --describe prints it) of the log '
    'next_offset belongs to; NULL when unknown';
