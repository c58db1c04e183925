"""`dlq`: parsing coordinates, reading a dead letter's headers, what a redrive sends."""

from __future__ import annotations

import argparse

import pytest

from worker.commands.dlq import DeadLetter, _ordered, format_list, redriven_headers
from worker.commands.dlq_args import coordinates_arg, dlq_place_arg


def letter(partition: int, offset: int, *headers: tuple[str, bytes]) -> DeadLetter:
    return DeadLetter(partition, offset, 1_700_000_000_000, b"k", b"v", 1, headers)


def origin(topic: str, partition: int, offset: int) -> tuple[tuple[str, bytes], ...]:
    return (
        ("original-topic", topic.encode()),
        ("original-partition", str(partition).encode()),
        ("original-offset", str(offset).encode()),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trading-signals:0:42", ("trading-signals", 0, 42)),
        ("a.b_c-d:12:0", ("a.b_c-d", 12, 0)),
    ],
)
def test_coordinates_are_topic_partition_offset(text: str, expected: tuple[str, int, int]) -> None:
    assert coordinates_arg(text) == expected


@pytest.mark.parametrize("text", ["", "t:1", ":1:2", "t:x:2", "t:1:-2", "t:1:2.0", "0:1"])
def test_other_coordinates_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not topic:partition:offset"):
        coordinates_arg(text)


def test_a_dlq_place_is_partition_colon_offset() -> None:
    assert dlq_place_arg("2:17") == (2, 17)
    for bad in ("2", "2:", "a:1", "-1:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            dlq_place_arg(bad)


def test_original_coordinates_come_from_the_headers_or_are_none() -> None:
    assert letter(0, 0, *origin("s", 1, 2)).original == ("s", 1, 2)
    assert letter(0, 0, *origin("s", 1, 2)[:2]).original is None
    assert letter(0, 0, ("original-topic", b"s"), ("original-partition", b"x"),
                  ("original-offset", b"2")).original is None  # fmt: skip


def test_a_redrive_carries_the_records_own_headers_and_where_it_comes_from() -> None:
    dead = letter(
        1,
        9,
        ("trace", b"t1"),
        ("error", b"why"),
        ("redriven-from", b"old:0:0"),
        ("payload", b"whole?"),
        *origin("s", 2, 5),
    )
    assert redriven_headers(dead, "the.dlq") == [
        ("trace", b"t1"),
        ("redriven-from", b"the.dlq:1:9"),
        ("redriven-original", b"s:2:5"),
    ]


def test_redrives_go_in_original_order_and_a_duplicate_rides_on_the_first() -> None:
    a = letter(0, 3, *origin("s", 0, 5))
    b = letter(1, 0, *origin("s", 0, 4))
    dup = letter(2, 1, *origin("s", 0, 5))
    bare = letter(2, 2)
    assert list(_ordered([a, b, dup, bare])) == [(bare, None), (b, None), (a, None), (dup, a)]


def test_the_table_escapes_what_a_terminal_would_obey() -> None:
    dead = DeadLetter(0, 1, 0, None, b"\x1b[2J" + b"x" * 100, 104,
                      (("error", b"bad\nrow"), *origin("s\x1b", 0, 1)))  # fmt: skip
    table = format_list([dead.head()], {})
    assert "\x1b" not in table
    assert "bad\\nrow" in table
    assert "s\\x1b:0:1" in table
    assert table.splitlines()[1].endswith("…")
