"""From a fetch to transactions, without I/O: decode, cost, deal into lanes, cut into chunks.

A fetch's records of one partition become a `Part` (each record's decoded `Item`, or None for
a record that goes to the dead-letter topic, and its estimated agent executions); the parts
of a topic are dealt, whole, into lanes balanced by those estimates (a lane keeps each
partition's order); a lane's records are cut into `Chunk`s of at most about
`MAX_EXECUTIONS_PER_TRANSACTION` executions, one transaction each, which store the next
offset of every partition they cover. A user's fan-out is learned from what its last signal
did (`Fanouts`, bounded).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.domain.commands import Command
from worker.domain.models import PriceTick, Signal
from worker.domain.order import RANK_COMMAND, RANK_SIGNAL, RANK_TICK, tick_rank
from worker.errors import InvalidMessage
from worker.messages import (
    CommandV1,
    PriceTickV1,
    SignalV1,
    check_command_time,
    check_signal_time,
    check_tick_time,
    decode_command,
    decode_price,
    decode_signal,
)
from worker.pipeline.deadletters import DeadLetter
from worker.pipeline.failures import Action, Scope, disposition
from worker.pipeline.markers import OrderMarker, is_marker, marker_time
from worker.pipeline.timeline import RANK_MARKER, Entry

# One transaction holds at most about this many agent executions (memory stays bounded).
MAX_EXECUTIONS_PER_TRANSACTION = 5_000
# The fan-out assumed for a user whose agents could not be counted yet.
UNKNOWN_FANOUT = 100
# Users whose fan-out is remembered (least recently seen forgotten first).
FANOUT_MEMORY = 100_000

KafkaRecord: TypeAlias = ConsumerRecord[bytes, bytes]
# What a topic carries.
SIGNALS, TICKS, COMMANDS = "signals", "ticks", "commands"


@dataclass(frozen=True, slots=True)
class Item:
    """A record that decoded into a message; `at` its decision time once placed in the
    order (`worker.pipeline.timeline`), `taken` when the worker read it (monotonic s)."""

    record: KafkaRecord
    message: SignalV1 | PriceTickV1 | CommandV1 | OrderMarker
    at: datetime | None = None
    taken: float = 0.0

    def event_time(self) -> datetime:
        """A signal's or command's `created_at`, a tick's `ts`, a marker's time, else the
        record's timestamp."""
        message = self.message
        if isinstance(message, OrderMarker):
            return message.at
        own = message.ts if isinstance(message, PriceTickV1) else message.created_at
        return own if own is not None else record_time(self.record)


@dataclass(slots=True)
class Part:
    """One partition's records of a fetch, decoded: `items[i]` is `records[i]`'s (None when
    it was dead-lettered), `costs[i]` its estimated agent executions, `ats[i]` its decision
    time."""

    tp: TopicPartition
    records: Sequence[KafkaRecord]
    items: list[Item | None]
    costs: list[int] = field(default_factory=list)
    ats: list[datetime] = field(default_factory=list)

    @property
    def cost(self) -> int:
        """Estimated agent executions of the whole part."""
        return sum(self.costs)


@dataclass(slots=True)
class Chunk:
    """What one transaction covers: records of one or more partitions of one lane, in the
    order they are applied; each partition's next offset and the decision time of its last
    record."""

    records: list[KafkaRecord] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    last_at: dict[TopicPartition, datetime] = field(default_factory=dict)
    # The records among `records` that were dead-lettered when decoded (no item).
    dead_lettered: list[KafkaRecord] = field(default_factory=list)

    def add(self, tp: TopicPartition, record: KafkaRecord, item: Item | None, at: datetime) -> None:
        """`record` of `tp` (and its item, None when it was dead-lettered), decided at `at`."""
        self.records.append(record)
        self.next_offsets[tp] = record.offset + 1
        self.last_at[tp] = at
        if item is not None:
            self.items.append(item)
        else:
            self.dead_lettered.append(record)


def record_time(record: ConsumerRecord[Any, Any]) -> datetime:
    """The record's Kafka timestamp as an aware UTC datetime; `InvalidMessage` for one no
    datetime holds (a producer may set any 64-bit value where the broker lets it)."""
    try:
        return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidMessage(f"the record's timestamp {record.timestamp} is not a time") from exc


def decode(
    records: Sequence[KafkaRecord],
    *,
    kind: str,
    now: datetime,
    max_ahead: timedelta,
    markers: bool = False,
) -> tuple[list[Item | None], list[DeadLetter]]:
    """Each record's item (None for one that cannot be processed), and the dead letters;
    `kind` what the topic carries (`SIGNALS`, `TICKS`, `COMMANDS`); with `markers`, an order
    marker (`worker.pipeline.markers`) is read as one, whatever the topic carries."""
    items: list[Item | None] = []
    dead: list[DeadLetter] = []
    message: SignalV1 | PriceTickV1 | CommandV1 | OrderMarker
    for record in records:
        try:
            received_at = record_time(record)  # every kind uses it later: checked here
            if markers and is_marker(record):
                at = marker_time(record, received_at=received_at, now=now, ahead=max_ahead)
                message = OrderMarker(at)
            elif kind == SIGNALS:
                message = decode_signal(record.value)
                check_signal_time(message, received_at=received_at, now=now, ahead=max_ahead)
            elif kind == COMMANDS:
                message = decode_command(record.value)
                check_command_time(message, received_at=received_at, now=now, ahead=max_ahead)
            else:
                message = decode_price(record.value)
                check_tick_time(message, received_at=received_at, now=now, ahead=max_ahead)
        except Exception as exc:
            # Invalid input, or a decoding bug one record triggers: either way that record
            # is dead-lettered with the reason and the others go on.
            verdict = disposition(exc, Scope.RECORD)
            if verdict.action is not Action.DEAD_LETTER:
                raise
            dead.append(DeadLetter(record, verdict.reason or str(exc), verdict.kind or "invalid"))
            items.append(None)
            continue
        items.append(Item(record, message))
    return items, dead


class Fanouts:
    """Agents per user as last seen, for at most `maxsize` users (least recent dropped), so
    a stream of made-up user ids cannot grow the worker's memory."""

    def __init__(self, maxsize: int = FANOUT_MEMORY) -> None:
        self._maxsize = maxsize
        self._counts: OrderedDict[UUID, int] = OrderedDict()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._counts

    def __len__(self) -> int:
        return len(self._counts)

    def get(self, user_id: UUID, default: int) -> int:
        """The user's last known agent count, else `default`."""
        count = self._counts.get(user_id)
        if count is None:
            return default
        self._counts.move_to_end(user_id)
        return count

    def __setitem__(self, user_id: UUID, count: int) -> None:
        self._counts[user_id] = count
        self._counts.move_to_end(user_id)
        while len(self._counts) > self._maxsize:
            self._counts.popitem(last=False)

    def unseen(self, items: Sequence[Item | None]) -> set[UUID]:
        """The users of `items`' signals whose fan-out is not known yet."""
        return {
            i.message.user_id
            for i in items
            if i is not None and isinstance(i.message, SignalV1) and i.message.user_id not in self
        }

    def cost(self, item: Item | None) -> int:
        """Estimated agent executions of one record (1 for a tick or an invalid record)."""
        if item is not None and isinstance(item.message, SignalV1):
            return self.get(item.message.user_id, UNKNOWN_FANOUT)
        return 1


def deal(parts: list[Part], lanes: int) -> list[list[Part]]:
    """Whole partitions into at most `lanes` lanes, the costliest first to the lightest."""
    out: list[list[Part]] = [[] for _ in range(min(lanes, len(parts)))]
    loads = [0] * len(out)
    for part in sorted(parts, key=lambda p: (-p.cost, p.tp.partition)):
        lightest = loads.index(min(loads))
        out[lightest].append(part)
        loads[lightest] += part.cost
    for lane in out:
        lane.sort(key=lambda p: p.tp.partition)
    return out


def chunks(lane: list[Part], budget: int = MAX_EXECUTIONS_PER_TRANSACTION) -> Iterator[Chunk]:
    """A lane's records in transactions of at most about `budget` agent executions (a
    record costlier than the budget goes alone), partitions whole and in order."""
    chunk, spent = Chunk(), 0
    for part in lane:
        for record, item, cost, at in zip(
            part.records, part.items, part.costs, part.ats, strict=True
        ):
            if chunk.records and spent + cost > budget:
                yield chunk
                chunk, spent = Chunk(), 0
            spent += cost
            chunk.add(part.tp, record, item, at)
    if chunk.records:
        yield chunk


def above(records: list[KafkaRecord], floor: int) -> list[KafkaRecord]:
    """The records at or after `floor` (the first offset not applied yet)."""
    if not records or records[0].offset >= floor:
        return records
    return [r for r in records if r.offset >= floor]


def where(chunk: Chunk) -> str:
    """The partitions and offsets a chunk covers: `topic:partition@first-last, …`."""
    first: dict[TopicPartition, int] = {}
    for r in chunk.records:
        first.setdefault(TopicPartition(r.topic, r.partition), r.offset)
    return ", ".join(
        f"{tp.topic}:{tp.partition}@{first.get(tp, end - 1)}-{end - 1}"
        for tp, end in sorted(chunk.next_offsets.items())
    )


def signals_of(items: Sequence[Item]) -> list[Signal]:
    """The domain signals of decoded signal items, each with the record it came from and
    its decision time (`worker.pipeline.timeline`)."""
    signals = []
    for item in items:
        assert isinstance(item.message, SignalV1)  # noqa: S101 - only signal items here
        record = item.record
        signal = item.message.to_domain(
            coordinates=f"{record.topic}:{record.partition}:{record.offset}",
            received_at=record_time(record),
        )
        signals.append(signal if item.at is None else replace(signal, at=item.at))
    return signals


def commands_of(items: Sequence[Item]) -> list[Command]:
    """The domain commands of decoded command items, each decided at its decision time."""
    commands = []
    for item in items:
        message = item.message
        assert not isinstance(message, SignalV1 | PriceTickV1 | OrderMarker)  # noqa: S101
        record = item.record
        at = item.at if item.at is not None else message.event_time(record_time(record))
        commands.append(
            message.to_domain(
                coordinates=f"{record.topic}:{record.partition}:{record.offset}", at=at
            )
        )
    return commands


def ticks_of(items: Sequence[Item]) -> list[PriceTick]:
    """The domain ticks of decoded tick items, received at their records' times, each with
    its decision time (`worker.pipeline.timeline`)."""
    ticks = []
    for item in items:
        assert isinstance(item.message, PriceTickV1)  # noqa: S101 - only ticks here
        tick = item.message.to_domain(received_at=record_time(item.record))
        ticks.append(tick if item.at is None else replace(tick, at=item.at))
    return ticks


def placing(
    item: Item | None,
    record: KafkaRecord,
    tp: TopicPartition,
    *,
    kind: str,
    latest: datetime,
) -> tuple[datetime | None, int, tuple[Any, ...]]:
    """(event time, rank, tie-break) of a record in the order (`worker.pipeline.timeline`).
    A record that goes to the dead-letter topic keeps its partition's rank and is placed at
    its record's timestamp when that is a time no later than `latest` (else at its
    partition's time): its place only moves its partition's offset on."""
    if item is None:
        try:
            at: datetime | None = record_time(record)
        except InvalidMessage:
            at = None
        if at is not None and at > latest:
            at = None
        if kind == SIGNALS:
            return at, RANK_SIGNAL, (tp.partition,)
        if kind == COMMANDS:
            return at, RANK_COMMAND, (tp.partition,)
        return at, RANK_TICK, ("", tp.partition)
    message = item.message
    if isinstance(message, OrderMarker):
        return message.at, RANK_MARKER, (tp.topic, tp.partition)
    if isinstance(message, SignalV1):
        return item.event_time(), RANK_SIGNAL, (tp.partition,)
    if not isinstance(message, PriceTickV1):
        return item.event_time(), RANK_COMMAND, (tp.partition,)
    token = message.token_address
    return item.event_time(), tick_rank(token), (token, tp.partition)


def parts_of(run: Sequence[Entry[TopicPartition]]) -> list[Part]:
    """Released records of one topic as one part per partition (each in offset order), each
    item with its decision time."""
    by_tp: dict[TopicPartition, Part] = {}
    records: dict[TopicPartition, list[KafkaRecord]] = {}
    for entry in run:
        record, item = entry.payload
        part = by_tp.get(entry.source)
        if part is None:
            part = by_tp[entry.source] = Part(
                entry.source, records.setdefault(entry.source, []), []
            )
        records.setdefault(entry.source, []).append(record)
        part.items.append(None if item is None else replace(item, at=entry.at))
        part.ats.append(entry.at)
    return list(by_tp.values())


def ordered_chunks(
    run: Sequence[Entry[TopicPartition]], budget: int = MAX_EXECUTIONS_PER_TRANSACTION
) -> Iterator[Chunk]:
    """Released records in their order, in transactions of at most `budget` records."""
    chunk = Chunk()
    for entry in run:
        if len(chunk.records) >= budget:
            yield chunk
            chunk = Chunk()
        record, item = entry.payload
        chunk.add(
            entry.source, record, None if item is None else replace(item, at=entry.at), entry.at
        )
    if chunk.records:
        yield chunk
