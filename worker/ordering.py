"""Ticks before signals: a signal is decided only once the ticks received before it are in.

Signals and ticks come from two topics, fetched independently: at start-up the signal
partitions are often fetched before the price partitions have a position, and a busy price
feed can lag behind the signals. Deciding a signal then would use an older SOL or token
price than a tick the broker had received before it.

So the consumer keeps, for every price partition it owns, how far it has consumed and the
record timestamp of the last tick it took. A price partition is *caught up* when its
position has reached the high watermark the broker last reported (nothing received is left
to read); otherwise it holds back every signal whose record timestamp is later than its last
tick's (all of them when it has not been read at all yet). Held signals are not decoded:
their partition is sought back to them, and a later fetch brings them again, after the
ticks. A fetch's ticks are committed before its signals are decided (`consumer.py`).

Bounds, on purpose: only the price partitions this worker owns are considered (with several
workers, a tick owned by another may commit after a signal decided here: the guarantee is
per worker), and a signal is never held longer than `MAX_HOLD_S` (a price partition whose
high watermark never arrives must not stall every signal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

MAX_HOLD_S = 10.0
_NOTHING_SEEN = -1  # a record timestamp below every real one: hold every signal


class TickWatermarks:
    """Where consumption of each owned price partition stands."""

    def __init__(self) -> None:
        self._position: dict[TopicPartition, int] = {}
        self._last_ts: dict[TopicPartition, int] = {}

    def observe(self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Records of `tp` were taken (and will be applied before any signal of the fetch)."""
        if records:
            self._position[tp] = records[-1].offset + 1
            self._last_ts[tp] = records[-1].timestamp

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """These partitions are no longer ours."""
        for tp in tps:
            self._position.pop(tp, None)
            self._last_ts.pop(tp, None)

    def bound(
        self,
        tps: Iterable[TopicPartition],
        highwater: Callable[[TopicPartition], int | None],
        start: Mapping[TopicPartition, int],
    ) -> int | None:
        """The latest record timestamp (ms) a signal may have to be decided now; None when
        every price partition in `tps` is caught up. `start` gives the position of a
        partition nothing was read from yet (its stored offset)."""
        limits: list[int] = []
        for tp in tps:
            end = highwater(tp)
            position = self._position.get(tp, start.get(tp))
            if end is not None and (end == 0 or (position is not None and position >= end)):
                continue
            limits.append(self._last_ts.get(tp, _NOTHING_SEEN))
        return min(limits) if limits else None


def split_at(
    records: Sequence[ConsumerRecord[Any, Any]], bound: int
) -> tuple[list[ConsumerRecord[Any, Any]], list[ConsumerRecord[Any, Any]]]:
    """(records up to the first one later than `bound`, that one and all after it): a
    partition's order is kept, so nothing after a held record goes ahead of it."""
    for i, record in enumerate(records):
        if record.timestamp > bound:
            return list(records[:i]), list(records[i:])
    return list(records), []
