"""When a partition is read to its end: what the order (`worker.pipeline.timeline`) asks.

The order of everything the worker applies (`timeline.py`) releases a record once no record
still unread can come before it. A partition the consumer has read to its end cannot bring
anything earlier than what the worker's clock minus `LATENESS_MS` says; one with records left
to read can (its next one may be stamped anywhere after its last).

A partition is *read to its end* when the consumer's position has reached its readable end:
the last stable offset (read_committed: the end of what a consumer can read), or the high
watermark where the broker reports no stable offset. The position, and not the last record's
offset + 1, because a partition's tail is not always a data record: a transactional
producer's commit or abort marker, the records of an aborted transaction and offsets
compaction removed take offsets that no record returned to the worker has; and records
deleted (delete-records, retention) before they were read leave a stored offset below the log
start. The position moves past all of them (aiokafka advances it over control batches and
aborted batches, and resets it to the log start after an out-of-range fetch); the last
record's offset + 1 never would, so such a partition would never look read to its end and
would hold everything back until an ordinary record came.

A transaction still open at the tail is not waited for: its records are not readable before
its commit, which may never come (the last stable offset stops before it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition


def readable_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """Where an assigned partition's readable records end, as the last fetch response
    said: the last stable offset (read_committed), else the high watermark (a broker
    without transactions, or read_uncommitted, whose last stable offset is -1); None
    before any fetch response."""
    stable: int | None = consumer.last_stable_offset(tp)
    if stable is not None and stable >= 0:
        return stable
    highwater: int | None = consumer.highwater(tp)
    return highwater


async def positions_now(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The fetch position of each of `tps` that has one now, without waiting: a partition
    whose position is still being looked up (or reset) is left out, and its signals wait.

    aiokafka's `position()` returns at once when the position is known and otherwise waits
    for it (for as long as the broker takes); the zero timeout cuts that wait short, so the
    fetch loop never stalls on it. A partition revoked meanwhile is left out too.
    """
    found: dict[TopicPartition, int] = {}
    for tp in tps:
        with contextlib.suppress(TimeoutError, IllegalStateError):
            async with asyncio.timeout(0):
                found[tp] = int(await consumer.position(tp))
    return found


def names(tps: set[TopicPartition]) -> list[str]:
    """`topic:partition` of each, sorted (for logs)."""
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)


def is_read_to_end(position: int | None, end: int | None) -> bool:
    """True when a partition whose fetch position is `position` (None: still being looked
    up) and whose readable end is `end` (None: no fetch response yet) has nothing left to
    read: it is empty, or the position reached the end."""
    return end is not None and (end == 0 or (position is not None and position >= end))


async def read_to_end(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> list[TopicPartition]:
    """The partitions of `tps` the consumer has read to their end, now."""
    owned = list(tps)
    positions = await positions_now(consumer, owned)
    return [tp for tp in owned if is_read_to_end(positions.get(tp), readable_end(consumer, tp))]
