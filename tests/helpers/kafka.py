"""Topics of the tests' own; publishing to them and reading them back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.helpers.services import Services


@dataclass(frozen=True)
class Topics:
    """Topic and group names of this test's own."""

    signals: str
    prices: str
    dlq: str
    group: str

    @property
    def commands(self) -> str:
        """The commands topic (the worker's default name for these signals)."""
        return f"{self.signals}.commands"

    @property
    def events(self) -> str:
        """The events topic (the worker's default name for these signals)."""
        return f"{self.signals}.events"


async def create_topics(
    bootstrap: str, names: list[str], partitions: int, configs: dict[str, str] | None = None
) -> None:
    """Create `names` with `partitions` partitions each (replication 1) and topic `configs`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, partitions, 1, topic_configs=configs or {}) for n in names]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete `names`; missing ones are fine."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def create_test_topics(services: Services, partitions: int = 3) -> Topics:
    """Fresh signal, price and dead-letter topics and a consumer group name."""
    tag = uuid.uuid4().hex[:10]
    names = Topics(f"t{tag}.signals", f"t{tag}.prices", f"t{tag}.dlq", f"g{tag}")
    await create_topics(
        services.kafka_bootstrap,
        [names.signals, names.prices, names.dlq, names.commands],
        partitions,
    )
    return names


async def publish(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any]],
    *,
    key: Callable[[bytes | dict[str, Any]], bytes | None] | None = None,
) -> None:
    """Send each value (dicts as JSON) and wait for every acknowledgement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000
    )
    await producer.start()
    try:
        futures = []
        for value in values:
            raw = value if isinstance(value, bytes) else json.dumps(value).encode()
            k = (
                key(value)
                if key
                else (str(value.get("user_id", "")).encode() if isinstance(value, dict) else None)
            )
            futures.append(await producer.send(topic, raw, key=k))
        for f in futures:
            await f
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 20) -> list[Any]:
    """Read `expected` records from the start of `topic` (fewer if the time runs out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        with contextlib.suppress(TimeoutError):  # fewer than expected: the caller asserts
            async with asyncio.timeout(timeout_s):
                while len(records) < expected:
                    batch = await consumer.getmany(timeout_ms=500)
                    for recs in batch.values():
                        records.extend(recs)
    finally:
        await consumer.stop()
    return records


@dataclass(frozen=True)
class Sent:
    """Where one published record went."""

    partition: int
    offset: int


def encode(value: bytes | dict[str, Any] | None) -> bytes | None:
    """Dicts as JSON, bytes (and None, a record without a value) as they are."""
    return orjson.dumps(value) if isinstance(value, dict) else value


def user_key(value: bytes | dict[str, Any] | None) -> bytes | None:
    """The key of contract section 3: the user id of a signal; none for anything else."""
    if isinstance(value, dict) and "user_id" in value:
        return str(value["user_id"]).encode()
    if isinstance(value, dict) and "token_address" in value:
        return str(value["token_address"]).encode()
    return None


async def send_all(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any] | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]] | None] | None = None,
) -> list[Sent]:
    """Publish every value in order, wait for every acknowledgement, return where each went."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000
    )
    try:
        await producer.start()
        futures = []
        for i, value in enumerate(values):
            key = keys[i] if keys is not None else user_key(value)
            futures.append(
                await producer.send(
                    topic,
                    encode(value),
                    key=key,
                    headers=headers[i] if headers is not None else None,
                )
            )
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(m.partition, m.offset) for m in metadata]


@dataclass
class Feed:
    """A paced stream: `chunks` slices of every (topic, values) pair, published in turn
    `pause_s` apart, that stops before chunk `hold_at` until `release()`.

    The hold is what makes a fault land mid-stream on any machine: whatever the worker's
    speed, the part after the hold is published only once the fault has been injected, so
    the stream goes on after it. `held` is set when the feed reaches the hold.
    """

    bootstrap: str
    streams: Sequence[tuple[str, Sequence[dict[str, Any]]]]
    chunks: int
    hold_at: int
    pause_s: float = 0.25
    held: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def chunk(self, values: Sequence[Any], c: int) -> Sequence[Any]:
        return values[c * len(values) // self.chunks : (c + 1) * len(values) // self.chunks]

    def before_hold(self, values: Sequence[Any]) -> int:
        """How many of `values` are published before the hold."""
        return self.hold_at * len(values) // self.chunks

    def release(self) -> None:
        self._released.set()

    async def run(self) -> None:
        for c in range(self.chunks):
            if c == self.hold_at:
                self.held.set()
                await self._released.wait()
            for topic, values in self.streams:
                await send_all(self.bootstrap, topic, self.chunk(values, c))
            await asyncio.sleep(self.pause_s)
        self.held.set()


async def read_all(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of `topic` up to its end offsets at the time of the call."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4_000_000,
        fetch_max_bytes=16_000_000,
    )
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"topic {topic} has no partitions"
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        async with asyncio.timeout(timeout_s):
            while sum(ends.values()) > len(records):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, recs in batch.items():
                    records.extend(r for r in recs if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()
