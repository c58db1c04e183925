"""The events relay: the outbox (`event_outbox`, schema 0013) to EVENTS_TOPIC, each event once.

Why an outbox: an event must exist exactly when its effect does. The worker's effects commit
in PostgreSQL transactions (with their offsets); Kafka cannot take part in those, so an event
sent from the pipeline could be lost (a crash after the commit, before the send) or invented
(a send before a transaction that then rolls back). Triggers on the tables that hold the
effects write each event into the outbox in the effect's own transaction (Debezium's outbox
pattern, without a connector: the worker is the only writer that asks for events); this relay
publishes what is committed, then marks it.

Choices (aiokafka's idempotent and transactional producers considered):
- **Idempotent producer, then the topic's tail.** The producer is idempotent (acks from all
  in-sync replicas, sequence numbers): its own retries never duplicate or reorder a
  partition's records. A Kafka transaction would not help: the mark is written in
  PostgreSQL, so a crash (or a send that failed after the broker wrote it) between the
  write and the mark leaves sent events unmarked whatever the producer. So each time a
  relay becomes active (at start, after any failure) it first flushes its producer and
  reads the tail of every partition of the topic (the last `BATCH` records: at most one
  batch is ever sent and unmarked) and marks the events found there (`reconcile`), the way
  Kafka Connect's exactly-once sources read back their last offsets: the topic holds each
  event once. Each event also carries a deterministic `event_id` (derived from what it is
  about), so a consumer can drop a duplicate should one ever come (`notify` does).
- **Commit order per user.** Events are read in outbox id order and keyed by user id (one
  partition per user). A user's effects commit one transaction after another (its signals
  and commands are on one partition, applied in order; ticks run apart from signals), so id
  order is commit order per user; an event committed late behind a later id of another user
  is read at the next round (the relay reads what is unpublished, not what follows a mark).
- **One relay at a time.** Each worker runs one; the one holding the session advisory lock
  publishes, the others wait to take over (a worker that dies releases it with its
  connection). The relay uses a connection of its own, never the pool the pipeline needs,
  and touches only outbox rows the pipeline never locks: it never holds a lock the pipeline
  waits on.
- **Outages**: PostgreSQL or Kafka away, the relay retries with backoff, as the consumer
  does; nothing is marked that was not acknowledged. Published events are pruned after
  EVENTS_RETENTION_HOURS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

from worker.db.pool import connect
from worker.errors import ServiceUnavailable
from worker.metrics import Metrics
from worker.pipeline.kafka import (
    DEFAULT_MAX_BATCH_BYTES,
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    client_options,
    start_client,
)
from worker.retry import SERVICE_ERRORS, describe
from worker.settings import Settings

log = structlog.get_logger(__name__)
_PARTITIONER = DefaultPartitioner()

# The advisory lock the active relay holds (any number unique to this worker's purposes).
RELAY_LOCK = 0x5167_4E45_5645_4E54  # "SgNEVENT"
BATCH = 2_000
# The relay's record batches (a batch per partition and send): aiokafka's default of 16 KiB
# held about 20 events, and the per-batch work (a builder, a future, a request) was near half
# of the relay's CPU; 256 KiB holds about 350. Never more than the events topic accepts.
EVENT_BATCH_BYTES = 256 * 1024
# What a record batch adds to an event: the batch's header, the record's length, key and
# headers (an event larger than the topic's limit less this is cut down).
EVENT_HEADROOM_BYTES = 4096

# The lag (count and age of what is unpublished) is measured at most this often: counting a
# large backlog at every batch was most of the relay's work (98 ms at 156,000 events).
LAG_EVERY_S = 2.0
IDLE_S = 0.05  # the wait between empty polls (an event waits at most about this long)
STANDBY_S = 2.0  # how often a relay in standby tries to take over
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 10_000
BACKOFF_S = (0.5, 1, 2, 5)

# Ids as text and the commit time as integer milliseconds: decoding uuid and numeric columns
# into Python objects and back was a good part of the relay's CPU, which it takes from the
# pipeline in the same process. The payload as stored (its text; an `event_id` key of its
# own dropped, and a payload that is not an object, which no writer of the worker's makes,
# wrapped in one as `payload`): the event id is put in front of it here (`with_event_id`),
# not by a jsonb concatenation in the query, which rebuilt each payload and was a third of
# the query's time. The batch's ids are chosen first and only
# their rows are read: a plan that sorted the whole backlog (what PostgreSQL chose for the
# first queries of a new connection, before the prepared statement's generic plan) turned
# every row of it into text to keep 2,000 (0.6 s a query over a backlog of 100,000).
# A stored payload that is not an object (no writer of the worker's makes one; a hand-written
# row might), as one: wrapped as `payload`, beside the row's type.
_WRAPPED = "jsonb_build_object('type', o.type, 'payload', o.payload)"
UNPUBLISHED = """
SELECT o.id, o.event_id::text AS event_id, o.user_id::text AS user_id, o.type,
       (CASE WHEN jsonb_typeof(o.payload) <> 'object' THEN {wrapped}
             WHEN o.payload ? 'event_id' THEN o.payload - 'event_id'
             ELSE o.payload END)::text AS payload,
       floor(extract(epoch FROM o.created_at) * 1000)::int8 AS created_ms
  FROM (SELECT id FROM event_outbox WHERE published_at IS NULL ORDER BY id LIMIT $1) b
  JOIN event_outbox o ON o.id = b.id
 ORDER BY o.id
""".replace("{wrapped}", _WRAPPED)
# An event larger than the topic accepts, cut down: without its list and object fields (the
# only ones of unbounded size: the agents of a signal that did not trade, what a command
# changed), which `truncated` names with their sizes; in PostgreSQL, so the amounts keep
# their digits. The rest stays in the tables the event is about (`EventTruncation`). What
# is left is bounded by the messages' validation (reasons 2,000 characters, keys 200,
# symbols 50: some 15 KB at most), well within `MIN_EVENTS_TOPIC_BYTES` (a smaller events
# topic stops the worker at start).
CUT_DOWN = """
SELECT o.id,
       (coalesce((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(p.payload) e
                   WHERE jsonb_typeof(e.value) NOT IN ('array', 'object')
                     AND e.key NOT IN ('event_id', 'truncated')),
                 '{}'::jsonb)
        || jsonb_build_object('truncated', jsonb_build_object(
               'fields', coalesce(left_out.fields, '[]'::jsonb),
               'counts', coalesce(left_out.counts, '{}'::jsonb),
               'max_event_bytes', $2::int)))::text AS payload
  FROM event_outbox o
 CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(o.payload) = 'object' THEN o.payload
                                 ELSE {wrapped} END AS payload) p
 CROSS JOIN LATERAL (
        SELECT jsonb_agg(e.key ORDER BY e.key) AS fields,
               jsonb_object_agg(e.key, CASE jsonb_typeof(e.value)
                   WHEN 'array' THEN jsonb_array_length(e.value)
                   ELSE (SELECT count(*) FROM jsonb_object_keys(e.value)) END) AS counts
          FROM jsonb_each(p.payload) e
         WHERE jsonb_typeof(e.value) IN ('array', 'object')
           AND e.key NOT IN ('event_id', 'truncated')) left_out
 WHERE o.id = ANY($1::bigint[])
""".replace("{wrapped}", _WRAPPED)
MARK = "UPDATE event_outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
# With no retention (EVENTS_RETENTION_HOURS=0, the default) a published event is deleted at
# once: a delete writes no new row version and no index entry, a mark (an update of an
# indexed column) writes both, and it was most of the outbox's cost in PostgreSQL.
DELETE_SENT = "DELETE FROM event_outbox WHERE id = ANY($1::bigint[])"
DELETE_FOUND = "DELETE FROM event_outbox WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL"
MARK_FOUND = """
UPDATE event_outbox SET published_at = now()
 WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL
"""
LAG = """
SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest
  FROM event_outbox WHERE published_at IS NULL
"""
PRUNE = """
DELETE FROM event_outbox WHERE id IN (
    SELECT id FROM event_outbox
     WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
     ORDER BY id LIMIT $2)
"""


@dataclass
class RelayState:
    """What `/readyz` and the logs read: whether this relay is the active one, and the lag
    it last measured."""

    active: bool = False
    attempts: int = 0  # tries to become the active relay
    unpublished: int = 0
    oldest_s: float = 0.0
    trouble: str | None = None


class Relay:
    """Publishes the outbox until `stop` is set (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        *,
        topic_limit: int | None = None,
    ) -> None:
        """`topic_limit`: what the events topic accepts in a record batch
        (`max.message.bytes`; None: Kafka's default)."""
        self._settings = settings
        self._topic = settings.events_topic_name
        self._producer = producer
        self._metrics = metrics
        self.state = RelayState()
        self._pruned_at = 0.0
        self._measured_at = 0.0
        self._keeps_none = settings.events_retention_hours == 0
        limit = KAFKA_DEFAULT_MAX_MESSAGE_BYTES if topic_limit is None else topic_limit
        self.max_event_bytes = limit - EVENT_HEADROOM_BYTES
        # The partition of each key (user id), for the topic's current partition count.
        self._partition_of: dict[bytes, int] = {}
        self._partition_count = 0

    def reason(self) -> str | None:
        """Why the events are behind (for `/readyz`), else None."""
        state = self.state
        if state.trouble is not None:
            return f"events relay: {state.trouble}"
        if state.active and state.oldest_s > self._settings.events_stall_s:
            return (
                f"events relay: {state.unpublished} event(s) unpublished, the oldest "
                f"{state.oldest_s:.0f}s old"
            )
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Take the relay's lock when free and publish; on trouble, back off and go on.
        Safe to cancel at any point (the worker does at shutdown: the relay never holds the
        drain up, whatever PostgreSQL or Kafka do)."""
        failures = 0
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._settings.db, timeout_s=self._settings.startup_timeout_s)
                self.state.attempts += 1
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                    self.state.active = False
                    await _wait(stop, STANDBY_S)
                    continue
                self.state.active = True
                marked = await self.reconcile(conn)
                log.info("events_relay_active", topic=self._topic, found_sent=marked)
                await self._publish_until(stop, conn)
                failures = 0
            # ServiceUnavailable: `connect` or the tail's consumer gave up after
            # STARTUP_TIMEOUT_S; an outage longer than that is waited out here too.
            except (*SERVICE_ERRORS, KafkaError, OSError, ServiceUnavailable) as exc:
                self.state.trouble = describe(exc)
                log.warning("events_relay_retrying", error=describe(exc))
                await _wait(stop, BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
            except Exception as exc:  # a bug must not end the relay unseen
                # Said on /readyz and logged with its traceback; tried again like an outage
                # (the task ending here would leave the events unpublished and /readyz fine).
                self.state.trouble = f"failed: {describe(exc)}"
                log.exception("events_relay_failed", error=describe(exc))
                await _wait(stop, BACKOFF_S[-1])
                failures += 1
            finally:
                self.state.active = False
                if conn is not None:
                    # At once, whatever the server's state (a shutdown cancels the relay mid
                    # round: what it sent and did not mark is found on the topic next time).
                    conn.terminate()

    async def reconcile(self, conn: asyncpg.Connection) -> int:
        """Mark as published the unmarked events already on the topic (sent by a relay
        that stopped before it marked them); how many."""
        await asyncio.wait_for(self._producer.flush(), self._settings.kafka_request_timeout_s)
        found = await tail_event_ids(self._settings, self._topic, BATCH)
        if not found:
            return 0
        status = await conn.execute(DELETE_FOUND if self._keeps_none else MARK_FOUND, found)
        return int(status.split()[-1])

    async def _publish_until(self, stop: asyncio.Event, conn: asyncpg.Connection) -> None:
        while not stop.is_set():
            sent = await self.publish_once(conn)
            self.state.trouble = None
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                await self._prune(conn)
            if sent == 0:
                await _wait(stop, IDLE_S)
        # Stopping: what the drain committed last goes out too (the worker cancels this
        # after a short grace when a service is away).
        while await self.publish_once(conn) == BATCH:
            pass

    async def publish_once(self, conn: asyncpg.Connection) -> int:
        """Publish the next batch of unpublished events, each acknowledged, then mark them;
        how many were published."""
        rows = await conn.fetch(UNPUBLISHED, BATCH)
        if rows:
            await asyncio.gather(*await self._send(rows, await self._bodies(conn, rows)))
            await conn.execute(DELETE_SENT if self._keeps_none else MARK, [r["id"] for r in rows])
            now_ms = time.time() * 1000
            observe = self._metrics.event_delay.observe
            for r in rows:
                observe(max(0.0, now_ms - r["created_ms"]) / 1000)
            for kind, n in collections.Counter(r["type"] for r in rows).items():
                self._metrics.events_published.labels(kind).inc(n)
        if len(rows) < BATCH or time.monotonic() - self._measured_at > LAG_EVERY_S:
            await self.measure(conn)
        return len(rows)

    async def _bodies(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[bytes]:
        """Each event's body; one larger than the events topic accepts (the agents of a
        signal that did not trade, for a user with thousands of agents) is sent without its
        list and object fields, with `truncated` naming them: sent whole it would be refused
        by Kafka at every try, and every event behind it would wait for good."""
        bodies = [with_event_id(r["payload"], r["event_id"]).encode() for r in rows]
        large = [i for i, body in enumerate(bodies) if len(body) > self.max_event_bytes]
        if large:
            cut = {
                c["id"]: c["payload"]
                for c in await conn.fetch(
                    CUT_DOWN, [rows[i]["id"] for i in large], self.max_event_bytes
                )
            }
            for i in large:
                r = rows[i]
                log.warning(
                    "event_cut_down",
                    event_id=r["event_id"],
                    type=r["type"],
                    bytes=len(bodies[i]),
                    max_event_bytes=self.max_event_bytes,
                )
                # Its row gone in between (by hand: one relay runs at a time): what is known.
                stub = orjson.dumps({"type": r["type"], "user_id": r["user_id"]}).decode()
                bodies[i] = with_event_id(cut.get(r["id"], stub), r["event_id"]).encode()
                self._metrics.events_cut_down.inc()
        return bodies

    async def _send(
        self, rows: list[asyncpg.Record], bodies: list[bytes]
    ) -> list[asyncio.Future[Any]]:
        """Queue the events, in order, as record batches per partition (the partition of
        their user id, as a keyed send would choose it; an event without a user by its id),
        and return the futures of their acknowledgements. A batch per partition, not a send
        per event: the per-record path's futures and lookups were most of the relay's CPU,
        which it takes from the pipeline in the same process."""
        partitions = sorted(await self._producer.partitions_for(self._topic))
        if len(partitions) != self._partition_count or len(self._partition_of) > 100_000:
            self._partition_of.clear()
            self._partition_count = len(partitions)
        partition_of = self._partition_of
        by_partition: dict[int, list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]] = {}
        for r, body in zip(rows, bodies, strict=True):
            event_id = r["event_id"].encode()
            key = None if r["user_id"] is None else r["user_id"].encode()
            hashed = key or event_id
            partition = partition_of.get(hashed)
            if partition is None:
                # murmur2 in Python, about 6 µs: once per user, not once per event
                partition = partition_of[hashed] = _PARTITIONER(hashed, partitions, partitions)
            committed_ms = str(r["created_ms"]).encode()
            headers = [
                ("event-id", event_id),
                ("event-type", r["type"].encode()),
                # When its effect's transaction began (epoch ms): the commit-to-Kafka delay
                # of each event, for whoever reads the topic.
                ("committed-at", committed_ms),
            ]
            by_partition.setdefault(partition, []).append((key, body, headers))
        futures: list[asyncio.Future[Any]] = []
        for partition, records in by_partition.items():
            batch = self._producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(
                        await self._producer.send_batch(batch, self._topic, partition=partition)
                    )
                    batch = self._producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"an event of {len(value)} bytes fits no record batch")
            futures.append(await self._producer.send_batch(batch, self._topic, partition=partition))
        return futures

    async def measure(self, conn: asyncpg.Connection) -> None:
        """Count what is unpublished and the age of the oldest (metrics, `/readyz`)."""
        lag = await conn.fetchrow(LAG)
        assert lag is not None  # noqa: S101 - an aggregate has a row
        self.state.unpublished = int(lag["n"])
        self.state.oldest_s = float(lag["oldest"] or 0)
        self._metrics.events_unpublished.set(self.state.unpublished)
        self._metrics.events_oldest_unpublished.set(self.state.oldest_s)
        self._measured_at = time.monotonic()

    async def _prune(self, conn: asyncpg.Connection) -> None:
        keep_s = self._settings.events_retention_hours * 3600
        while True:
            status = await conn.execute(PRUNE, keep_s, PRUNE_BATCH)
            if int(status.split()[-1]) < PRUNE_BATCH:
                break
        self._pruned_at = time.monotonic()


def event_batch_bytes(topic_limit: int | None) -> int:
    """The relay producer's record-batch size for an events topic accepting `topic_limit`
    bytes in a record batch (`max.message.bytes`; None: not known, so aiokafka's default,
    which any topic takes). A batch holds records up to this size, header included, or a
    single record of any size (at most `max_event_bytes` here)."""
    if topic_limit is None:
        return DEFAULT_MAX_BATCH_BYTES
    return max(DEFAULT_MAX_BATCH_BYTES, min(EVENT_BATCH_BYTES, topic_limit - EVENT_HEADROOM_BYTES))


def with_event_id(payload: str, event_id: str) -> str:
    """The event's body: its stored payload (a JSON object's text, without an `event_id` of
    its own: `UNPUBLISHED` drops one) with `event_id` first."""
    rest = payload[1:].lstrip()
    if rest.startswith("}"):
        return f'{{"event_id": "{event_id}"}}'
    return f'{{"event_id": "{event_id}", {rest}'


async def tail_event_ids(settings: Settings, topic: str, last: int) -> list[str]:
    """The `event-id` headers of the last `last` records of each partition of `topic`."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka),
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await start_client(consumer, settings.kafka, timeout_s=settings.startup_timeout_s)
    try:
        # The topic is not subscribed: ask for its metadata (aiokafka keeps only that of
        # the topics it is told of).
        consumer._client.add_topic(topic)
        await consumer._client.force_metadata_update()
        ids = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in sorted(ids)]
        if not partitions:
            return []
        consumer.assign(partitions)
        start = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        wanted = {tp for tp in partitions if end[tp] > start[tp]}
        for tp in wanted:
            consumer.seek(tp, max(start[tp], end[tp] - last))
        found: list[str] = []
        while wanted:
            batch = await consumer.getmany(*wanted, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp]:
                        found.extend(v.decode() for k, v in record.headers or () if k == "event-id")
            for tp in list(wanted):
                if await consumer.position(tp) >= end[tp]:
                    wanted.discard(tp)
        return found
    finally:
        await consumer.stop()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
