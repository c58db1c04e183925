"""Ticks before signals: which signals of a fetch wait for the ticks received before them."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.pipeline.ordering import TickWatermarks, split_at

P0, P1 = TopicPartition("prices", 0), TopicPartition("prices", 1)


def _record(offset: int, ts: int, topic: str = "prices") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, ts, 0, None, b"{}", None, 0, 2, ())


def test_a_price_partition_never_read_holds_every_signal() -> None:
    marks = TickWatermarks()
    # No fetch response yet: its end is unknown.
    assert marks.bound([P0], {P0: 0}, {}) == -1
    # The broker says it holds 5 records, none read: still everything waits.
    assert marks.bound([P0], {P0: 0}, {P0: 5}) == -1
    # Its position is still being looked up: everything waits.
    assert marks.bound([P0], {}, {P0: 5}) == -1


def test_an_empty_or_caught_up_partition_holds_nothing() -> None:
    marks = TickWatermarks()
    assert marks.bound([P0], {}, {P0: 0}) is None  # empty
    assert marks.bound([P0], {P0: 7}, {P0: 7}) is None  # read from the end
    marks.observe(P0, [_record(5, 1000), _record(6, 1100)])
    assert marks.bound([P0], {P0: 7}, {P0: 7}) is None  # read up to the end


def test_a_tail_that_is_not_a_data_record_is_caught_up_by_the_position() -> None:
    marks = TickWatermarks()
    # A transactional tick at offset 6, its commit marker at 7: the last tick's offset + 1
    # (7) is below the end (8), but the consumer's position moved past the marker.
    marks.observe(P0, [_record(5, 1000), _record(6, 1100)])
    assert marks.bound([P0], {P0: 8}, {P0: 8}) is None
    # Not past it yet (the marker is still to be fetched): signals after 1100 wait.
    assert marks.bound([P0], {P0: 7}, {P0: 8}) == 1100
    # An aborted transaction at the tail of a partition never read: its records and its
    # abort marker are skipped, nothing was taken, and the position reached the end.
    assert marks.bound([P1], {P1: 2}, {P1: 2}) is None
    # Records deleted before they were read: the stored offset (3) is below the log start
    # (10, also the end); the consumer reset its position there.
    assert marks.bound([P1], {P1: 10}, {P1: 10}) is None


def test_an_open_transaction_at_the_tail_is_not_waited_for() -> None:
    marks = TickWatermarks()
    marks.observe(P0, [_record(0, 1000)])
    # The high watermark is 5 but an open transaction starts at 1: the last stable offset
    # (the end a read_committed consumer can reach) is 1, and the position is there.
    assert marks.bound([P0], {P0: 1}, {P0: 1}) is None


def test_a_lagging_partition_bounds_signals_by_its_last_tick_and_the_lowest_wins() -> None:
    marks = TickWatermarks()
    marks.observe(P0, [_record(0, 1000), _record(1, 1500)])
    marks.observe(P1, [_record(0, 1200)])
    at = {P0: 2, P1: 1}
    ends = {P0: 9, P1: 1}
    # P1 is caught up; P0 has records left: signals up to its last tick (1500) may go.
    assert marks.bound([P0, P1], at, ends) == 1500
    ends[P1] = 4
    assert marks.bound([P0, P1], at, ends) == 1200
    # Only owned partitions count.
    assert marks.bound([P1], at, ends) == 1200
    marks.forget([P0, P1])
    assert marks.bound([P0], at, ends) == -1


def test_split_keeps_a_partitions_order_behind_its_first_late_record() -> None:
    records = [_record(10, 100, "s"), _record(11, 300, "s"), _record(12, 200, "s")]
    ready, held = split_at(records, 250)
    assert [r.offset for r in ready] == [10]
    assert [r.offset for r in held] == [11, 12]  # 12 is early, but comes after 11
    assert split_at(records, 300) == (records, [])
    assert split_at(records, 99) == ([], records)
