"""The events relay on its own (issue 24): what a crash between send and mark leaves is marked
from the topic's tail, not sent again; published events are pruned after the retention; a
relay behind says so; one relay of the group publishes at a time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.helpers.db import connected
from tests.helpers.kafka import Topics, create_topics, delete_topics, read_all
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, wait_for
from worker.errors import WorkerError
from worker.messages import EVENT_ADAPTER
from worker.metrics import Metrics
from worker.pipeline.kafka import ensure_topics, make_producer
from worker.pipeline.relay import RELAY_LOCK, Relay, event_batch_bytes

pytestmark = pytest.mark.integration

INSERT = """
INSERT INTO event_outbox (event_id, user_id, type, event_at, payload, created_at)
SELECT e, $2::uuid, 'dead_letter', now(),
       jsonb_build_object('type', 'dead_letter', 'user_id', $2::uuid,
       'source_record', 'x:0:' || n, 'reason', 'r', 'kind', 'invalid', 'event_at', now()),
       now() - make_interval(secs => $3)
  FROM unnest($1::uuid[]) WITH ORDINALITY AS t(e, n)
"""


async def test_a_relay_taking_over_sends_nothing_twice_then_prunes(
    services: Services, db_url: str, topics: Topics
) -> None:
    # A retention: published events are marked, then pruned (deleted) by the retention.
    settings = make_settings(services, db_url, topics, events_retention_hours=1e-9)
    events_topic = settings.events_topic_name
    await create_topics(services.kafka_bootstrap, [events_topic], 2)
    user = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(10)]
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with connected(db_url) as conn:
            await conn.execute(INSERT, ids, user, 0)
            # A relay that sent the first four and stopped before it marked them.
            for event_id in ids[:4]:
                await producer.send_and_wait(
                    events_topic, b"{}", key=str(user).encode(),
                    headers=[("event-id", str(event_id).encode())],
                )  # fmt: skip
            relay = Relay(settings, producer, Metrics())
            assert await relay.reconcile(conn) == 4
            assert await relay.publish_once(conn) == 6
            assert await relay.publish_once(conn) == 0
            assert relay.state.unpublished == 0
            await relay._prune(conn)
            left = await conn.fetchval("SELECT count(*) FROM event_outbox")
    finally:
        await producer.stop()
    records = await read_all(services.kafka_bootstrap, events_topic)
    sent = [dict(r.headers)["event-id"].decode() for r in records]
    assert sorted(sent) == sorted(str(i) for i in ids)  # each once
    bodies = [json.loads(r.value) for r in records[4:]] if len(records) > 4 else []
    assert all("event_id" in b for b in bodies if b)
    assert left == 0  # retention 0: every published event pruned
    await delete_topics(services.kafka_bootstrap, [events_topic])


async def test_a_relay_behind_says_so_and_a_second_one_stands_by(
    services: Services, db_url: str, topics: Topics
) -> None:
    settings = make_settings(services, db_url, topics, events_stall_s=30)
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    relay = Relay(settings, producer, Metrics())
    async with connected(db_url) as conn:
        await conn.execute(INSERT, [uuid.uuid4()], uuid.uuid4(), 120)
        relay.state.active = True
        lag = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest "
            "FROM event_outbox WHERE published_at IS NULL"
        )
        assert lag is not None
        relay.state.unpublished, relay.state.oldest_s = int(lag["n"]), float(lag["oldest"])
        reason = relay.reason()
        assert reason is not None and "1 event(s) unpublished, the oldest 1" in reason
        # Another worker's relay holds the lock: this one stands by, publishing nothing.
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK)
        stop = asyncio.Event()
        standby = Relay(settings, producer, Metrics())
        task = asyncio.create_task(standby.run(stop))

        async def tried_twice() -> bool:
            return standby.state.attempts >= 2

        await wait_for(tried_twice, timeout_s=30, what="the standby relay to try twice")
        assert not standby.state.active
        stop.set()
        await asyncio.wait_for(task, 10)
        unsent = await conn.fetchval("SELECT count(*) FROM event_outbox WHERE published_at IS NULL")
        assert unsent == 1
    await producer.stop()


async def test_without_retention_published_events_are_deleted_and_a_takeover_sends_nothing_twice(
    services: Services, db_url: str, topics: Topics
) -> None:
    settings = make_settings(services, db_url, topics)  # the default: no retention
    assert settings.events_retention_hours == 0
    events_topic = settings.events_topic_name
    await create_topics(services.kafka_bootstrap, [events_topic], 2)
    user = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(6)]
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with connected(db_url) as conn:
            await conn.execute(INSERT, ids, user, 0)
            for event_id in ids[:2]:  # sent by a relay that died before it deleted them
                await producer.send_and_wait(
                    events_topic, b"{}", key=str(user).encode(),
                    headers=[("event-id", str(event_id).encode())],
                )  # fmt: skip
            relay = Relay(settings, producer, Metrics())
            assert await relay.reconcile(conn) == 2
            assert await relay.publish_once(conn) == 4
            left = await conn.fetchval("SELECT count(*) FROM event_outbox")
    finally:
        await producer.stop()
    records = await read_all(services.kafka_bootstrap, events_topic)
    assert sorted(dict(r.headers)["event-id"].decode() for r in records) == sorted(map(str, ids))
    assert sum("committed-at" in dict(r.headers) for r in records) == 4  # the relay's
    assert left == 0
    await delete_topics(services.kafka_bootstrap, [events_topic])


async def test_each_body_is_its_payload_with_its_own_event_id_in_large_record_batches(
    services: Services, db_url: str, topics: Topics
) -> None:
    # 3,000 events (two rounds) of one user through the relay's own large record batches;
    # one stored payload carries an `event_id` of its own, which the outbox's id replaces.
    settings = make_settings(services, db_url, topics)
    events_topic = settings.events_topic_name
    await create_topics(services.kafka_bootstrap, [events_topic], 2)
    user = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(3_000)]
    producer = make_producer(settings.kafka, max_batch_bytes=event_batch_bytes(None))
    await producer.start()
    try:
        async with connected(db_url) as conn:
            await conn.execute(INSERT, ids, user, 0)
            await conn.execute(
                'UPDATE event_outbox SET payload = payload || \'{"event_id": "theirs"}\' '
                "WHERE event_id = $1",
                ids[7],
            )
            stored = {
                str(r["event_id"]): json.loads(r["payload"])
                for r in await conn.fetch("SELECT event_id, payload FROM event_outbox")
            }
            relay = Relay(settings, producer, Metrics())
            assert await relay.publish_once(conn) == 2_000
            assert await relay.publish_once(conn) == 1_000
            assert await relay.publish_once(conn) == 0
    finally:
        await producer.stop()
    records = await read_all(services.kafka_bootstrap, events_topic)
    assert len(records) == 3_000
    for record in records:
        event_id = dict(record.headers)["event-id"].decode()
        body = json.loads(record.value)
        assert body == {**stored[event_id], "event_id": event_id}
        assert record.value.count(b'"event_id"') == 1
    # In the outbox's order (one user: one partition).
    assert [dict(r.headers)["event-id"].decode() for r in records] == [str(i) for i in ids]
    await delete_topics(services.kafka_bootstrap, [events_topic])


SMALL_TOPIC_BYTES = 40_000  # what the events topic of the next tests accepts


async def relay_through_small_topic(
    services: Services,
    db_url: str,
    topics: Topics,
    fill: Callable[[asyncpg.Connection], Awaitable[None]],
    metrics: Metrics,
) -> tuple[list[Any], Relay]:
    """Let `fill` write outbox rows, publish them all through a relay to an events topic
    accepting `SMALL_TOPIC_BYTES`, and return what the topic holds (and the relay)."""
    settings = make_settings(services, db_url, topics)
    events_topic = settings.events_topic_name
    limit = {"max.message.bytes": str(SMALL_TOPIC_BYTES)}
    await create_topics(services.kafka_bootstrap, [events_topic], 1, limit)
    batch = event_batch_bytes(SMALL_TOPIC_BYTES)
    producer = make_producer(settings.kafka, max_batch_bytes=batch)
    await producer.start()
    relay = Relay(settings, producer, metrics, topic_limit=SMALL_TOPIC_BYTES)
    try:
        async with connected(db_url) as conn:
            await fill(conn)
            written = await conn.fetchval("SELECT count(*) FROM event_outbox")
            published = 0
            while (sent := await relay.publish_once(conn)) > 0:
                published += sent
            assert published == written
            assert await conn.fetchval("SELECT count(*) FROM event_outbox") == 0
    finally:
        await producer.stop()
    records = await read_all(services.kafka_bootstrap, events_topic)
    await delete_topics(services.kafka_bootstrap, [events_topic])
    return records, relay


async def test_an_event_larger_than_the_topic_accepts_goes_cut_down_and_nothing_waits_behind_it(
    services: Services, db_url: str, topics: Topics
) -> None:
    # The events topic accepts 40,000 bytes; a signal's agents that did not trade, for a user
    # with 600 agents, make an event of about 60,000. Sent whole, Kafka refused it at every
    # try and the events behind it waited for good; now it goes with its small fields only.
    user = uuid.uuid4()
    before, large, after = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    executions = [
        {"agent_id": str(uuid.uuid4()), "status": "skipped", "reason": "no SOL left"}
        for _ in range(600)
    ]

    async def fill(conn: asyncpg.Connection) -> None:
        await conn.execute(INSERT, [before], user, 0)
        await conn.execute(
            "INSERT INTO event_outbox (event_id, user_id, type, event_at, payload) "
            "VALUES ($1, $2, 'executions_not_traded', now(), jsonb_build_object("
            "'type', 'executions_not_traded', 'user_id', $2::uuid, 'signal_id', 7, "
            "'signal_key', 's-7', 'token_address', 'TokA', 'token_symbol', NULL, "
            "'executions', $3::jsonb, 'event_at', now()))",
            large,
            user,
            json.dumps(executions),
        )
        await conn.execute(INSERT, [after], user, 0)

    metrics = Metrics()
    records, relay = await relay_through_small_topic(services, db_url, topics, fill, metrics)
    ids = [dict(r.headers)["event-id"].decode() for r in records]
    assert ids == [str(before), str(large), str(after)]
    cut = json.loads(records[1].value)
    assert len(records[1].value) <= relay.max_event_bytes
    assert cut["event_id"] == str(large)
    assert cut["type"] == "executions_not_traded" and cut["signal_id"] == 7
    assert cut["truncated"] == {
        "fields": ["executions"],
        "counts": {"executions": 600},
        "max_event_bytes": 35904,
    }
    assert "executions" not in cut and cut["signal_key"] == "s-7"
    # What the published schema says of such an event (docs/schemas/event.v1.json).
    event = EVENT_ADAPTER.validate_json(records[1].value)
    assert event.truncated is not None and event.truncated.fields == ["executions"]
    assert json.loads(records[2].value)["event_id"] == str(after)
    assert metrics.events_cut_down._value.get() == 1


async def test_a_payload_that_is_not_an_object_goes_out_as_valid_json_and_holds_nothing_up(
    services: Services, db_url: str, topics: Topics
) -> None:
    # No writer of the worker's makes one; a hand-written row might. Sent spliced it was
    # invalid JSON ('[]', 'null'); '"event_id"' failed the relay's query at every try, and a
    # large array failed the cut-down's: every event behind them waited for good.
    user = uuid.uuid4()
    odd = ["[]", "null", '"event_id"', "7", json.dumps(list(range(20_000)))]
    ids = [uuid.uuid4() for _ in range(len(odd) + 1)]

    async def fill(conn: asyncpg.Connection) -> None:
        for event_id, payload in zip(ids, odd, strict=False):
            await conn.execute(
                "INSERT INTO event_outbox (event_id, user_id, type, event_at, payload) "
                "VALUES ($1, $2, 'odd', now(), $3::jsonb)",
                event_id,
                user,
                payload,
            )
        await conn.execute(INSERT, ids[-1:], user, 0)  # an ordinary event behind them

    records, _ = await relay_through_small_topic(services, db_url, topics, fill, Metrics())
    assert [dict(r.headers)["event-id"].decode() for r in records] == [str(i) for i in ids]
    bodies = [json.loads(r.value) for r in records]  # every one valid JSON
    for event_id, payload, body in zip(ids, odd[:-1], bodies, strict=False):
        assert body == {"event_id": str(event_id), "type": "odd", "payload": json.loads(payload)}
    assert bodies[4]["truncated"] == {
        "fields": ["payload"],
        "counts": {"payload": 20_000},
        "max_event_bytes": 35904,
    }
    assert bodies[5]["type"] == "dead_letter"


async def test_an_events_topic_too_small_for_any_event_stops_the_worker_in_one_line(
    services: Services, db_url: str, topics: Topics
) -> None:
    settings = make_settings(services, db_url, topics)
    events_topic = settings.events_topic_name
    limit = {"max.message.bytes": "10000"}
    await create_topics(services.kafka_bootstrap, [events_topic], 1, limit)
    try:
        with pytest.raises(WorkerError) as refused:
            await ensure_topics(settings.kafka, timeout_s=10, events_topic=events_topic)
        message = str(refused.value)
        assert "\n" not in message
        assert f"EVENTS_TOPIC {events_topic} accepts records of at most 10,000 bytes" in message
        assert "EVENTS_ENABLED=false" in message
        # Large enough: no refusal, and the limit read back for the relay's batches.
        await delete_topics(services.kafka_bootstrap, [events_topic])
        await wait_for_topic_gone(services, events_topic)
        await create_topics(services.kafka_bootstrap, [events_topic], 1)
        limits = await ensure_topics(settings.kafka, timeout_s=10, events_topic=events_topic)
        assert limits.events is not None and limits.events >= 1_000_000
    finally:
        await delete_topics(
            services.kafka_bootstrap,
            [events_topic, topics.signals, topics.prices, topics.dlq, topics.commands],
        )


async def wait_for_topic_gone(services: Services, topic: str) -> None:
    """Until the broker no longer lists `topic` (a delete is asynchronous)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        for _ in range(100):
            if topic not in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{topic} still listed after 10 s")
    finally:
        await admin.close()


async def test_an_unexpected_error_is_said_on_readyz_and_the_relay_goes_on(
    services: Services, db_url: str, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, any error but a service's ended the relay's task: events stayed unpublished
    # and /readyz said nothing.
    settings = make_settings(services, db_url, topics)
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    relay = Relay(settings, producer, Metrics())
    calls = 0

    async def broken(_conn: object) -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    async def nothing_sent(_conn: object) -> int:
        return 0

    monkeypatch.setattr(relay, "publish_once", broken)
    monkeypatch.setattr(relay, "reconcile", nothing_sent)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def failed_once() -> bool:
            return calls >= 1 and relay.state.trouble is not None

        await wait_for(failed_once, timeout_s=30, what="the relay to meet the error")
        assert relay.reason() == "events relay: failed: RuntimeError: a bug"
        assert not task.done()  # still there, to try again
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await producer.stop()
