"""`signal-worker notify`: posts chosen events of EVENTS_TOPIC to one webhook, each once.

How each event is posted once per webhook:
- **Manual assignment, offsets in PostgreSQL** (`notify_offsets`, schema 0014), like the
  worker's offsets-with-effects: every partition of the topic is assigned and read from the
  stored next offset; after a post succeeds (or the webhook refuses it for good), the offset
  past it is stored in the transaction that records the event as done. No Kafka consumer
  group: a rebalance cannot move a partition between two posts of it.
- **Dedupe by event_id** (`notify_posted`): the relay re-sends the events of a batch whose
  outbox mark it did not write (a crash after Kafka's acknowledgement); the copy has the same
  event_id, is found there and dropped. Kept as a table of ids (with their offsets) rather
  than a bounded set stored beside the offset: one indexed row per event is a lookup and an
  insert in the transaction that already stores the offset, and pruning by offset keeps it
  small without a clock. The window kept is DEDUPE_WINDOW records per partition, far beyond a
  relay re-send's reach (one relay batch, 500 events).
- **One notifier per webhook at a time**: it holds an advisory lock on its webhook id for as
  long as its connection lives; a second one waits in standby.
- **Never skipping an event**: a webhook that keeps failing (5xx, 429, 408, no connection)
  blocks the stream, retried forever with backoff and a warning per attempt; only a
  permanent refusal (another 4xx, a 3xx) moves on, logged with the reason
  (`notify_post_refused`) and recorded as `refused`.
- **Outages**: PostgreSQL or Kafka away, notify backs off and starts again from the stored
  offsets (what was posted is known by event id).
- The one window left: a crash after the webhook answered 2xx and before the transaction
  commits re-posts that event after the restart (webhooks take no idempotency key).
- Agent names (and a buy's signal key) are looked up in the database at post time, so a
  renamed agent shows its name of now; an id the database does not know is shown shortened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import httpx
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.db import notify as store
from worker.db.pool import connect
from worker.domain.exact_json import JsonRefusedError, loads_exact
from worker.domain.notify import (
    Names,
    Outcome,
    TokenBucket,
    Webhook,
    backoff_s,
    event_text,
    outcome,
)
from worker.domain.notify import redacted as redact_url
from worker.domain.notify import retry_after_s as parse_retry_after
from worker.errors import ServiceUnavailable
from worker.pipeline.kafka import client_options
from worker.retry import SERVICE_ERRORS, describe
from worker.settings import Settings

log = structlog.get_logger(__name__)

DEDUPE_WINDOW = 10_000
FETCH_MS = 500
STANDBY_S = 2.0
REFRESH_PARTITIONS_S = 60.0
BACKOFF_S = (0.5, 1, 2, 5, 10)
HTTP_TIMEOUT_S = 10.0
LOCK_BASE = 0x4E4F_5449_0000_0000  # "NOTI": the advisory lock is this plus the webhook's id


@dataclass(frozen=True)
class NotifyOptions:
    """What to post where: the webhook, the event types, the users (empty: all), the rate."""

    webhook: Webhook
    topic: str
    events: frozenset[str]
    users: frozenset[UUID]
    rate: float
    start: Literal["earliest", "latest"] = "latest"


class Poster:
    """Posts one body to the webhook: waits for the token bucket, retries what can pass
    (see `worker.domain.notify.outcome`), and returns the outcome, or None when `stop` was
    set while it waited (nothing is recorded then; the event goes after a restart)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        webhook: Webhook,
        bucket: TokenBucket,
        stop: asyncio.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[asyncio.Event, float], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._webhook = webhook
        self._bucket = bucket
        self._stop = stop
        self._clock = clock
        self._sleep = sleep or _wait

    async def post(self, body: dict[str, str]) -> Outcome | None:
        """The body posted (`done`), refused for good (`refused`), or None (stopped)."""
        attempt = 0
        while not self._stop.is_set():
            wait = self._bucket.take(self._clock())
            if wait > 0:
                await self._sleep(self._stop, wait)
                continue
            attempt += 1
            result = await self._attempt(body, attempt)
            if result.action != "retry":
                return result
            log.warning(
                "notify_post_retrying",
                webhook=redact_url(self._webhook.url),
                attempt=attempt,
                reason=result.reason,
                wait_s=round(result.wait_s, 3),
            )
            await self._sleep(self._stop, result.wait_s)
        return None

    async def _attempt(self, body: dict[str, str], attempt: int) -> Outcome:
        try:
            response = await self._client.post(self._webhook.url, json=body)
        except httpx.TransportError as exc:
            reason = describe(exc).replace(self._webhook.url, redact_url(self._webhook.url))
            return Outcome("retry", backoff_s(attempt), f"no answer: {reason}")
        answer = _answer(response)
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), answer, datetime.now(UTC)
            )
        return outcome(response.status_code, attempt, retry_after, _reason(response, answer))


def _answer(response: httpx.Response) -> Any:  # noqa: ANN401 - any JSON
    try:
        return response.json()
    except ValueError:
        return None


def _reason(response: httpx.Response, answer: Any) -> str:  # noqa: ANN401 - any JSON
    if isinstance(answer, dict):
        for key in ("description", "message", "error"):
            if isinstance(answer.get(key), str):
                return str(answer[key])[:200]
    text = response.text.strip().replace("\n", " ")
    return text[:200] or response.reason_phrase


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop it, whatever it says: aiokafka's consumer stopped right after its start re-raises
    the cancellation of its own internal task, which is no cancellation of ours."""
    task = asyncio.current_task()
    try:
        await asyncio.wait_for(consumer.stop(), 5)
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
    except Exception as exc:  # noqa: BLE001 - closing: nothing left to do about it
        log.debug("notify_consumer_close_failed", error=describe(exc))


async def _partition_ids(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions as the brokers have them now (none: no such topic yet)."""
    # aiokafka's public `topics()` fetches the metadata but keeps it to itself; its client's
    # `fetch_all_metadata` gives it (as group_admin reaches the admin client's connections).
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())


def decode(raw: bytes | None) -> dict[str, Any] | None:
    """An event's JSON object (numbers as Decimal), or None when it is not one with an
    event_id and a type."""
    if raw is None:
        return None
    try:
        # The project's one JSON reader: exact numbers, no key twice, bounded nesting (a
        # record nested 100,000 deep raised RecursionError from json.loads here).
        event = loads_exact(raw.decode("utf-8"))
    except (JsonRefusedError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    try:
        event["event_id"] = UUID(str(event.get("event_id")))
    except ValueError:
        return None
    return event


def is_chosen(event: dict[str, Any], events: Collection[str], users: Collection[UUID]) -> bool:
    """Whether the event is one of the chosen types (and users, when some are given)."""
    if event["type"] not in events:
        return False
    if not users:
        return True
    try:
        return UUID(str(event.get("user_id"))) in users
    except ValueError:
        return False


class Notifier:
    """Reads the events topic and posts the chosen events (see the module's docstring)."""

    def __init__(
        self, settings: Settings, options: NotifyOptions, client: httpx.AsyncClient
    ) -> None:
        self._settings = settings
        self._options = options
        self._client = client
        self._webhook_id = options.webhook.id
        self._bucket = TokenBucket(options.rate)
        self.posted = 0
        self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: take the webhook's lock, read and post; on trouble back off and go on."""
        failures = 0
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            consumer: AIOKafkaConsumer | None = None
            try:
                conn = await connect(self._settings.db, timeout_s=self._settings.startup_timeout_s)
                lock = LOCK_BASE + int(self._webhook_id[:8], 16)
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                    log.info("notify_standby", webhook_id=self._webhook_id)
                    await _wait(stop, STANDBY_S)
                    continue
                consumer = AIOKafkaConsumer(
                    **client_options(self._settings.kafka),
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    isolation_level="read_committed",
                )
                await consumer.start()
                await self._session(stop, conn, consumer)
                failures = 0
            # ServiceUnavailable: `connect` gave up after STARTUP_TIMEOUT_S; an outage longer
            # than that is waited out here, as any other (it stopped notify before).
            except (*SERVICE_ERRORS, KafkaError, ServiceUnavailable) as exc:
                log.warning("notify_retrying", error=describe(exc))
                await _wait(stop, BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
            finally:
                if consumer is not None:
                    await _stop_consumer(consumer)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)

    async def _assign(
        self, conn: asyncpg.Connection, consumer: AIOKafkaConsumer, stop: asyncio.Event
    ) -> set[int]:
        topic = self._options.topic
        while not stop.is_set():
            ids = await _partition_ids(consumer, topic)
            if ids:
                break
            log.info("notify_waiting_for_topic", topic=topic)
            await _wait(stop, STANDBY_S)
        else:
            return set()
        partitions = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        stored = await store.stored_offsets(conn, self._webhook_id, topic)
        if not stored and self._options.start == "latest":
            ends = await consumer.end_offsets(partitions)
            for tp, end in ends.items():
                await store.store_offset(conn, self._webhook_id, topic, tp.partition, end)
            stored = {tp.partition: end for tp, end in ends.items()}
        for tp in partitions:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        log.info(
            "notify_reading",
            topic=topic,
            webhook=redact_url(self._options.webhook.url),
            webhook_id=self._webhook_id,
            format=self._options.webhook.format,
            partitions=len(partitions),
        )
        return set(ids)

    async def _session(
        self, stop: asyncio.Event, conn: asyncpg.Connection, consumer: AIOKafkaConsumer
    ) -> None:
        known = await self._assign(conn, consumer, stop)
        poster = Poster(self._client, self._options.webhook, self._bucket, stop)
        refreshed = time.monotonic()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=FETCH_MS, max_records=100)
            for tp, records in sorted(batch.items()):
                if not await self._partition(stop, conn, poster, tp, records):
                    return
            if time.monotonic() - refreshed > REFRESH_PARTITIONS_S:
                refreshed = time.monotonic()
                if await _partition_ids(consumer, self._options.topic) - known:
                    known = await self._assign(conn, consumer, stop)

    async def _partition(
        self,
        stop: asyncio.Event,
        conn: asyncpg.Connection,
        poster: Poster,
        tp: TopicPartition,
        records: list[Any],
    ) -> bool:
        """Handle one partition's records in order; False when stopped mid-way."""
        passed: int | None = None  # the offset past records skipped since the last post
        for record in records:
            if stop.is_set():
                break
            event = decode(record.value)
            if event is None:
                log.warning("notify_event_unreadable", partition=tp.partition, offset=record.offset)
            elif not is_chosen(event, self._options.events, self._options.users):
                pass
            elif await store.is_posted(conn, self._webhook_id, event["event_id"]):
                log.info("notify_duplicate_dropped", event_id=str(event["event_id"]))
            else:
                result = await self._post(conn, poster, event)
                if result is None:
                    break
                await store.record_posted(
                    conn,
                    self._webhook_id,
                    store.Posted(
                        event["event_id"],
                        tp.topic,
                        tp.partition,
                        record.offset,
                        "posted" if result.action == "done" else "refused",
                        result.reason or None,
                    ),
                    keep_offsets=DEDUPE_WINDOW,
                )
                passed = None
                continue
            passed = record.offset + 1
        if passed is not None:
            await store.store_offset(conn, self._webhook_id, tp.topic, tp.partition, passed)
        return not stop.is_set()

    async def _post(
        self, conn: asyncpg.Connection, poster: Poster, event: dict[str, Any]
    ) -> Outcome | None:
        names = Names()
        agent_id, signal_id = event.get("agent_id"), event.get("signal_id")
        with contextlib.suppress(ValueError, TypeError):
            agent, key = await store.names(
                conn,
                UUID(str(agent_id)) if agent_id else None,
                int(signal_id) if signal_id is not None else None,
            )
            names = Names(agent, key)
        text = event_text(event, names)
        result = await poster.post(self._options.webhook.body(text))
        if result is None:
            return None
        bound = {"event_id": str(event["event_id"]), "type": event["type"]}
        if result.action == "done":
            self.posted += 1
            log.info("notify_posted", **bound)
        else:
            self.refused += 1
            log.warning("notify_post_refused", reason=result.reason, **bound)
        return result
