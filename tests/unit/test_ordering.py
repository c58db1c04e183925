"""Ticks before signals: which signals of a fetch wait for the ticks received before them."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.ordering import TickWatermarks, split_at

P0, P1 = TopicPartition("prices", 0), TopicPartition("prices", 1)


def _record(offset: int, ts: int, topic: str = "prices") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, ts, 0, None, b"{}", None, 0, 2, ())


def test_a_price_partition_never_read_holds_every_signal() -> None:
    marks = TickWatermarks()
    # No fetch response yet: its high watermark is unknown.
    assert marks.bound([P0], {}.get, {}) == -1
    # The broker says it holds 5 records, none read: still everything waits.
    assert marks.bound([P0], {P0: 5}.get, {}) == -1


def test_an_empty_or_caught_up_partition_holds_nothing() -> None:
    marks = TickWatermarks()
    assert marks.bound([P0], {P0: 0}.get, {}) is None  # empty
    assert marks.bound([P0], {P0: 7}.get, {P0: 7}) is None  # stored offset at the end
    marks.observe(P0, [_record(5, 1000), _record(6, 1100)])
    assert marks.bound([P0], {P0: 7}.get, {}) is None  # read up to the end


def test_a_lagging_partition_bounds_signals_by_its_last_tick_and_the_lowest_wins() -> None:
    marks = TickWatermarks()
    marks.observe(P0, [_record(0, 1000), _record(1, 1500)])
    marks.observe(P1, [_record(0, 1200)])
    ends = {P0: 9, P1: 1}
    # P1 is caught up; P0 has records left: signals up to its last tick (1500) may go.
    assert marks.bound([P0, P1], ends.get, {}) == 1500
    ends[P1] = 4
    assert marks.bound([P0, P1], ends.get, {}) == 1200
    # Only owned partitions count.
    assert marks.bound([P1], ends.get, {}) == 1200
    marks.forget([P0, P1])
    assert marks.bound([P0], ends.get, {}) == -1


def test_split_keeps_a_partitions_order_behind_its_first_late_record() -> None:
    records = [_record(10, 100, "s"), _record(11, 300, "s"), _record(12, 200, "s")]
    ready, held = split_at(records, 250)
    assert [r.offset for r in ready] == [10]
    assert [r.offset for r in held] == [11, 12]  # 12 is early, but comes after 11
    assert split_at(records, 300) == (records, [])
    assert split_at(records, 99) == ([], records)
