"""Ticks before signals: a signal is decided only once the ticks received before it are in.

Signals and ticks come from two topics, fetched independently: at start-up the signal
partitions are often fetched before the price partitions have a position, and a busy price
feed can lag behind the signals. Deciding a signal then would use an older SOL or token
price than a tick the broker had received before it.

So the consumer keeps, for every price partition it owns, the record timestamp of the last
tick it took. A price partition is *caught up* when the consumer's fetch position has
reached the partition's last stable offset (read_committed: the end of what a consumer can
read; the high watermark where the broker reports no stable offset): nothing received is
left to read. Otherwise it holds back every signal whose record timestamp is later than its
last tick's (all of them when it has not been read at all yet). Held signals are not
decoded: their partition is sought back to them, and a later fetch brings them again, after
the ticks. A fetch's ticks are committed before its signals are decided (`consumer.py`).

Why the fetch position and not the last tick's offset + 1: a partition's tail is not always
a data record. A transactional producer's commit or abort marker, the records of an aborted
transaction and offsets compaction removed take offsets that no record returned to the
worker has; and records deleted (delete-records, retention) before they were read leave a
stored offset below the log start. The fetch position moves past all of them (aiokafka
advances it over control batches and aborted batches, and resets it to the log start after
an out-of-range fetch); the last tick's offset + 1 never would, so such a partition never
looked caught up and every signal waited `MAX_HOLD_S`, until an ordinary tick came.

Bounds, on purpose: only the price partitions this worker owns are considered (with several
workers, a tick owned by another may commit after a signal decided here: the guarantee is
per worker); a transaction still open at the tail is not waited for (its records are not
readable before its commit, which may never come; the last stable offset stops before it);
and a signal is never held longer than `MAX_HOLD_S` (a price partition whose end never
arrives must not stall every signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord, TopicPartition

MAX_HOLD_S = 10.0

log = structlog.get_logger(__name__)
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
_NOTHING_SEEN = -1  # a record timestamp below every real one: hold every signal


class TickWatermarks:
    """The record timestamp of the last tick taken from each owned price partition."""

    def __init__(self) -> None:
        self._last_ts: dict[TopicPartition, int] = {}

    def observe(self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Records of `tp` were taken (and will be applied before any signal of the fetch)."""
        if records:
            self._last_ts[tp] = records[-1].timestamp

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """These partitions are no longer ours."""
        for tp in tps:
            self._last_ts.pop(tp, None)

    def bound(
        self,
        tps: Iterable[TopicPartition],
        position: Mapping[TopicPartition, int],
        end: Mapping[TopicPartition, int | None],
    ) -> int | None:
        """The latest record timestamp (ms) a signal may have to be decided now; None when
        every price partition in `tps` is caught up.

        `position` is the consumer's fetch position of each partition that has one (a
        partition still looking up where to start has none); `end` the offset up to which
        it can be read (`readable_end`), None before the broker reported one. A partition
        is caught up when it is empty or its position has reached its end.
        """
        limits: list[int] = []
        for tp in tps:
            last = end.get(tp)
            at = position.get(tp)
            if last is not None and (last == 0 or (at is not None and at >= last)):
                continue
            limits.append(self._last_ts.get(tp, _NOTHING_SEEN))
        return min(limits) if limits else None


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


def split_at(
    records: Sequence[ConsumerRecord[Any, Any]], bound: int
) -> tuple[list[ConsumerRecord[Any, Any]], list[ConsumerRecord[Any, Any]]]:
    """(records up to the first one later than `bound`, that one and all after it): a
    partition's order is kept, so nothing after a held record goes ahead of it."""
    for i, record in enumerate(records):
        if record.timestamp > bound:
            return list(records[:i]), list(records[i:])
    return list(records), []


def names(tps: set[TopicPartition]) -> list[str]:
    """`topic:partition` of each, sorted (for logs)."""
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)


class SignalHold:
    """Holds back the signals of a fetch that must wait for ticks, at most `MAX_HOLD_S` in a
    row; `ticks` and `blocked` are the offset keeper's (`worker.pipeline.rebalance`)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        prices_topic: str,
        ticks: TickWatermarks,
        blocked: Container[TopicPartition],
    ) -> None:
        self._consumer = consumer
        self._prices = prices_topic
        self._ticks = ticks
        self._blocked = blocked
        self._holding_since: float | None = None

    async def release(self, batch: Batch) -> Batch:
        """The fetch less the signals that must wait for ticks; their partitions are sought
        back to them, so a later fetch brings them again. A price partition is caught up by
        the consumer's position, not the last tick's offset: a transaction marker or deleted
        records at its tail must not hold every signal."""
        prices = self._prices
        for tp, records in batch.items():
            if tp.topic == prices:
                self._ticks.observe(tp, records)
        # A blocked price partition (`worker.pipeline.offset_checks`) is not waited for: it is
        # not read.
        owned = [
            tp
            for tp in self._consumer.assignment()
            if tp.topic == prices and tp not in self._blocked
        ]
        ends = {tp: readable_end(self._consumer, tp) for tp in owned}
        positions = await positions_now(self._consumer, owned)
        bound = self._ticks.bound(owned, positions, ends)
        now = time.monotonic()
        if bound is None:
            self._holding_since = None
            return batch
        if self._holding_since is not None and now - self._holding_since > MAX_HOLD_S:
            log.warning("signals_not_held_longer", held_s=round(now - self._holding_since, 1))
            self._holding_since = None
            return batch
        kept: Batch = {}
        held_any = False
        for tp, records in batch.items():
            ready, held = (records, []) if tp.topic == prices else split_at(records, bound)
            if held:
                held_any = True
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                    self._consumer.seek(tp, held[0].offset)
                log.debug("signals_held_for_ticks", partition=names({tp}), held=len(held))
            if ready:
                kept[tp] = ready
        self._holding_since = (self._holding_since or now) if held_any else None
        return kept
