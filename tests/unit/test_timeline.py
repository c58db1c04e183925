"""The event-time merge: one order whatever the fetch boundaries, restarts and lateness."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.pipeline.timeline import (
    RANK_SIGNAL,
    RANK_SOL_TICK,
    RANK_TICK,
    STEP,
    Entry,
    Timeline,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAR = T0 + timedelta(days=1)


@dataclass(frozen=True)
class Rec:
    source: str  # "s0", "s1" (signal partitions), "t0", "t1" (tick partitions)
    offset: int
    ms: int | None
    rank: int
    token: str = ""

    @property
    def tie(self) -> tuple[object, ...]:
        return (self.token, self.source) if self.rank < RANK_SIGNAL else (self.source,)


def lowest(source: str) -> int:
    return RANK_SIGNAL if source.startswith("s") else RANK_SOL_TICK


def timeline(sources: list[str], lateness_ms: int = 0) -> Timeline[str]:
    line: Timeline[str] = Timeline(timedelta(milliseconds=lateness_ms))
    for s in sources:
        line.open(s, lowest_rank=lowest(s), last_at=None)
    return line


def go(
    line: Timeline[str],
    idle: list[str],
    now: datetime,
    elsewhere: dict[str, tuple[object, ...] | None] | None = None,
) -> list[Entry[str]]:
    """The partitions `idle` read to their end at `now`; what the order lets go."""
    line.promise(dict.fromkeys(idle, now))
    return line.release(elsewhere=elsewhere)


def put(line: Timeline[str], r: Rec) -> Entry[str]:
    at = None if r.ms is None else T0 + timedelta(milliseconds=r.ms)
    return line.place(r.source, r.offset, at, r.rank, r.tie, r)


def keys(entries: list[Entry[str]]) -> list[tuple[str, int, datetime, tuple[object, ...]]]:
    return [(e.source, e.offset, e.at, e.key) for e in entries]


def test_a_tick_stamped_after_a_signal_goes_after_it_though_fetched_first() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("t0", 0, 5, RANK_TICK, "A"))
    put(line, Rec("s0", 0, 4, RANK_SIGNAL))
    out = go(line, ["s0", "t0"], FAR)
    assert [(e.source, e.offset) for e in out] == [("s0", 0), ("t0", 0)]


def test_equal_times_sol_first_then_token_ticks_then_signals() -> None:
    line = timeline(["s0", "t0", "t1", "t2"])
    put(line, Rec("s0", 0, 7, RANK_SIGNAL))
    put(line, Rec("t0", 0, 7, RANK_TICK, "B"))
    put(line, Rec("t1", 0, 7, RANK_TICK, "A"))
    put(line, Rec("t2", 0, 7, RANK_SOL_TICK, "So1"))
    out = go(line, ["s0", "t0", "t1", "t2"], FAR)
    assert [(e.source, e.offset) for e in out] == [("t2", 0), ("t1", 0), ("t0", 0), ("s0", 0)]


def test_a_partition_keeps_its_order_at_equal_times_a_microsecond_apart() -> None:
    line = timeline(["t0"])
    first = put(line, Rec("t0", 0, 7, RANK_TICK, "A"))
    sol = put(line, Rec("t0", 1, 7, RANK_SOL_TICK, "So1"))
    assert sol.at == first.at + STEP
    assert not sol.late
    out = go(line, ["t0"], FAR)
    assert [(e.source, e.offset) for e in out] == [("t0", 0), ("t0", 1)]


def test_a_signal_waits_for_a_tick_partition_not_read_to_its_end() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    put(line, Rec("t0", 0, 3, RANK_TICK, "A"))
    # t0's next ticks come after its tick at 3, but may be stamped before the signal.
    assert [(e.source, e.offset) for e in go(line, ["s0"], FAR)] == [("t0", 0)]
    assert line.waiting_on() == ["t0"]
    put(line, Rec("t0", 1, 9, RANK_TICK, "A"))
    assert [(e.source, e.offset) for e in go(line, ["s0"], FAR)] == [("t0", 1)]
    # A tick at the signal's time goes first; after it, t0 can only bring later ones.
    put(line, Rec("t0", 2, 10, RANK_TICK, "A"))
    out = go(line, ["s0"], FAR)
    assert [(e.source, e.offset) for e in out] == [("t0", 2), ("s0", 0)]


def test_a_partition_never_read_holds_everything_back() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    assert go(line, ["s0"], FAR) == []
    assert line.waiting_on() == ["t0"]


def test_a_caught_up_partition_holds_back_only_what_lies_within_the_lateness() -> None:
    line = timeline(["s0", "t0"], lateness_ms=1000)
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    # The clock 500 ms after the signal: a tick stamped before it may still be on its way.
    assert go(line, ["s0", "t0"], T0 + timedelta(milliseconds=510)) == []
    out = go(line, ["s0", "t0"], T0 + timedelta(milliseconds=1011))
    assert [(e.source, e.offset) for e in out] == [("s0", 0)]


def test_a_record_stamped_before_its_predecessor_is_decided_at_its_time() -> None:
    line = timeline(["t0"])
    put(line, Rec("t0", 0, 10, RANK_TICK, "A"))
    entry = put(line, Rec("t0", 1, 4, RANK_TICK, "B"))
    assert entry.at == T0 + timedelta(milliseconds=10) + STEP
    assert entry.event_time == T0 + timedelta(milliseconds=4)
    assert not entry.late


def test_a_late_record_is_decided_right_after_what_was_decided_and_marked() -> None:
    line = timeline(["s0", "t0"], lateness_ms=0)
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    assert len(go(line, ["s0", "t0"], T0 + timedelta(milliseconds=20))) == 1
    late = put(line, Rec("t0", 0, 5, RANK_TICK, "A"))
    assert late.late
    # t0 was read to its end when the clock said 20 ms: it is decided then.
    assert late.at == T0 + timedelta(milliseconds=20)
    out = go(line, ["s0", "t0"], T0 + timedelta(milliseconds=30))
    assert [(e.source, e.offset, e.late) for e in out] == [("t0", 0, True)]


def test_a_late_record_of_a_partition_never_idle_goes_right_after_what_was_decided() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("t0", 0, 30, RANK_TICK, "A"))
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    put(line, Rec("s0", 1, 40, RANK_SIGNAL))
    out = go(line, [], FAR)
    assert [(e.source, e.offset) for e in out] == [("s0", 0), ("t0", 0)]
    # A tick stamped 20 ms is impossible in order now (t0 is past 30 ms); a partition
    # whose next record is stamped before its last is decided just after it.
    entry = put(line, Rec("t0", 1, 20, RANK_TICK, "A"))
    assert entry.at == T0 + timedelta(milliseconds=30) + STEP
    assert not entry.late


def test_other_workers_partitions_bound_the_release() -> None:
    line = timeline(["s0"])
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    put(line, Rec("s0", 1, 20, RANK_SIGNAL))
    at = T0 + timedelta(milliseconds=15)
    # Unknown: nothing goes.
    assert go(line, ["s0"], FAR, {"t9": None}) == []
    # A tick partition elsewhere may still apply ticks from 15 ms on: the signal at 10 goes.
    out = go(line, ["s0"], FAR, {"t9": (at, RANK_SOL_TICK)})
    assert [(e.source, e.offset) for e in out] == [("s0", 0)]
    # What this worker tells the others: its first record not applied.
    second = (T0 + timedelta(milliseconds=20), RANK_SIGNAL, "s0", 1)
    assert line.bounds()["s0"] == second


def test_after_a_restart_a_record_released_but_not_applied_is_not_late() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("t0", 0, 5, RANK_TICK, "A"))
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    assert len(go(line, ["s0", "t0"], FAR)) == 2
    # Abandoned before its commit: both partitions read again from their stored offsets.
    line.restart()
    line.open("t0", lowest_rank=RANK_SOL_TICK, last_at=None)
    line.open("s0", lowest_rank=RANK_SIGNAL, last_at=None)
    again = put(line, Rec("t0", 0, 5, RANK_TICK, "A"))
    assert not again.late
    assert again.at == T0 + timedelta(milliseconds=5)


def test_a_promise_outlives_a_restart_and_applies_from_its_offset_on() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("t0", 0, 5, RANK_TICK, "A"))
    moved = line.promise({"t0": T0 + timedelta(milliseconds=30)})
    assert moved == {"t0": (T0 + timedelta(milliseconds=30), 1)}
    # Stored, then the worker restarts: the partition is opened again with its promise.
    again: Timeline[str] = Timeline(timedelta(0))
    again.open("s0", lowest_rank=RANK_SIGNAL, last_at=None)
    again.open("t0", lowest_rank=RANK_SOL_TICK, last_at=None, next_offset=0, promise=moved["t0"])
    # The record read before the promise is not late; the one after it, stamped before, is.
    first = put(again, Rec("t0", 0, 5, RANK_TICK, "A"))
    second = put(again, Rec("t0", 1, 20, RANK_TICK, "A"))
    assert (first.late, first.at) == (False, T0 + timedelta(milliseconds=5))
    assert (second.late, second.at) == (True, T0 + timedelta(milliseconds=30))


def test_a_promise_holds_nothing_back_before_the_records_it_follows_are_taken() -> None:
    # Promised after offset 3 (a worker read the partition to its end, then was killed with
    # offsets 1 to 3 not stored): read again from offset 1, those records are not covered.
    line: Timeline[str] = Timeline(timedelta(0))
    line.open("s0", lowest_rank=RANK_SIGNAL, last_at=None)
    promise = (T0 + timedelta(seconds=60), 4)
    line.open("t0", lowest_rank=RANK_SOL_TICK, last_at=T0, next_offset=1, promise=promise)
    put(line, Rec("s0", 0, 20, RANK_SIGNAL))
    # t0 may still bring offsets 1 to 3 at any time from T0 on: the signal waits.
    assert line.release() == []
    for offset, ms in ((1, 10), (2, 15), (3, 25)):
        assert not put(line, Rec("t0", offset, ms, RANK_TICK, "A")).late
    out = line.release()
    assert [(e.source, e.offset) for e in out] == [("t0", 1), ("t0", 2), ("s0", 0)]


def test_a_promise_only_moves_forward() -> None:
    line = timeline(["t0"])
    assert line.promise({"t0": T0}) == {"t0": (T0, 0)}
    assert line.promise({"t0": T0 - timedelta(seconds=1)}) == {}
    assert line.promises() == {"t0": (T0, 0)}


def test_the_lateness_allowance_holds_back_what_may_still_come_on_time() -> None:
    line = timeline(["s0", "t0"], lateness_ms=1000)
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    assert go(line, ["s0", "t0"], T0 + timedelta(milliseconds=900)) == []
    # A tick stamped 5 ms, readable only now, is on time.
    tick = put(line, Rec("t0", 0, 5, RANK_TICK, "A"))
    assert not tick.late
    out = go(line, ["s0", "t0"], T0 + timedelta(milliseconds=1011))
    assert [(e.source, e.offset) for e in out] == [("t0", 0), ("s0", 0)]


def test_signals_of_other_partitions_do_not_wait_for_each_other() -> None:
    line = timeline(["s0", "s1", "t0"])
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    put(line, Rec("t0", 0, 50, RANK_TICK, "A"))
    # s1 is not read to its end and may still bring a signal at 5: s0's signal goes
    # anyway (another user's), the tick waits for s1.
    out = go(line, ["s0"], T0)
    assert [(e.source, e.offset) for e in out] == [("s0", 0)]
    assert line.waiting_on() == ["s0", "s1"]  # s0 was read to its end at T0 only


def test_a_closed_partition_no_longer_holds_the_others_back() -> None:
    line = timeline(["s0", "t0"])
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    line.close("t0")
    assert [(e.source, e.offset) for e in go(line, ["s0"], FAR)] == [("s0", 0)]


def test_a_record_without_a_time_takes_its_partitions_time() -> None:
    line = timeline(["s0"])
    put(line, Rec("s0", 0, 10, RANK_SIGNAL))
    entry = put(line, Rec("s0", 1, None, RANK_SIGNAL))
    assert entry.at == T0 + timedelta(milliseconds=10) + STEP


# ---------------------------------------------------------------- the property

SOURCES = ["s0", "s1", "t0", "t1"]


@st.composite
def logs(draw: st.DrawFn) -> dict[str, list[Rec]]:
    """A backlog: per partition, records with times that mostly rise, some equal, some
    stamped before their predecessor."""
    out: dict[str, list[Rec]] = {}
    for source in SOURCES:
        n = draw(st.integers(0, 8))
        records = []
        for offset in range(n):
            ms = (
                draw(st.one_of(st.none(), st.integers(0, 40)))
                if offset % 5 == 4
                else draw(st.integers(0, 40))
            )
            if source.startswith("s"):
                records.append(Rec(source, offset, ms, RANK_SIGNAL))
            else:
                token = draw(st.sampled_from(["So1", "A", "B"]))
                rank = RANK_SOL_TICK if token == "So1" else RANK_TICK
                records.append(Rec(source, offset, ms, rank, token))
        out[source] = records
    return out


def consume(
    log: dict[str, list[Rec]], steps: list[tuple[str, int]], restart_at: int | None
) -> list[tuple[str, int, datetime, tuple[object, ...]]]:
    """Consume `log` as a backlog: each step takes up to n next records of a partition,
    then releases (a partition is idle once all its records were taken); optionally a
    restart after step `restart_at` (buffers lost, each partition read again from its last
    released record, as from stored offsets and decision times)."""
    line = timeline(SOURCES)
    taken = dict.fromkeys(SOURCES, 0)
    applied: list[Entry[str]] = []
    last_at: dict[str, datetime | None] = dict.fromkeys(SOURCES)

    def idle() -> list[str]:
        return [s for s in SOURCES if taken[s] == len(log[s])]

    def step(source: str, n: int) -> None:
        for r in log[source][taken[source] : taken[source] + n]:
            put(line, r)
        taken[source] = min(len(log[source]), taken[source] + n)
        done = go(line, idle(), T0)  # a backlog: the clock is before everything
        applied.extend(done)
        for e in done:
            last_at[e.source] = e.at

    for i, (source, n) in enumerate(steps):
        step(source, n)
        if i == restart_at:
            line = timeline([])
            for s in SOURCES:
                line.open(s, lowest_rank=lowest(s), last_at=last_at[s])
                done = [e.offset for e in applied if e.source == s]
                taken[s] = (max(done) + 1) if done else 0
    while any(taken[s] < len(log[s]) for s in SOURCES):
        for s in SOURCES:
            step(s, 3)
    applied.extend(go(line, SOURCES, FAR))  # the backlog is over
    return keys(applied)


@settings(max_examples=300, deadline=None)
@given(
    log=logs(),
    a=st.lists(st.tuples(st.sampled_from(SOURCES), st.integers(1, 4)), max_size=30),
    b=st.lists(st.tuples(st.sampled_from(SOURCES), st.integers(1, 500)), max_size=5),
    restart=st.one_of(st.none(), st.integers(0, 10)),
)
def test_any_fetch_boundaries_and_a_restart_give_the_one_order(
    log: dict[str, list[Rec]],
    a: list[tuple[str, int]],
    b: list[tuple[str, int]],
    restart: int | None,
) -> None:
    one = consume(log, a, restart)
    other = consume(log, b, None)
    assert len(one) == sum(len(v) for v in log.values())
    # What each user sees is one order: the ticks and one signal partition's records, in
    # key order, whatever the fetches (signals of different partitions commute).
    for signals in ("s0", "s1"):
        seen = [x for x in one if x[0] in (signals, "t0", "t1")]
        assert seen == [x for x in other if x[0] in (signals, "t0", "t1")]
        assert seen == sorted(seen, key=lambda x: x[3])
    # Within each partition, offset order and decision times never go back.
    for source in SOURCES:
        mine = [(o, at) for s, o, at, _ in one if s == source]
        assert [o for o, _ in mine] == list(range(len(log[source])))
        assert all(x[1] <= y[1] for x, y in itertools.pairwise(mine))
