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
from worker.pipeline.batching import SIGNALS, TICKS, decode, placing
from worker.pipeline.markers import (
    HEADER,
    HEADER_VALUE,
    Markers,
    OrderMarker,
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


def markable(source: str) -> bool:
    return source[0] in "pc"  # workers write markers into prices and commands only


def wanted(line: Timeline[str], now: datetime, idle: list[str] = ALL, **more: Any) -> Any:
    """The markers asked for: partition -> the time each carries."""
    asked = line.wanted_markers(idle, now, markable=markable, **more)
    return {source: at for source, (at, _) in asked.items()}


def test_markers_let_a_waiting_signal_go_without_the_lateness_allowance() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    assert go(line, ms(20)) == []  # the prices may still bring a tick stamped before it
    asked = wanted(line, ms(20))
    # Every price partition, and the commands partition of the signal's users only.
    assert asked == {"p0": ms(10), "p1": ms(10), "c0": ms(10)}
    for n, source in enumerate(sorted(asked)):
        marker(line, source, 0, asked[source])
        assert go(line, ms(21)) == ([] if n < 2 else ["s0@0", "c0@0", "p0@0", "p1@0"])
    assert wanted(line, ms(21)) == {}  # nothing waits


def test_a_tick_written_after_a_marker_is_decided_after_it_whatever_its_stamp() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    for source in ("p0", "p1", "c0"):
        marker(line, source, 0, ms(10))
    late = tick(line, "p0", 1, 9)  # stamped before the signal, written after the marker
    assert late.at == ms(10) + STEP
    assert late.event_time == ms(9)
    assert late.moved and not late.late  # counted apart: a copy without markers differs
    assert tick(line, "p0", 2, 8).moved  # raised past the marker through the one before
    assert not tick(line, "p0", 3, 20).moved
    assert not tick(line, "p0", 4, 15).moved  # raised by a tick, not by the marker
    assert not tick(line, "p1", 1, 11).moved
    # The signal and the markers go; the tick waits for the other users' partitions (a
    # tick acts on every user), which let it go after the allowance, after the signal.
    assert go(line, ms(21)) == ["s0@0", "c0@0", "p0@0", "p1@0"]
    assert go(line, ms(21) + STEP + LATE) == ["p0@1", "p0@2", "p1@1", "p0@3", "p0@4"]


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
    for source, at in wanted(line, ms(40)).items():
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


def test_markers_only_where_every_partition_holding_the_record_back_can_take_one() -> None:
    line = order()
    tick(line, "p1", 0, 15)  # p1's time passed the signal's already: it does not hold it
    signal(line, "s0", 0, 10)
    assert wanted(line, ms(20), ["p0", "p1", "c0"]) == {"p0": ms(10), "c0": ms(10)}
    # p0 not read to its end: its next record may be a tick before the signal, so a
    # marker in c0 could not let it go: none at all.
    assert wanted(line, ms(20), ["p1", "c0"]) == {}


def test_a_command_waiting_for_its_signals_partition_asks_for_nothing() -> None:
    line = order()
    line.place("c0", 0, ms(10), RANK_COMMAND, ("c0",), "c0@0")
    # s0 holds it back, and workers write no markers into the signals topic.
    assert wanted(line, ms(20)) == {}


def test_a_record_ahead_of_the_clock_waits_for_the_clock_not_for_markers() -> None:
    line = order()
    signal(line, "s1", 0, 500)  # stamped ahead of the worker's clock
    assert wanted(line, ms(100)) == {}
    line = order()
    signal(line, "s1", 0, 50)
    signal(line, "s1", 1, 500)
    # The markers let go what the clock has reached; the one ahead waits for the clock.
    assert wanted(line, ms(100)) == {"p0": ms(50), "p1": ms(50), "c1": ms(50)}


def test_the_latest_waiting_time_of_each_users_number() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    signal(line, "s0", 1, 30)
    signal(line, "s1", 0, 20)
    assert line.waiting_users(ms(25)) == {0: ms(10), 1: ms(20)}  # none after the clock
    marker(line, "c1", 0, ms(20))
    assert line.waiting_users(ms(100)) == {0: ms(30), 1: ms(20)}  # markers wait for nothing


def test_other_workers_partitions_get_markers_once_they_reported_their_place() -> None:
    line = order()
    line.close("p1")  # another worker's now
    signal(line, "s0", 0, 10)
    assert wanted(line, ms(20), elsewhere={"p1": (None, None)}) == {}  # place unknown
    behind = (ms(5), RANK_SOL_TICK)
    assert wanted(line, ms(20), elsewhere={"p1": (behind, None), "c1": (behind, 1)}) == {
        "p0": ms(10),
        "c0": ms(10),
        "p1": ms(10),  # c1: other users', it does not hold this one back
    }
    past = (ms(50), RANK_SOL_TICK)
    assert wanted(line, ms(20), elsewhere={"p1": (past, None)}) == {"p0": ms(10), "c0": ms(10)}


def test_one_round_asks_for_the_commands_partitions_of_every_number_waiting() -> None:
    line = order()
    signal(line, "s0", 0, 10)
    signal(line, "s1", 0, 12)
    asked = line.wanted_markers(ALL, ms(20), markable=markable)
    assert {k: v[0] for k, v in asked.items()} == {
        "p0": ms(12),
        "p1": ms(12),
        "c0": ms(10),
        "c1": ms(12),
    }
    # With each partition's time now (what `Markers.want` checks the last marker against):
    # none known yet for p0 (never read, nothing promised), 10 min back once promised.
    assert asked["p0"][1] is None
    assert go(line, ms(20)) == []
    assert line.wanted_markers(ALL, ms(20), markable=markable)["p0"][1] == ms(20) - LATE
    for source, (at, _) in asked.items():
        marker(line, source, 0, at)
    out = go(line, ms(21))
    assert out.index("s0@0") < out.index("s1@0")
    assert len(line) == 0  # both numbers' signals and every marker went in one round


def test_ticks_waiting_ask_for_no_marker() -> None:
    line = order()
    tick(line, "p0", 0, 10)  # waits for the users' partitions: markers are for users
    assert wanted(line, ms(20)) == {}


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
    assert read(encode_marker(ms(900), "group-a")) == ms(900)  # written just after it
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
        (json.dumps({"marker": "order", "at": "2026-01-01T00:00:02Z"}).encode(), "after its"),
        (json.dumps({"marker": "order", "at": "9999-12-31T00:00:00Z"}).encode(), "after its"),
        (json.dumps({"marker": "order", "at": "0001-01-01T00:00:00+05:00"}).encode(), "not a"),
        (b"[" * 1000, "not JSON"),
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
    markers = Markers(producer, "group-a", metrics, interval_s=0.0, pending_s=0.0)
    p0, p1 = TopicPartition("prices", 0), TopicPartition("prices", 1)
    assert markers.want({p0: (ms(10), None), p1: (ms(10), None)}) == 2
    await asyncio.sleep(0)
    assert markers.want({p0: (ms(20), None)}) == 0  # one in flight already
    producer.release.set()
    await markers.close()
    # Written at that time or later: nothing to move on.
    assert markers.want({p0: (ms(10), None), p1: (ms(5), None)}) == 0
    assert markers.want({p0: (ms(20), ms(10) + STEP)}) == 1
    await markers.close()
    times = [json.loads(v)["at"] for _, _, v in producer.sent]
    assert times == ["2026-01-01T00:00:00.010000Z"] * 2 + ["2026-01-01T00:00:00.020000Z"]
    assert metrics.order_markers.labels("prices")._value.get() == 3


async def test_at_most_one_marker_a_partition_every_interval() -> None:
    producer = Producer()
    producer.release.set()
    clock = [1000.0]
    markers = Markers(
        producer, "group-a", Metrics(), interval_s=3600.0, pending_s=0.0, clock=lambda: clock[0]
    )
    p0, p1 = TopicPartition("prices", 0), TopicPartition("prices", 1)
    assert markers.want({p0: (ms(10), None)}) == 1
    clock[0] += 100.0
    await markers.close()
    later = ms(10) + STEP
    assert markers.want({p0: (ms(20), later), p1: (ms(20), None)}) == 1  # p1: p0 just wrote
    # The loop is told when p0 may take one: its next fetch waits no longer than that.
    assert markers.retry_at == 1000.0 + 3600.0
    await markers.close()
    assert markers.want({}) == 0
    assert markers.retry_at is None


async def test_no_other_marker_until_the_last_one_took_effect() -> None:
    producer = Producer()
    producer.release.set()
    markers = Markers(producer, "group-a", Metrics(), interval_s=0.0, pending_s=3600.0)
    p0 = TopicPartition("prices", 0)
    assert markers.want({p0: (ms(10), ms(1))}) == 1
    await markers.close()
    # Its owner has not read it (or records before it still wait): the partition's time
    # is still before it, so another marker would not show either.
    assert markers.want({p0: (ms(20), ms(1))}) == 0
    assert markers.want({p0: (ms(20), None)}) == 0
    assert markers.want({p0: (ms(20), ms(10) + STEP)}) == 1  # it took effect
    await markers.close()
    assert len(producer.sent) == 2


async def test_a_marker_that_fails_is_counted_and_written_again_when_asked() -> None:
    producer = Producer(fail=True)
    producer.release.set()
    metrics = Metrics()
    markers = Markers(producer, "group-a", metrics, interval_s=0.0, pending_s=3600.0)
    p0 = TopicPartition("prices", 0)
    assert markers.want({p0: (ms(10), None)}) == 1
    await markers.close()
    assert metrics.order_marker_failures._value.get() == 1
    assert markers.want({p0: (ms(10), None)}) == 1  # not taken as written
    await markers.close()
    assert len(producer.sent) == 2


def test_decode_reads_markers_where_they_are_honoured_and_places_them_at_their_time() -> None:
    tick_value = json.dumps({"token_address": "A" * 44, "price_usd": "2"}).encode()
    good = record(encode_marker(ms(5), "group-a"), timestamp=ms(10))
    forged = record(b"not json", timestamp=ms(10))
    plain = record(tick_value, headers=[], timestamp=ms(10))
    items, dead = decode(
        [good, plain, forged],
        kind=TICKS,
        now=ms(100),
        max_ahead=timedelta(seconds=60),
        markers=True,
    )
    first = items[0]
    assert first is not None and isinstance(first.message, OrderMarker)
    assert first.message.at == ms(5)
    assert items[1] is not None and not isinstance(items[1].message, OrderMarker)
    assert items[2] is None
    assert [d.record for d in dead] == [forged] and "invalid order marker" in dead[0].reason
    tp = TopicPartition("prices", 0)
    assert placing(items[0], good, tp, kind=TICKS, latest=ms(100)) == (
        ms(5),
        RANK_MARKER,
        ("prices", 0),
    )
    # Where markers are not honoured (the signals topic), a marker is read as what the
    # topic carries: not a valid signal, it is dead-lettered.
    items, dead = decode([good], kind=SIGNALS, now=ms(100), max_ahead=timedelta(seconds=60))
    assert items == [None] and len(dead) == 1


def test_a_marker_older_than_its_partition_moves_nothing() -> None:
    line = order()
    tick(line, "p0", 0, 10)
    marker(line, "p0", 1, ms(5))  # raised past the tick: its own time decides nothing
    assert not tick(line, "p0", 2, 3).moved


def test_a_marker_at_the_end_of_time_is_refused_as_invalid_not_as_a_failure() -> None:
    last = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    value = encode_marker(last, "group-a")
    with pytest.raises(InvalidMessage, match="invalid order marker"):
        marker_time(record(value), received_at=last, now=T0, ahead=timedelta(seconds=60))
    items, dead = decode(
        [record(value, timestamp=last)],
        kind=TICKS,
        now=T0,
        max_ahead=timedelta(seconds=60),
        markers=True,
    )
    assert items == [None] and dead[0].kind == "invalid"
