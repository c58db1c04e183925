"""`offsets show`: records removed from the log before the group processed them."""

from __future__ import annotations

from worker.commands.offsets import PartitionOffsets, removed_notes


def _row(stored: int | None, committed: int | None, start: int, end: int) -> PartitionOffsets:
    return PartitionOffsets("prices", 1, stored, committed, start, end)


def test_a_stored_offset_below_the_log_start_has_no_lag_for_the_removed_records() -> None:
    # Offsets 1 and 2 deleted (delete-records) before the group read them: the log starts
    # and ends at 3, nothing is left to read.
    row = _row(stored=1, committed=None, start=3, end=3)
    assert (row.lag, row.removed) == (0, 2)
    # More records after the deletion: only those are lag.
    assert (_row(1, None, 3, 10).lag, _row(1, None, 3, 10).removed) == (7, 2)
    # Kafka's committed offset stands in for a missing stored one.
    assert (_row(None, 0, 3, 5).lag, _row(None, 0, 3, 5).removed) == (2, 3)


def test_only_partitions_with_removed_records_get_a_note() -> None:
    rows = [_row(5, 5, 0, 9), _row(None, None, 4, 9), _row(1, None, 3, 3)]
    assert [(r.lag, r.removed) for r in rows] == [(4, 0), (5, 0), (0, 2)]
    assert removed_notes(rows) == [
        "prices:1: 2 record(s) at offsets 1 to 2 were removed from the log before they were "
        "processed (deleted or expired); the worker resumes at the log start, 3"
    ]
