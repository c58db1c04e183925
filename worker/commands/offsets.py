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
(`worker.pipeline.offset_checks`): past the log's end or of another topic id (the topic was
recreated, or this is another cluster's: the worker does not consume that partition until
`reset`), or below the log's start (that many offsets were removed before they were processed).
`reset` stores the topic's current id with the offsets, so a recreated topic is accepted.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiokafka.errors import CommitFailedError
from aiokafka.structs import TopicPartition

from worker.db.offsets import fetch_stored, set_offset
from worker.db.pool import connect_migrated
from worker.errors import UsageError, WorkerError
from worker.pipeline.group_admin import Cluster, open_cluster
from worker.pipeline.offset_checks import check, resolving_command
from worker.retry import describe
from worker.settings import Settings


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


async def _existing(
    settings: Settings, args: argparse.Namespace, cluster: Cluster, topics: list[str]
) -> list[str]:
    """`topics`; the commands topic, unless named, only once it exists (the worker creates
    it at its first start)."""
    if getattr(args, "topic", None):
        return topics
    args.topic = await cluster.existing(topics, optional=[settings.kafka.commands_topic])
    return list(args.topic)


def _topics(settings: Settings, args: argparse.Namespace) -> list[str]:
    known = settings.kafka.input_topics
    wanted: list[str] = args.topic or known
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise UsageError(
            f"--topic {unknown[0]} is none of SIGNALS_TOPIC ({known[0]}), PRICES_TOPIC "
            f"({known[1]}), COMMANDS_TOPIC ({known[2]})"
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
    cluster: Cluster,
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
    cluster: Cluster, partitions: list[TopicPartition], args: argparse.Namespace
) -> tuple[dict[TopicPartition, int], str]:
    if args.to_timestamp is not None:
        moment = parse_timestamp(args.to_timestamp)
        offsets = await cluster.at_time(partitions, int(moment.timestamp() * 1000))
        return offsets, f"the first records at or after {moment.isoformat()}"
    start, end = await cluster.bounds(partitions)
    if args.to_latest:
        return end, "the end of the log"
    return start, "the earliest records"


async def _refuse_if_active(cluster: Cluster) -> None:
    group = await cluster.group_state()
    if group.is_active:
        raise GroupActiveError(
            f"consumer group {cluster.kafka.consumer_group!r} is active (state {group.state}, "
            f"{group.members} member(s)); stop every worker of the group, then reset"
        )


async def _reset(
    settings: Settings, args: argparse.Namespace, cluster: Cluster, conn: asyncpg.Connection
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
    settings: Settings, args: argparse.Namespace, cluster: Cluster, conn: asyncpg.Connection
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
        async with open_cluster(settings.kafka, timeout_s=settings.startup_timeout_s) as cluster:
            topics = await _existing(settings, args, cluster, topics)
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
