"""When a partition is read to its end (the order's idle partitions)."""

from __future__ import annotations

from worker.pipeline.ordering import is_read_to_end


def test_a_partition_never_read_is_not_read_to_its_end() -> None:
    assert not is_read_to_end(0, None)  # no fetch response yet: its end is unknown
    assert not is_read_to_end(0, 5)  # the broker says it holds 5 records, none read
    assert not is_read_to_end(None, 5)  # its position is still being looked up


def test_an_empty_or_fully_read_partition_is() -> None:
    assert is_read_to_end(None, 0)  # empty
    assert is_read_to_end(7, 7)  # read up to the end


def test_a_tail_that_is_not_a_data_record_is_passed_by_the_position() -> None:
    # A transactional record at offset 6, its commit marker at 7: the last record's offset
    # + 1 (7) is below the end (8), but the consumer's position moved past the marker.
    assert is_read_to_end(8, 8)
    assert not is_read_to_end(7, 8)  # not past it yet: the marker is still to be fetched
    # Records deleted before they were read: the consumer reset its position to the log
    # start, which is also the end.
    assert is_read_to_end(10, 10)


def test_an_open_transaction_at_the_tail_is_not_waited_for() -> None:
    # The high watermark is 5 but an open transaction starts at 1: the last stable offset
    # (the end a read_committed consumer can reach, `readable_end`) is 1.
    assert is_read_to_end(1, 1)
