"""Order markers (`worker.pipeline.markers`) in the order (`worker.pipeline.timeline`): a
marker moves its partition's time on like a record of it, lets the users' records waiting
go without the lateness allowance, never holds back what comes after it, and a tick written
after it is decided after it whatever its stamp."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.errors import InvalidMessage
from worker.metrics import Metrics
from worker.pipeline.markers import (
    HEADER,
    HEADER_VALUE,
    Markers,
    encode_marker,
    is_marker,
    marker_time,
)
from worker.pipeline.timeline import (
    RANK_COMMAND,
    RANK_MARKER,
    RANK_SIGNAL,
    RANK_SOL_TICK,
    RANK_TICK,
    STEP,
    Entry,
    Timeline,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATE = timedelta(minutes=10)  # a lateness allowance no test waits out


def ms(n: int) -> datetime:
    return T0 + timedelta(milliseconds=n)


def order() -> Timeline[str]:
    """Signals `s0`, `s1` (users' partitions 0 and 1), commands `c0`, `c1`, prices `p0`,
    `p1`; a lateness allowance of ten minutes."""
    line: Timeline[str] = Timeline(LATE)
    for n in (0, 1):
        line.open(f"s{n}", lowest_rank=RANK_SIGNAL, last_at=None, group=n)
        line.open(f"c{n}", lowest_rank=RANK_COMMAND, last_at=None, group=n)
        line.open(f"p{n}", lowest_rank=RANK_SOL_TICK, last_at=None)
    return line


ALL = ["s0", "s1", "c0", "c1", "p0", "p1"]


def signal(line: Timeline[str], source: str, offset: int, at: int) -> Entry[str]:
    return line.place(source, offset, ms(at), RANK_SIGNAL, (source,), f"{source}@{offset}")


def tick(line: Timeline[str], source: str, offset: int, at: int) -> Entry[str]:
    return line.place(source, offset, ms(at), RANK_TICK, ("A", source), f"{source}@{offset}")


def marker(line: Timeline[str], source: str, offset: int, at: datetime) -> Entry[str]:
    return line.place(source, offset, at, RANK_MARKER, ("t", source), f"{source}@{offset}")


def go(line: Timeline[str], now: datetime) -> list[str]:
    """Every partition read to its end at `now`: what the order lets go."""
    line.promise(dict.fromkeys(ALL, now))
    return [e.payload for e in line.release()]


def test_markers_let_a_waiting_signal_go_without_the_lateness_allowance() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    assert go(line, ms(20)) == []  # the prices may still bring a tick stamped before it
    wanted = line.wanted_markers(ALL, ms(20))
    # Every price partition, and the commands partition of the signal's users only.
    assert wanted == {"p0": ms(10), "p1": ms(10), "c0": ms(10)}
    for n, source in enumerate(sorted(wanted)):
        marker(line, source, 0, wanted[source])
        assert go(line, ms(21)) == ([] if n < 2 else ["s0@0", "c0@0", "p0@0", "p1@0"])
    assert line.wanted_markers(ALL, ms(21)) == {}  # nothing waits


def test_a_tick_written_after_a_marker_is_decided_after_it_whatever_its_stamp() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    for source in ("p0", "p1", "c0"):
        marker(line, source, 0, ms(10))
    late = tick(line, "p0", 1, 9)  # stamped before the signal, written after the marker
    assert late.at == ms(10) + STEP
    assert late.event_time == ms(9)
    # The signal and the markers go; the tick waits for the other users' partitions (a
    # tick acts on every user), which let it go after the allowance, after the signal.
    assert go(line, ms(21)) == ["s0@0", "c0@0", "p0@0", "p1@0"]
    assert go(line, ms(11) + STEP + LATE) == ["p0@1"]


def test_markers_never_hold_back_what_comes_after_them() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    for source in ("p0", "p1", "c0"):
        marker(line, source, 0, ms(10))
    assert go(line, ms(21))[0] == "s0@0"
    # s1 and c1 (other users) are idle and promise only ten minutes back: the markers,
    # like the signals, do not wait for them, so the next signal needs only its markers.
    signal(line, "s0", 1, 30)
    assert go(line, ms(40)) == []
    for source, at in line.wanted_markers(ALL, ms(40)).items():
        marker(line, source, 1, at)
    assert go(line, ms(41))[0] == "s0@1"
    assert len(line) == 0


def test_a_marker_is_never_late_and_moves_its_partition_time_on() -> None:
    line = order()
    tick(line, "p0", 0, 50)
    entry = marker(line, "p0", 1, ms(20))  # older than the tick before it
    assert not entry.late
    assert entry.at == ms(50) + STEP
    assert tick(line, "p0", 2, 30).at == ms(50) + 2 * STEP


def test_no_marker_where_the_partition_already_lets_them_go_or_is_not_read_to_its_end() -> None:
    line = order()
    tick(line, "p1", 0, 15)  # p1's time passed the signal's already
    signal(line, "s0", 0, 10)
    assert line.wanted_markers(["p0", "p1", "c0"], ms(20)) == {"p0": ms(10), "c0": ms(10)}
    assert line.wanted_markers(["p1"], ms(20)) == {}  # p0 and c0 not read to their end


def test_a_marker_never_carries_a_time_after_the_clock() -> None:
    line = order()
    signal(line, "s1", 0, 500)  # stamped ahead of the worker's clock
    assert line.wanted_markers(ALL, ms(100)) == {"p0": ms(100), "p1": ms(100), "c1": ms(100)}


def test_the_latest_waiting_time_of_each_users_number() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    signal(line, "s0", 1, 30)
    signal(line, "s1", 0, 20)
    assert line.waiting_users(ms(25)) == {0: ms(25), 1: ms(20)}  # never after the clock
    marker(line, "c1", 0, ms(20))
    assert line.waiting_users(ms(100)) == {0: ms(30), 1: ms(20)}  # markers wait for nothing


def test_ticks_waiting_ask_for_no_marker() -> None:
    line = order()
    tick(line, "p0", 0, 10)  # waits for the users' partitions: markers are for users
    assert line.wanted_markers(ALL, ms(20)) == {}


# ------------------------------------------------------------------ the records


def record(value: bytes | None, *, headers: Any = None, timestamp: datetime = T0) -> Any:
    return ConsumerRecord(
        topic="prices",
        partition=0,
        offset=7,
        timestamp=int(timestamp.timestamp() * 1000),
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=len(value or b""),
        headers=headers if headers is not None else [(HEADER, HEADER_VALUE)],
    )


def read(value: bytes | None) -> datetime:
    return marker_time(record(value), received_at=T0, now=ms(100), ahead=timedelta(seconds=60))


def test_a_marker_carries_its_time_to_the_microsecond() -> None:
    at = ms(12) + timedelta(microseconds=345)
    assert read(encode_marker(at, "group-a")) == at
    assert is_marker(record(b"{}"))
    assert not is_marker(record(b"{}", headers=[]))
    assert not is_marker(record(b"{}", headers=[(HEADER, b"something else")]))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not JSON"),
        (None, "JSON object"),
        (b"x" * 2000, "JSON object"),
        (json.dumps({"at": "2026-01-01T00:00:00Z"}).encode(), '"marker": "order"'),
        (json.dumps({"marker": "order", "at": 5}).encode(), "RFC 3339"),
        (json.dumps({"marker": "order", "at": "soon"}).encode(), "is not a time"),
        (json.dumps({"marker": "order", "at": "2026-01-01T00:00:00"}).encode(), "time zone"),
        (json.dumps({"marker": "order", "at": "2026-01-01T00:05:00Z"}).encode(), "ahead"),
        (json.dumps({"marker": "order", "at": "9999-12-31T00:00:00Z"}).encode(), "ahead"),
    ],
)
def test_a_marker_that_is_not_well_formed_or_lies_ahead_is_refused(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(InvalidMessage, match="invalid order marker") as caught:
        read(value)
    assert reason in str(caught.value)


class Producer:
    """Records what is sent; each send waits for `release` (a broker's acknowledgement)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, int, bytes]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def send_and_wait(self, topic: str, value: bytes, **options: Any) -> None:
        self.sent.append((topic, options["partition"], value))
        assert options["headers"] == [(HEADER, HEADER_VALUE)]
        await self.release.wait()
        if self.fail:
            raise OSError("refused")


async def test_one_marker_in_flight_per_partition_and_none_that_moves_nothing() -> None:
    producer = Producer()
    metrics = Metrics()
    markers = Markers(producer, "group-a", metrics)
    p0, p1 = TopicPartition("prices", 0), TopicPartition("prices", 1)
    assert markers.want({p0: ms(10), p1: ms(10)}) == 2
    await asyncio.sleep(0)
    assert markers.want({p0: ms(20)}) == 0  # one in flight already
    producer.release.set()
    await markers.close()
    assert markers.want({p0: ms(10), p1: ms(5)}) == 0  # written at that time or later
    assert markers.want({p0: ms(20)}) == 1
    await markers.close()
    times = [json.loads(v)["at"] for _, _, v in producer.sent]
    assert times == ["2026-01-01T00:00:00.010000Z"] * 2 + ["2026-01-01T00:00:00.020000Z"]
    assert metrics.order_markers.labels("prices")._value.get() == 3


async def test_a_marker_that_fails_is_counted_and_written_again_when_asked() -> None:
    producer = Producer(fail=True)
    producer.release.set()
    metrics = Metrics()
    markers = Markers(producer, "group-a", metrics)
    p0 = TopicPartition("prices", 0)
    assert markers.want({p0: ms(10)}) == 1
    await markers.close()
    assert metrics.order_marker_failures._value.get() == 1
    assert markers.want({p0: ms(10)}) == 1  # not taken as written
    await markers.close()
    assert len(producer.sent) == 2
