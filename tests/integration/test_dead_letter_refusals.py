"""A dead letter the broker refuses for what it carries is restamped, never retried forever.

Before, every Kafka error was the server's trouble: a DLQ topic that refuses old timestamps
(`message.timestamp.before.max.ms`) or a compacted DLQ (which wants a key) refused the dead
letter of a record from the last week or without a key, and the batch was retried forever.
Against the real broker: the letter goes through restamped, its own time in a header.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from tests.helpers.kafka import delete_topics, read_all
from tests.helpers.services import Services
from worker.metrics import Metrics
from worker.pipeline.deadletters import DeadLetter, DeadLetters

pytestmark = pytest.mark.integration

WEEK_AGO_MS = 1_000_000_000_000  # 2001: older than any timestamp window


def _record(key: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="trading-signals",
        partition=0,
        offset=7,
        timestamp=WEEK_AGO_MS,
        timestamp_type=0,
        key=key,
        value=b"not json",
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=8,
        headers=(),
    )


@pytest.fixture
async def producer(services: Services) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"message.timestamp.before.max.ms": "86400000"}, b"user-1"),  # old timestamps refused
        ({"cleanup.policy": "compact"}, None),  # records without a key refused
    ],
)
async def test_a_dead_letter_refused_for_its_content_goes_through_restamped(
    services: Services, producer: AIOKafkaProducer, config: dict[str, str], key: bytes | None
) -> None:
    topic = f"dlq-refusing-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    try:
        letters = DeadLetters(producer, topic, Metrics(), max_bytes=1_000_000)
        dead = DeadLetter(_record(key), "not JSON", "invalid")
        await asyncio.wait_for(letters.send([dead]), timeout=60)  # bound of a hung test
        [got] = await read_all(services.kafka_bootstrap, topic)
    finally:
        await delete_topics(services.kafka_bootstrap, [topic])
    headers = dict(got.headers)
    assert got.value == b"not json"
    assert headers["original-timestamp"] == str(WEEK_AGO_MS).encode()
    assert headers["original-offset"] == b"7"
    assert got.timestamp > WEEK_AGO_MS
