"""`signal-worker offsets show|reset|skip`: where the consumer group stands, in PostgreSQL
and Kafka.

The worker's truth is the offset stored in `consumer_offsets` with the effects of the
records before it; the offset committed to the Kafka group follows it for the usual lag
tools. `show` prints both, the log end and the lag of each partition of the signal and
price topics. `reset` moves both, and only while no member of the group is active: a
running worker would go on from the offsets it holds and overwrite the new ones. `skip`
moves one partition past the one record it would read next, after sending that record to
the dead-letter topic (a record is never dropped silently), under the same rule.

Under the table, `show` says what is wrong with a stored offset that does not fit its log
(`worker.offset_checks`): past the log's end or of another topic id (the topic was recreated,
or this is another cluster's: the worker does not consume that partition until `reset`),
or below the log's start (that many offsets were removed before they were processed).
`reset` stores the topic's current id with the offsets, so a recreated topic is accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.db.offsets import fetch_stored, set_offset
from worker.db.pool import connect_migrated
from worker.deadletters import DeadLetter, DeadLetters
from worker.errors import UsageError, WorkerError
from worker.kafka import (
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    client_options,
    make_producer,
    record_limits,
    start_client,
)
from worker.metrics import Metrics
from worker.offset_checks import check, resolving_command
from worker.retry import describe
from worker.settings import KafkaSettings, Settings
from worker.topic_ids import topic_ids

# Group states in which no consumer holds partitions (Kafka's classic group protocol).
_IDLE_STATES = frozenset({"Empty", "Dead"})


class GroupActiveError(WorkerError):
    """The consumer group has active members, so its offsets must not be moved now."""


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition's offsets: stored with the effects, committed to Kafka, log bounds."""

    topic: str
    partition: int
    stored: int | None
    committed: int | None
    start: int
    end: int
    stored_topic_id: str | None = None
    topic_id: str | None = None

    @property
    def problem(self) -> str | None:
        """What is wrong with the stored offset in this log, and what to do; None if fine."""
        if self.stored is None:
            return None
        verdict = check(
            self.stored,
            self.stored_topic_id,
            start=self.start,
            end=self.end,
            topic_id=self.topic_id,
        )
        if verdict.is_blocked:
            return (
                f"{verdict.detail}; the worker does not consume this partition: stop every "
                f"worker of the group, then run `{resolving_command(self.topic)}` (or "
                "--to-latest to skip the log's records)"
            )
        if verdict.never_processed:
            return verdict.detail
        return None

    @property
    def position(self) -> int:
        """Where the worker starts: the stored offset, else Kafka's, else the log start."""
        if self.stored is not None:
            return self.stored
        if self.committed is not None:
            return self.committed
        return self.start

    @property
    def lag(self) -> int:
        """Records between where the worker reads next and the end of the log: from the
        log start when its position is below it (those records are gone, see `removed`)."""
        return self.end - max(self.position, self.start)

    @property
    def removed(self) -> int:
        """Records below the log start that the group never processed (deleted with
        delete-records or by retention before they were read); 0 when none."""
        return max(0, self.start - self.position)


@dataclass(frozen=True, slots=True)
class GroupState:
    """What the group coordinator says about the group."""

    state: str
    members: int

    @property
    def is_active(self) -> bool:
        """True when some consumer is (or is becoming) a member of the group."""
        return self.members > 0 or self.state not in _IDLE_STATES


class _Cluster:
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
async def _cluster(settings: Settings) -> AsyncIterator[_Cluster]:
    kafka = settings.kafka
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await start_client(admin, kafka, timeout_s=settings.startup_timeout_s)
    try:
        # read_committed: the end the worker's own consumer sees (the last stable offset).
        reader = AIOKafkaConsumer(
            **client_options(kafka), group_id=None, isolation_level="read_committed"
        )
        await start_client(reader, kafka, timeout_s=settings.startup_timeout_s)
        try:
            yield _Cluster(kafka, admin, reader)
        except KafkaError as exc:
            raise WorkerError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc
        finally:
            await reader.stop()
    finally:
        await admin.close()


def _topics(settings: Settings, args: argparse.Namespace) -> list[str]:
    known = [settings.signals_topic, settings.prices_topic]
    wanted: list[str] = args.topic or known
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise UsageError(
            f"--topic {unknown[0]} is neither SIGNALS_TOPIC ({known[0]}) nor PRICES_TOPIC "
            f"({known[1]})"
        )
    return list(dict.fromkeys(wanted))


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp with its UTC offset (`2026-11-26T12:00:00Z`)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise UsageError(
            f"--to-timestamp {text!r} is not an RFC 3339 timestamp such as 2026-11-26T12:00:00Z"
        ) from exc
    if moment.tzinfo is None:
        raise UsageError(f"--to-timestamp {text!r} needs a UTC offset, such as Z or +02:00")
    return moment


async def collect(
    settings: Settings,
    cluster: _Cluster,
    conn: asyncpg.Connection,
    topics: list[str],
    *,
    only: TopicPartition | None = None,
) -> list[PartitionOffsets]:
    """The offsets of every partition of `topics` (or `only` that one), from the database
    and Kafka."""
    partitions = [tp for tp in await cluster.partitions(topics) if only is None or tp == only]
    stored = await fetch_stored(conn, settings.consumer_group, topics)
    committed = await cluster.committed(partitions)
    start, end = await cluster.bounds(partitions)
    ids = await cluster.topic_ids(topics)
    rows = []
    for tp in partitions:
        row = stored.get((tp.topic, tp.partition))
        rows.append(
            PartitionOffsets(
                topic=tp.topic,
                partition=tp.partition,
                stored=None if row is None else row.next_offset,
                committed=committed.get(tp),
                start=start[tp],
                end=end[tp],
                stored_topic_id=None if row is None else row.topic_id,
                topic_id=ids.get(tp.topic),
            )
        )
    return rows


def removed_notes(rows: Sequence[PartitionOffsets]) -> list[str]:
    """One line per partition whose records were removed before the group processed them."""
    return [
        f"{r.topic}:{r.partition}: {r.removed} record(s) at offsets {r.position} to "
        f"{r.start - 1} were removed from the log before they were processed (deleted or "
        f"expired); the worker resumes at the log start, {r.start}"
        for r in rows
        if r.removed
    ]


def format_table(rows: Sequence[PartitionOffsets]) -> str:
    """Aligned columns: topic, partition, stored, committed, end, lag ('-' for none)."""

    def opt(value: int | None) -> str:
        return "-" if value is None else str(value)

    header = ("topic", "partition", "stored", "committed", "end", "lag")
    cells = [header] + [
        (r.topic, str(r.partition), opt(r.stored), opt(r.committed), str(r.end), str(r.lag))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        lines.append("  ".join([first, *rest]))
    return "\n".join(lines)


def format_problems(rows: Sequence[PartitionOffsets]) -> str:
    """One line per partition whose stored offset does not fit its log ('' when none)."""
    return "\n".join(f"{r.topic}:{r.partition}: {r.problem}" for r in rows if r.problem is not None)


async def _targets(
    cluster: _Cluster, partitions: list[TopicPartition], args: argparse.Namespace
) -> tuple[dict[TopicPartition, int], str]:
    if args.to_timestamp is not None:
        moment = parse_timestamp(args.to_timestamp)
        offsets = await cluster.at_time(partitions, int(moment.timestamp() * 1000))
        return offsets, f"the first records at or after {moment.isoformat()}"
    start, end = await cluster.bounds(partitions)
    if args.to_latest:
        return end, "the end of the log"
    return start, "the earliest records"


async def _refuse_if_active(cluster: _Cluster) -> None:
    group = await cluster.group_state()
    if group.is_active:
        raise GroupActiveError(
            f"consumer group {cluster.kafka.consumer_group!r} is active (state {group.state}, "
            f"{group.members} member(s)); stop every worker of the group, then reset"
        )


async def _reset(
    settings: Settings, args: argparse.Namespace, cluster: _Cluster, conn: asyncpg.Connection
) -> str:
    """Set the stored and the committed offsets together; return what they were set to."""
    topics = _topics(settings, args)
    await _refuse_if_active(cluster)
    partitions = await cluster.partitions(topics)
    targets, where = await _targets(cluster, partitions, args)
    # The offsets now belong to the topics as they are (a recreated topic is accepted).
    ids = await cluster.topic_ids(topics)
    async with conn.transaction():
        for tp, offset in targets.items():
            await set_offset(
                conn, settings.consumer_group, tp.topic, tp.partition, offset, ids.get(tp.topic)
            )
        # Committed before the database commits: Kafka refuses the commit of a consumer
        # outside the group once a worker has joined, and then the database rolls back.
        await _refuse_if_active(cluster)
        try:
            await cluster.commit(targets, timeout_s=settings.startup_timeout_s)
        except CommitFailedError as exc:
            raise GroupActiveError(
                f"consumer group {settings.consumer_group!r} became active during the reset; "
                "nothing was changed"
            ) from exc
    return f"reset {len(targets)} partition(s) of group {settings.consumer_group} to {where}"


async def _skip(
    settings: Settings, args: argparse.Namespace, cluster: _Cluster, conn: asyncpg.Connection
) -> str:
    """Dead-letter the record the partition would be read from next, then move past it."""
    await _refuse_if_active(cluster)
    tp = TopicPartition(args.topic, args.partition)
    if tp not in await cluster.partitions([args.topic]):
        raise UsageError(f"--partition {args.partition}: {args.topic} has no such partition")
    [row] = await collect(settings, cluster, conn, [args.topic], only=tp)
    if args.offset != row.position:
        where = "already past it" if args.offset < row.position else "not there yet"
        raise UsageError(
            f"{args.topic}:{args.partition} would be read from offset {row.position}, so offset "
            f"{args.offset} cannot be skipped ({where}); skip moves past the next record only "
            "(`offsets reset` moves further)"
        )
    if args.offset >= row.end:
        raise UsageError(
            f"{args.topic}:{args.partition} has no record at offset {args.offset} yet "
            f"(the log ends at {row.end}); nothing to skip"
        )
    record = await cluster.read(tp, args.offset, timeout_s=settings.startup_timeout_s)
    if record is not None:
        await cluster.dead_letter(record, args.reason, timeout_s=settings.startup_timeout_s)
    async with conn.transaction():
        await set_offset(conn, settings.consumer_group, tp.topic, tp.partition, args.offset + 1)
        await _refuse_if_active(cluster)
        try:
            await cluster.commit({tp: args.offset + 1}, timeout_s=settings.startup_timeout_s)
        except CommitFailedError as exc:
            raise GroupActiveError(
                f"consumer group {settings.consumer_group!r} became active during the skip; "
                "the offsets were not moved (the record was dead-lettered already)"
            ) from exc
    sent = (
        f"sent to {settings.dlq_topic} with error {args.reason!r}"
        if record is not None
        else "already gone from the log (retention), so not dead-lettered"
    )
    return (
        f"skipped {args.topic}:{args.partition} offset {args.offset} ({sent}); the group "
        f"resumes at {args.offset + 1}"
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """`offsets show` prints the table; `reset` and `skip` move offsets, then print it."""
    if args.offsets_command == "skip":
        topics = _topics(settings, argparse.Namespace(topic=[args.topic]))
    else:
        topics = _topics(settings, args)
    if getattr(args, "to_timestamp", None) is not None:
        parse_timestamp(args.to_timestamp)  # a typo fails before anything is touched
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with _cluster(settings) as cluster:
            summary: str | None = None
            if args.offsets_command == "reset":
                summary = await _reset(settings, args, cluster, conn)
            elif args.offsets_command == "skip":
                summary = await _skip(settings, args, cluster, conn)
            group = await cluster.group_state()
            rows = await collect(settings, cluster, conn, topics)
    except asyncpg.UndefinedTableError as exc:
        raise WorkerError(
            "the database has no consumer_offsets table: run `signal-worker migrate` first"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise WorkerError(f"PostgreSQL: {describe(exc)}") from exc
    finally:
        await conn.close()
    if summary:
        print(summary)
    for note in removed_notes(rows):
        print(note)
    print(f"group {settings.consumer_group} (state {group.state}, {group.members} member(s))")
    print(format_table(rows))
    problems = format_problems(rows)
    if problems:
        print()
        print(problems)
    return 0
