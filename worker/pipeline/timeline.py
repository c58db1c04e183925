"""One order for everything the worker applies: the event-time merge of its input partitions.

Why: a user's ledger depends on the order in which its signals and the ticks of the tokens it
holds are applied (a tick before a signal can stop out a position and free its slot; a SOL/USD
tick before a token tick changes the USD figures of a close). Deciding that order by arrival
(fetch boundaries, which lane ran first) makes the same records give different ledgers.
So every record gets a place in one total order that depends only on the records:

- **Event time**: a signal's `created_at`, else its Kafka record timestamp; a tick's `ts`, else
  its record timestamp (`batching.event_time`).
- **Decision time** (`at`): the event time, but always at least a microsecond after the
  decision time of the previous record of the same partition (a record stamped at or before
  its predecessor is decided just after it: a partition's order is kept, whatever the fetch
  boundaries, and its decision times only rise). `at` is the clock of every decision the
  record causes (`Signal.at`, `PriceTick.at`) and is stored with the record's effects, so a
  replay orders and decides by exactly it.
- **Key**: `(at, rank, tie-break)`. Rank 0: a SOL/USD tick, 1: another tick, 2: a signal,
  3: a command (at equal times the prices come first, SOL/USD before the token prices it
  converts, and a user's signals before its commands). Ticks then by token address and
  offset, signals and commands by partition and offset. Records that go to the
  dead-letter topic keep their place only to move their partition's offset on.

**Release** (after Kafka Streams' stream time and task idling, KIP-353/KIP-695, and Flink's
watermarks): records are buffered per partition and released in key order once no record
still unseen can come before them: for a tick, of any partition; for a user's record (a
signal or a command), of the partitions that carry prices and of the users' partitions of
its number (the signals and commands topics are co-partitioned by user: a user's signals and
commands are one order; those of different partition numbers are of different users and
commute, so they do not wait for each other). A partition's unseen records have keys of at least
`(bound, lowest rank it can carry)`, where `bound` is its last decision time, or, when the
consumer has read everything the partition holds (caught up), the worker's clock minus the
lateness allowance `LATENESS_MS`, if that is later. Everything buffered below the lowest
bound of all partitions is released, merged. So a backlog (records already in Kafka when
read) is always released in exactly this order, whatever the fetch sizes or restarts; and a
live stream is too, as long as each record is readable within `LATENESS_MS` of its event
time by the worker's clock. The clock only paces: it says when a caught-up partition can no
longer bring anything earlier, never what a decision is.

**Late records**: when a partition has been read to its end, it *promises* that nothing it
brings from its next offset on is decided before that moment less `LATENESS_MS`; a record
that comes after all stamped before the promise is late: it is decided at the promised time
(or right after what was decided, whichever is later), counted in
`signal_worker_late_records_total`, and its stored decision time says so, so a replay places
it exactly there. Promises are stored (`order_bounds`) before anything applied on their
strength commits (written beside that work, `worker.pipeline.order_writes`) and restored with
the partition, so a restart or a new owner decides a late record as the uninterrupted worker
would have. Never dropped.

**Markers** (`worker.pipeline.markers`): a partition's time also moves on by a record of its
own that carries a time and does nothing else, written by a worker when users' records
wait for that partition while it has nothing newer to read. It is placed at its time with
rank `RANK_MARKER` (after everything of that time; ordered as a user's record, so it waits
only for the partitions that carry prices and its own users' partitions), so what its
partition brings after it is decided after it: the log, not a clock, says what came after.
`first_user_blockers` and `waiting_users` say which partitions hold the users' records back
and the time a marker must carry.

Pure: no I/O, no clock of its own (the caller passes the time of its observation).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from worker.domain.order import RANK_COMMAND, RANK_SIGNAL, RANK_SOL_TICK, RANK_TICK, RANK_USER

__all__ = [
    "RANK_COMMAND",
    "RANK_MARKER",
    "RANK_SIGNAL",
    "RANK_SOL_TICK",
    "RANK_TICK",
    "STEP",
    "Entry",
    "Promise",
    "Timeline",
    "runs",
]
STEP = timedelta(microseconds=1)  # the least step of a decision time (PostgreSQL's)
# An order marker's rank: after every record of its time, and a user's rank (it waits only
# for the price partitions and its own users' partitions; it touches nothing).
RANK_MARKER = RANK_COMMAND + 1

P = TypeVar("P", bound=Hashable)  # a partition's identity


@dataclass(frozen=True, slots=True)
class Entry(Generic[P]):
    """One record placed in the order: where it came from, its key and what it carries."""

    source: P
    offset: int
    at: datetime  # decision time
    rank: int
    tie: tuple[Any, ...]  # the tie-break after (at, rank), ending with the offset
    payload: Any  # what the caller applies (None for a record that was dead-lettered)
    event_time: datetime
    late: bool = False
    moved: bool = False  # stamped before an order marker its partition holds before it

    @property
    def key(self) -> tuple[Any, ...]:
        """The place in the order."""
        return (self.at, self.rank, *self.tie)


# A partition's promise: nothing it brings from `offset` on is decided before `at`.
Promise = tuple[datetime, int]


@dataclass(slots=True)
class _Input(Generic[P]):
    lowest_rank: int
    last_at: datetime | None  # decision time of the last record taken (None: none yet)
    next_offset: int = 0  # no record still to come has a lower offset
    promise: Promise | None = None
    group: int | None = None  # the users' partition number (co-partitioned topics)
    size: int = 0  # bytes of the records waiting in `buffer`
    markers: int = 0  # how many of the records waiting in `buffer` are markers
    last_is_marker: bool = False  # whether the last record taken was a marker
    last_moved: bool = False  # whether the last record taken was moved by a marker
    last_raised: bool = False  # whether the last record taken was a marker past the one before
    # (key, arrival, entry, bytes), a heap
    buffer: list[tuple[tuple[Any, ...], int, Entry[P], int]] = field(default_factory=list)

    def unseen(self) -> tuple[Any, ...] | None:
        """The least key a record of this partition still unseen can have (a prefix: any
        key starting with it may come); None when nothing is known: a microsecond after
        the last one taken, with a rank at least the partition's lowest, and not before
        its promise (once every record before the promise was taken)."""
        floor = None if self.last_at is None else self.last_at + STEP
        promise = self.promise
        # A promise covers what comes from its offset on: records before it (read again
        # after a restart) still come at their own times.
        covers = promise is not None and self.next_offset >= promise[1]
        if covers and promise is not None and (floor is None or promise[0] > floor):
            floor = promise[0]
        return None if floor is None else (floor, self.lowest_rank)

    def admits(self, key: tuple[Any, ...]) -> bool:
        """True when no record of this partition still unseen can come before `key`."""
        bound = self.unseen()
        return bound is not None and key < bound

    def bound(self) -> tuple[Any, ...] | None:
        """The least key of any record of this partition not applied yet: its first
        buffered record's, else the unseen bound (None: unknown)."""
        if self.buffer:
            return self.buffer[0][0]
        return self.unseen()


class Timeline(Generic[P]):
    """The owned partitions' buffered records and the order they are released in."""

    def __init__(self, lateness: timedelta) -> None:
        self._lateness = lateness
        self._inputs: dict[P, _Input[P]] = {}
        # The greatest key released, and the greatest of a tick.
        self._released: tuple[Any, ...] | None = None
        self._released_tick: tuple[Any, ...] | None = None
        # The greatest key released of each group's user records (signals and commands of
        # one partition number are one set of users: they do not commute).
        self._released_group: dict[int | None, tuple[Any, ...]] = {}
        self._seq = itertools.count()

    # ------------------------------------------------------------------ partitions

    def open(
        self,
        source: P,
        *,
        lowest_rank: int,
        last_at: datetime | None,
        next_offset: int = 0,
        promise: Promise | None = None,
        group: int | None = None,
    ) -> None:
        """Start ordering `source` (assigned, or read again from its stored offset
        `next_offset`), whose last record applied was decided at `last_at` (None: never
        one), with the last promise made for it (`promise`; it outlives restarts). `group`:
        for a partition of users' records (signals, commands), its partition number: the
        users' partitions of the same number carry the same users, in one order."""
        self._inputs[source] = _Input(lowest_rank, last_at, next_offset, promise, group)

    def restart(self) -> None:
        """Forget what was released: the partitions are read again from where their
        effects were stored (abandoned work, a reassignment), so a record released before
        and not applied is not late when it comes again."""
        self._released = self._released_tick = None
        self._released_group.clear()

    def close(self, source: P) -> None:
        """Stop ordering `source` (revoked, or blocked): its buffered records are forgotten
        (its next owner reads them again from the stored offset) and it no longer holds
        back the others."""
        self._inputs.pop(source, None)

    def is_open(self, source: P) -> bool:
        """True when `source` is being ordered."""
        return source in self._inputs

    def sources(self) -> list[P]:
        """The partitions being ordered."""
        return list(self._inputs)

    def buffered(self, source: P) -> int:
        """How many records of `source` wait for their turn."""
        state = self._inputs.get(source)
        return 0 if state is None else len(state.buffer)

    def buffered_bytes(self) -> int:
        """The size of every record waiting for its turn."""
        return sum(s.size for s in self._inputs.values())

    def __len__(self) -> int:
        return sum(len(s.buffer) for s in self._inputs.values())

    def promises(self) -> dict[P, Promise]:
        """The promise of each partition that has one."""
        return {src: s.promise for src, s in self._inputs.items() if s.promise is not None}

    # ------------------------------------------------------------------ records

    def promise(self, read_to_end: Mapping[P, datetime]) -> dict[P, Promise]:
        """The partitions read to their end (each with when its end was seen) promise that
        nothing they bring from now on is decided before that moment less the lateness
        allowance; returns the promises that moved (to be stored before anything is
        released on their strength: a promise outlives a restart)."""
        moved: dict[P, Promise] = {}
        for source, seen in read_to_end.items():
            state = self._inputs.get(source)
            if state is None:
                continue
            since = seen - self._lateness
            if state.promise is None or since > state.promise[0]:
                state.promise = moved[source] = (since, state.next_offset)
        return moved

    def place(
        self,
        source: P,
        offset: int,
        event_time: datetime | None,
        rank: int,
        tie: tuple[Any, ...],
        payload: object,
        size: int = 0,
    ) -> Entry[P]:
        """Take in the next record of `source` (a partition's records come in offset order;
        `size` its bytes); `event_time` None for one without a usable time (a record going
        to the dead-letter topic: it is placed at its partition's time). Returns it
        placed."""
        state = self._inputs[source]
        previous = state.last_at
        at = event_time
        if previous is not None and (at is None or at <= previous):
            at = previous + STEP  # a partition's decision times only ever rise
        if at is None:  # a partition's first record, without a time of its own
            at = _EARLIEST
        late = False
        promise = state.promise
        if promise is not None and offset >= promise[1] and at < promise[0]:
            # Its partition promised nothing before then (to this worker's order and to the
            # other workers'): it is decided then.
            at, late = promise[0], True
        # What it must come after: every tick, and for a tick every user record too; for a
        # user record the released ones of its group (other groups' users commute with it).
        after = self._released
        if rank >= RANK_USER:
            group = state.group
            own = None if group is None else self._released_group.get(group)
            after = _max_key(self._released_tick, own)
        if after is not None and (at, rank, *tie, offset) <= after:
            # Something after it was decided already: it is decided right after that.
            at = after[0] + STEP
            late = True
        # Moved by a marker: raised to just after one (or after records so raised) and by
        # nothing else (a promise, a record decided already).
        moved = (
            rank != RANK_MARKER
            and not late
            and (state.last_raised or state.last_moved)
            and previous is not None
            and event_time is not None
            and event_time <= previous
        )
        if rank == RANK_MARKER:
            late = False  # a marker decides nothing: it only moves its partition's time on
            state.markers += 1
        state.last_is_marker = rank == RANK_MARKER
        # A marker raised its partition's time only if its own time was past it.
        state.last_raised = state.last_is_marker and (
            previous is None or (event_time is not None and event_time > previous)
        )
        state.last_moved = moved
        entry = Entry(
            source, offset, at, rank, (*tie, offset), payload, event_time or at, late, moved
        )
        state.last_at = at
        state.next_offset = offset + 1
        state.size += size
        heapq.heappush(state.buffer, (entry.key, next(self._seq), entry, size))
        return entry

    def release(
        self,
        *,
        elsewhere: Mapping[Any, tuple[Any, ...] | None] | None = None,
        elsewhere_prices: Mapping[Any, tuple[Any, ...] | None] | None = None,
        elsewhere_groups: Mapping[int | None, list[tuple[Any, ...] | None]] | None = None,
    ) -> list[Entry[P]]:
        """The buffered records no unseen record can precede, in order, taken out of the
        buffers. `elsewhere`: the partitions other workers own, each with the least key it
        may still apply (`bounds`; None: unknown, everything waits for it);
        `elsewhere_prices`: those of them a user's record waits for: the ones that carry
        prices (None: all of them), and `elsewhere_groups`, by group, the users' partitions
        of that number.

        Users' records (signals, commands) of different partition numbers are of different
        users and touch nothing of each other's, so one waits only for the partitions that
        carry prices and those of its own group (a user's commands and signals are one
        order); a tick waits for every partition (it acts on the positions of every user)."""
        every = _limit((elsewhere or {}).values())
        prices = every if elsewhere_prices is None else _limit(elsewhere_prices.values())
        groups = elsewhere_groups or {}
        inputs = self._inputs
        states = list(inputs.values())
        price_states = [s for s in states if s.lowest_rank < RANK_USER]
        user_waits: dict[int | None, list[_Input[P]]] = {}
        heads = [(s.buffer[0][0], s.buffer[0][1], src) for src, s in inputs.items() if s.buffer]
        heapq.heapify(heads)
        out: list[Entry[P]] = []
        while heads:
            key, _, source = heads[0]
            is_user = key[1] >= RANK_USER
            if is_user:
                group = inputs[source].group
                waits, limit = _with_group(prices, groups.get(group))
                waited = user_waits.get(group)
                if waited is None:  # once per group and call, not per record
                    waited = user_waits[group] = [
                        *price_states,
                        *(s for s in states if group is not None and s.group == group),
                    ]
            else:
                waits, limit = every
                waited = states
            if waits or (limit is not None and not key < limit):
                break
            if not all(state.admits(key) for state in waited):
                break
            state = inputs[source]
            buffer = state.buffer
            popped = heapq.heappop(buffer)
            state.size -= popped[3]
            if popped[2].rank == RANK_MARKER:
                state.markers -= 1
            out.append(popped[2])
            if buffer:
                heapq.heapreplace(heads, (buffer[0][0], buffer[0][1], source))
            else:
                heapq.heappop(heads)
        self._note_released(out)
        return out

    def _note_released(self, out: list[Entry[P]]) -> None:
        """Remember the greatest key released, of a tick, and of each group's users."""
        inputs = self._inputs
        for entry in out:
            if self._released is None or entry.key > self._released:
                self._released = entry.key
            if entry.rank < RANK_USER:
                if self._released_tick is None or entry.key > self._released_tick:
                    self._released_tick = entry.key
            else:
                group = inputs[entry.source].group if entry.source in inputs else None
                previous = self._released_group.get(group)
                if previous is None or entry.key > previous:
                    self._released_group[group] = entry.key

    def waiting_users(self, now: datetime) -> dict[int | None, datetime]:
        """For each users' partition number with users' records waiting, the latest of
        their decision times that is not after `now`: the time a marker must carry to let
        them all go (a record stamped ahead of the worker's clock waits for the clock: a
        marker at a time the clock has not reached would hold back the partition's ticks)."""
        latest: dict[int | None, datetime] = {}
        for state in self._inputs.values():
            if state.lowest_rank < RANK_USER or len(state.buffer) <= state.markers:
                continue
            group = state.group
            last = state.last_at
            if not state.last_is_marker and last is not None and last <= now:
                found: datetime | None = last  # the last taken waits: it is the latest
            else:
                found = max(
                    (e.at for _, _, e, _ in state.buffer if e.rank != RANK_MARKER and e.at <= now),
                    default=None,
                )
            if found is not None and (group not in latest or found > latest[group]):
                latest[group] = found
        return latest

    def wanted_markers(
        self,
        read_to_end: Collection[P],
        now: datetime,
        *,
        markable: Callable[[P], bool],
        elsewhere: Mapping[P, tuple[tuple[Any, ...] | None, int | None]] | None = None,
    ) -> dict[P, tuple[datetime, datetime | None]]:
        """The markers that let the earliest waiting record go, when it is a user's and
        every partition that holds it back can take one: this worker's read to their end
        (`read_to_end`) and other workers' (`elsewhere`: each with the place it reported,
        None when unknown, and its users' partition number, None for one that carries
        prices), all `markable` (the worker writes markers only into the prices and
        commands topics). Else none: a marker could not let it go, only add to the log.
        Then also the commands partitions of the other users' numbers with records waiting
        that can take one (so that one round lets every number's records go, not one
        number a round).

        Each: (the time its marker carries, the partition's time now: None when unknown).
        A marker carries the latest waiting time not after `now` (`waiting_users`): of
        every user for a partition that carries prices, of its number's users for a users'
        partition."""
        found = self.first_user_blockers()
        if found is None:
            return {}
        key, group, own = found
        latest = self.waiting_users(now)
        if not latest:
            return {}
        everyone = max(latest.values())
        remote = _remote_blockers(elsewhere or {}, key, group)
        if remote is None:
            return {}
        wanted: dict[P, tuple[datetime, datetime | None]] = {}
        for source, users, floor in [*self._own_blockers(own), *remote]:
            at = everyone if users is _PRICES else latest.get(cast("int | None", users))
            idle = source in read_to_end or source in (elsewhere or {})
            if at is None or at < key[0] or not idle or not markable(source):
                return {}
            wanted[source] = (at, floor)
        self._other_numbers(wanted, latest, read_to_end, markable, elsewhere or {})
        return wanted

    def _own_blockers(self, own: list[P]) -> list[tuple[P, object, datetime | None]]:
        """(partition, its users' number or `_PRICES`, its time) of this worker's."""
        out: list[tuple[P, object, datetime | None]] = []
        for source in own:
            state = self._inputs[source]
            bound = state.unseen()
            users = _PRICES if state.lowest_rank < RANK_USER else state.group
            out.append((source, users, None if bound is None else bound[0]))
        return out

    def _other_numbers(
        self,
        wanted: dict[P, tuple[datetime, datetime | None]],
        latest: Mapping[int | None, datetime],
        read_to_end: Collection[P],
        markable: Callable[[P], bool],
        elsewhere: Mapping[P, tuple[tuple[Any, ...] | None, int | None]],
    ) -> None:
        """Add the idle commands partitions of every users' number with records waiting
        whose time is before them (this worker's and, reported, other workers')."""
        for source, state in self._inputs.items():
            at = latest.get(state.group) if state.lowest_rank >= RANK_USER else None
            if at is None or source in wanted or source not in read_to_end:
                continue
            bound = state.unseen()
            if markable(source) and (bound is None or bound[0] < at):
                wanted[source] = (at, None if bound is None else bound[0])
        for source, (reported, users) in elsewhere.items():
            at = None if users is None else latest.get(users)
            if at is None or reported is None or source in wanted:
                continue
            if markable(source) and reported[0] < at:
                wanted[source] = (at, reported[0])

    def first_user_blockers(self) -> tuple[tuple[Any, ...], int | None, list[P]] | None:
        """When the earliest buffered record is a user's (a signal or a command): its key,
        its users' partition number and this worker's partitions that hold it back (those
        a marker may let it go past); None when the earliest is anything else (a tick, a
        marker: what a marker cannot help) or nothing waits."""
        first: tuple[tuple[Any, ...], _Input[P]] | None = None
        for state in self._inputs.values():
            if state.buffer and (first is None or state.buffer[0][0] < first[0]):
                first = (state.buffer[0][0], state)
        if first is None:
            return None
        key, state = first
        if key[1] not in (RANK_SIGNAL, RANK_COMMAND):
            return None
        group = state.group
        blockers = [
            source
            for source, other in self._inputs.items()
            if (other.lowest_rank < RANK_USER or (group is not None and other.group == group))
            and not other.admits(key)
        ]
        return key, group, blockers

    def first_key(self) -> tuple[Any, ...] | None:
        """The key of the earliest buffered record (None: nothing waits)."""
        heads = [s.buffer[0][0] for s in self._inputs.values() if s.buffer]
        return min(heads) if heads else None

    def bounds(self) -> dict[P, tuple[Any, ...] | None]:
        """For the other workers: the least key each partition may still apply (a record
        released is applied before the next call), None when unknown."""
        return {source: state.bound() for source, state in self._inputs.items()}

    def waiting_on(self) -> list[P]:
        """The partitions that hold the earliest buffered record back (for `/readyz` and the
        logs); empty when nothing waits."""
        first = self.first_key()
        if first is None:
            return []
        is_user = first[1] >= RANK_USER
        group = next(
            (s.group for s in self._inputs.values() if s.buffer and s.buffer[0][0] == first), None
        )
        return [
            source
            for source, state in self._inputs.items()
            if not (
                is_user
                and state.lowest_rank >= RANK_USER
                and (group is None or state.group != group)
            )
            and not state.admits(first)
        ]


_EARLIEST = datetime.min.replace(tzinfo=UTC)


# The users' number of a partition that carries prices (every user's records wait for it).
_PRICES = object()


def _remote_blockers(
    elsewhere: Mapping[P, tuple[tuple[Any, ...] | None, int | None]],
    key: tuple[Any, ...],
    group: int | None,
) -> list[tuple[P, object, datetime | None]] | None:
    """Other workers' partitions that hold back the user's record at `key` of users'
    partition number `group`: (partition, its number or `_PRICES`, its reported time);
    None when one of them has not reported its place (a marker's effect would not show)."""
    out: list[tuple[P, object, datetime | None]] = []
    for source, (bound, users) in elsewhere.items():
        if users is not None and users != group:
            continue  # other users' partitions do not hold this one back
        if bound is not None and key < bound:
            continue
        if bound is None:
            return None
        out.append((source, _PRICES if users is None else users, bound[0]))
    return out


def _with_group(
    prices: tuple[bool, tuple[Any, ...] | None], group: list[tuple[Any, ...] | None] | None
) -> tuple[bool, tuple[Any, ...] | None]:
    """What a user's record waits for elsewhere: the price partitions, and its group's."""
    waits, limit = prices
    if waits or group is None:
        return waits, limit
    group_waits, group_limit = _limit(group)
    return group_waits, _min_key(limit, group_limit)


def _max_key(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


def _min_key(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _limit(bounds: Iterable[tuple[Any, ...] | None]) -> tuple[bool, tuple[Any, ...] | None]:
    """(True when one of `bounds` is unknown: everything waits; else their least, None for
    none)."""
    known = []
    for bound in bounds:
        if bound is None:
            return True, None
        known.append(bound)
    return False, min(known, default=None)


def runs(entries: Iterable[Entry[P]], kind: Any) -> Iterator[list[Entry[P]]]:  # noqa: ANN401
    """Consecutive entries of the same kind (`kind(entry)`), in order."""
    for _, group in itertools.groupby(entries, key=kind):
        yield list(group)
