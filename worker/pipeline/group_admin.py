"""The consumer group and its topics as `signal-worker offsets` sees them: the Kafka admin
client and a consumer outside the group (metadata, log offsets, committed offsets, reading one
record, committing for the group, dead-lettering a skipped record)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.errors import WorkerError
from worker.metrics import Metrics
from worker.pipeline.deadletters import DeadLetter, DeadLetters
from worker.pipeline.kafka import (
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    client_options,
    make_producer,
    record_limits,
    start_client,
)
from worker.pipeline.topic_ids import topic_ids
from worker.settings import KafkaSettings

# Group states in which no consumer holds partitions (Kafka's classic group protocol).
_IDLE_STATES = frozenset({"Empty", "Dead"})


@dataclass(frozen=True, slots=True)
class GroupState:
    """What the group coordinator says about the group."""

    state: str
    members: int

    @property
    def is_active(self) -> bool:
        """True when some consumer is (or is becoming) a member of the group."""
        return self.members > 0 or self.state not in _IDLE_STATES


class Cluster:
    """The admin client and a consumer outside the group, for metadata and log offsets."""

    def __init__(
        self, kafka: KafkaSettings, admin: AIOKafkaAdminClient, reader: AIOKafkaConsumer
    ) -> None:
        self.kafka = kafka
        self.admin = admin
        self.reader = reader

    async def group_state(self) -> GroupState:
        """The group's state and member count."""
        responses = await self.admin.describe_consumer_groups([self.kafka.consumer_group])
        group = responses[0].to_object()["groups"][0]
        if group["error_code"]:
            raise WorkerError(
                f"cannot describe consumer group {self.kafka.consumer_group!r} "
                f"(Kafka error code {group['error_code']})"
            )
        return GroupState(str(group["state"]), len(group["members"]))

    async def existing(self, topics: Sequence[str], *, optional: Sequence[str]) -> list[str]:
        """`topics` without those of `optional` that do not exist."""
        found = set(await self.admin.list_topics())
        return [t for t in topics if t in found or t not in optional]

    async def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        """Every partition of `topics`, which must exist."""
        found: list[TopicPartition] = []
        for topic in await self.admin.describe_topics(list(topics)):
            if topic["error_code"] or not topic["partitions"]:
                raise WorkerError(f"topic {topic['topic']!r} does not exist on the brokers")
            found.extend(
                TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]
            )
        return sorted(found)

    async def topic_ids(self, topics: list[str]) -> dict[str, str | None]:
        """Each topic's id (None where the brokers give none)."""
        # The admin client's own connections (aiokafka has no public way to send a request).
        ids = await topic_ids(self.admin._client, topics)
        return ids if ids is not None else dict.fromkeys(topics)

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets (partitions without one are left out)."""
        offsets = await self.admin.list_consumer_group_offsets(
            self.kafka.consumer_group, partitions=partitions
        )
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def bounds(
        self, partitions: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The first and the next-to-be-written offset of each partition."""
        start = await self.reader.beginning_offsets(partitions)
        end = await self.reader.end_offsets(partitions)
        return dict(start), dict(end)

    async def at_time(self, partitions: list[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        """The first offset at or after `ms` in each partition; the end where none is."""
        found = await self.reader.offsets_for_times(dict.fromkeys(partitions, ms))
        _, end = await self.bounds(partitions)
        return {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in partitions}

    async def read(
        self, tp: TopicPartition, offset: int, *, timeout_s: float
    ) -> ConsumerRecord[bytes, bytes] | None:
        """The record at `offset` of `tp`; None when the log no longer holds it."""
        self.reader.assign([tp])
        self.reader.seek(tp, offset)
        async with asyncio.timeout(timeout_s):
            record: ConsumerRecord[bytes, bytes] = await self.reader.getone(tp)
        return record if record.offset == offset else None

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], reason: str, *, timeout_s: float
    ) -> None:
        """Send `record` to the DLQ topic with `reason`, cut down as the worker would."""
        producer = make_producer(self.kafka)
        await start_client(producer, self.kafka, timeout_s=timeout_s)
        try:
            limits = await record_limits(self.admin, [self.kafka.dlq_topic])
            letters = DeadLetters(
                producer,
                self.kafka.dlq_topic,
                Metrics(),
                max_bytes=limits.get(self.kafka.dlq_topic, KAFKA_DEFAULT_MAX_MESSAGE_BYTES),
            )
            await letters.send([DeadLetter(record, reason, "skipped")])
        finally:
            await producer.stop()

    async def commit(self, offsets: dict[TopicPartition, int], *, timeout_s: float) -> None:
        """Commit `offsets` for the group as a consumer outside it (refused if it has members)."""
        committer = AIOKafkaConsumer(
            **client_options(self.kafka),
            group_id=self.kafka.consumer_group,
            enable_auto_commit=False,
        )
        await start_client(committer, self.kafka, timeout_s=timeout_s)
        try:
            committer.assign(list(offsets))
            committer.pause(*offsets)  # it must not fetch, only commit
            await committer.commit(offsets)
        finally:
            await committer.stop()


@contextlib.asynccontextmanager
async def open_cluster(kafka: KafkaSettings, *, timeout_s: float) -> AsyncIterator[Cluster]:
    """The admin client and a reader outside the group, started (within `timeout_s`) and
    closed; a Kafka error inside becomes a `WorkerError` naming the brokers."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await start_client(admin, kafka, timeout_s=timeout_s)
    try:
        # read_committed: the end the worker's own consumer sees (the last stable offset).
        reader = AIOKafkaConsumer(
            **client_options(kafka), group_id=None, isolation_level="read_committed"
        )
        await start_client(reader, kafka, timeout_s=timeout_s)
        try:
            yield Cluster(kafka, admin, reader)
        except KafkaError as exc:
            raise WorkerError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc
        finally:
            await reader.stop()
    finally:
        await admin.close()
