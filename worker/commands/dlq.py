"""`signal-worker dlq list|show|redrive`: the dead letters on `DLQ_TOPIC`, and sending them
back.

A dead letter (`worker.pipeline.deadletters`) is the record as it was, plus the headers
`error` (the reason), `original-topic`, `original-partition` and `original-offset`. The
topic is read from its start to its end as of the command's start, by a consumer outside
the group (`worker.pipeline.group_admin.Cluster`), in offset order per partition; `--since`
compares the dead letter's record time, which is the original record's (a dead letter keeps
its record's timestamp), so the whole topic is read for it.

`redrive` sends selected dead letters back to their original topic with their original key,
value and own headers, plus `redriven-from` (the dead letter's `DLQ_TOPIC:partition:offset`)
and `redriven-original` (the original `topic:partition:offset`); the key puts it on its
original partition (the producer's partitioner, as for any publish). It is a new record with
a new timestamp: a signal without `created_at` is dated by its redrive, so the agents of a
user created since are offered it. The choices:

- Once each, by original coordinates. Before a record is sent, a 'pending' row of
  `dlq_redrives` (schema 0012) is committed under the original coordinates (unique); after
  the broker has acknowledged the send, the row is marked 'sent' with where it went. A crash
  or broker failure between the two leaves 'pending': the record may have gone out, so a
  later redrive refuses it unless `--force` (at most once, never twice by accident). A sent
  one is never sent again, even with `--force` (`already redriven at ...`): should the
  redriven record fail once more, its new dead letter has new original coordinates.
  Duplicate dead letters of one record (a dead letter the worker sent twice) get one
  redrive.
- Re-checked first, the worker's own way: the value is decoded as the worker decodes a
  fetched record (`worker.pipeline.batching.decode`: `decode_signal` / `decode_price` and
  the time checks, on a record stamped now), and a signal's user must exist. One that would
  fail the same way is refused with the reason unless `--force`. Never sent, even with
  `--force`: a dead letter whose value was cut down (`payload: truncated|omitted`: the
  original is not there to send) or lacks its original coordinates, or whose original topic
  is not one the worker consumes.
- Sent one at a time in original coordinates order, each acknowledged before the next, so
  a partition's records go back in their order.
- Exit 0 when every selected dead letter was redriven now or before; 1 when one was refused
  (`--dry-run` too: it says what would be refused).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from worker.commands.text import printable
from worker.db.agents import AgentQueries
from worker.db.pool import connect_migrated
from worker.db.redrives import Original, Redrive, claim, fetch_redrives, mark_sent
from worker.errors import UsageError, WorkerError
from worker.messages import SignalV1
from worker.pipeline.batching import COMMANDS, SIGNALS, TICKS, decode
from worker.pipeline.deadletters import DLQ_HEADERS
from worker.pipeline.group_admin import Cluster, open_cluster
from worker.pipeline.kafka import make_producer, require_topics, start_client
from worker.retry import SERVICE_ERRORS, describe
from worker.settings import Settings

# How much of a value `list` shows, and of a reason in its table.
HEAD_BYTES = 48
REASON_CHARS = 100
# One fetch's wait; the topic's end is known, so only a broker that stops answering waits long.
FETCH_WAIT_MS = 500
REDRIVE_HEADERS = frozenset({"redriven-from", "redriven-original"})


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the DLQ topic: where it is, its time, and what it carries."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    value_size: int
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        return cls(
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            len(record.value or b""),
            tuple(record.headers or ()),
        )

    def header(self, name: str) -> str | None:
        """The last header `name`, as text (invalid UTF-8 replaced); None without one."""
        found = [v for k, v in self.headers if k == name]
        return found[-1].decode("utf-8", "replace") if found else None

    @property
    def reason(self) -> str:
        return self.header("error") or ""

    @property
    def original(self) -> Original | None:
        """The dead-lettered record's (topic, partition, offset); None when a header is
        missing or not a number."""
        topic = self.header("original-topic")
        partition = self.header("original-partition")
        offset = self.header("original-offset")
        if not topic or partition is None or offset is None:
            return None
        try:
            return topic, int(partition), int(offset)
        except ValueError:
            return None

    @property
    def where(self) -> str:
        """`partition:offset` on the DLQ topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def time(self) -> datetime | None:
        try:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError):
            return None

    def head(self) -> DeadLetter:
        """This dead letter with only the first `HEAD_BYTES` of its value (for `list`)."""
        value = None if self.value is None else self.value[:HEAD_BYTES]
        return replace(self, value=value)


def coordinates(original: Original | None) -> str:
    """`topic:partition:offset`, printable; `-` for none."""
    return "-" if original is None else printable(f"{original[0]}:{original[1]}:{original[2]}")


def shown_bytes(raw: bytes | None, size: int | None = None) -> str:
    """Bytes as printable text (invalid UTF-8 as `\\xNN`), `…` when `size` says more exist."""
    if raw is None:
        return "(no value)"
    text = printable(raw.decode("utf-8", "backslashreplace"))
    return text + ("…" if size is not None and size > len(raw) else "")


# --- reading the topic ---------------------------------------------------------------------


async def read_dead_letters(
    cluster: Cluster,
    topic: str,
    keep: Callable[[DeadLetter], DeadLetter | None],
    *,
    timeout_s: float,
) -> list[DeadLetter]:
    """Every record of `topic` up to its end as of now, as `keep` returns it (None: left
    out), by partition and offset; a broker that gives nothing for `timeout_s` while
    records remain is a `WorkerError`."""
    partitions = await cluster.partitions([topic])
    start, end = await cluster.bounds(partitions)
    ends = {tp: end[tp] for tp in partitions if end[tp] > start[tp]}
    if not ends:
        return []
    cluster.reader.assign(list(ends))
    for tp in ends:
        cluster.reader.seek(tp, start[tp])
    found: list[DeadLetter] = []
    loop = asyncio.get_running_loop()
    moved_at = loop.time()
    while ends:
        batch = await cluster.reader.getmany(*ends, timeout_ms=FETCH_WAIT_MS)
        for tp, records in batch.items():
            kept = (keep(DeadLetter.of(r)) for r in records if r.offset < ends.get(tp, -1))
            found.extend(d for d in kept if d is not None)
        for tp in list(ends):
            if await cluster.reader.position(tp) >= ends[tp]:
                del ends[tp]
        if batch:
            moved_at = loop.time()
        elif loop.time() - moved_at > timeout_s:
            raise WorkerError(
                f"reading {topic}: the broker sent nothing for {timeout_s:g}s "
                "(STARTUP_TIMEOUT_S) before the end of the topic"
            )
    found.sort(key=lambda d: (d.partition, d.offset))
    return found


# --- list ------------------------------------------------------------------------------------


def _list_filter(args: argparse.Namespace) -> Callable[[DeadLetter], DeadLetter | None]:
    topics = set(args.topic or ())
    since_ms = None if args.since is None else int(args.since.timestamp() * 1000)

    def keep(dead: DeadLetter) -> DeadLetter | None:
        original = dead.original
        if topics and (original is None or original[0] not in topics):
            return None
        if since_ms is not None and dead.timestamp_ms < since_ms:
            return None
        return dead.head()

    return keep


def _redrive_state(redrive: Redrive | None) -> str:
    if redrive is None:
        return "-"
    if redrive.status == "sent" and redrive.sent_at is not None:
        return f"{_iso(redrive.sent_at)} as {redrive.sent_to}"
    return f"pending since {_iso(redrive.created_at)}"


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_list(dead: Sequence[DeadLetter], redrives: dict[Original, Redrive]) -> str:
    """The table of `list`: one dead letter a line."""
    header = ("dlq", "time", "original", "reason", "redriven", "value")
    cells = [header] + [
        (
            d.where,
            _iso(d.time),
            coordinates(d.original),
            _short(printable(d.reason), REASON_CHARS),
            _redrive_state(redrives.get(d.original) if d.original else None),
            shown_bytes(d.value, d.value_size),
        )
        for d in dead
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in cells
    )


def as_dict(d: DeadLetter, redrive: Redrive | None, *, whole: bool = False) -> dict[str, Any]:
    """A dead letter for `--format json` (text as it is: JSON escapes what it must)."""
    original = d.original
    value = None if d.value is None else d.value.decode("utf-8", "backslashreplace")
    out: dict[str, Any] = {
        "dlq_partition": d.partition,
        "dlq_offset": d.offset,
        "time": _iso(d.time) if d.time else None,
        "original_topic": original[0] if original else None,
        "original_partition": original[1] if original else None,
        "original_offset": original[2] if original else None,
        "reason": d.reason,
        "value_bytes": d.value_size,
        "value" if whole else "value_head": value,
        "redrive": None
        if redrive is None
        else {
            "status": redrive.status,
            "forced": redrive.forced,
            "sent_to": redrive.sent_to,
            "started_at": _iso(redrive.created_at),
            "sent_at": _iso(redrive.sent_at) if redrive.sent_at else None,
        },
    }
    if whole:
        out["key"] = None if d.key is None else d.key.decode("utf-8", "backslashreplace")
        out["headers"] = [[k, v.decode("utf-8", "backslashreplace")] for k, v in d.headers]
    return out


async def _list(settings: Settings, args: argparse.Namespace, session: Session) -> int:
    dead = await read_dead_letters(
        session.cluster, settings.dlq_topic, _list_filter(args), timeout_s=session.timeout_s
    )
    dead.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    shown = dead[: args.limit]
    redrives = await fetch_redrives(session.conn, [d.original for d in shown if d.original])
    if args.format == "json":
        rows = [as_dict(d, redrives.get(d.original) if d.original else None) for d in shown]
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_list(shown, redrives))
        more = f" ({len(dead) - len(shown)} more: --limit)" if len(shown) < len(dead) else ""
        print(f"{len(shown)} dead letter(s) of {settings.dlq_topic} shown{more}")
    return 0


# --- show ------------------------------------------------------------------------------------


def format_whole(d: DeadLetter, redrive: Redrive | None, dlq_topic: str) -> str:
    """`show`'s text: where, time, reason, original, key, every header, the whole value."""
    lines = [
        f"dead letter {printable(dlq_topic)}:{d.where}",
        f"time      {_iso(d.time)}",
        f"reason    {printable(d.reason)}",
        f"original  {coordinates(d.original)}",
        f"redriven  {_redrive_state(redrive)}",
        f"key       {shown_bytes(d.key) if d.key is not None else '(none)'}",
        "headers",
        *(f"  {printable(k)}: {shown_bytes(v)}" for k, v in d.headers),
        f"value ({d.value_size} bytes)",
        f"  {shown_bytes(d.value)}",
    ]
    return "\n".join(lines)


async def _show(settings: Settings, args: argparse.Namespace, session: Session) -> int:
    if (args.where is None) == (args.original is None):
        raise UsageError("give PARTITION:OFFSET of the DLQ topic, or --original TOPIC:P:O")
    wanted: Callable[[DeadLetter], bool]
    if args.where is not None:
        what = f"{settings.dlq_topic}:{args.where[0]}:{args.where[1]}"
        wanted = lambda d: (d.partition, d.offset) == args.where  # noqa: E731
    else:
        what = f"with original coordinates {coordinates(args.original)}"
        wanted = lambda d: d.original == args.original  # noqa: E731
    dead = await read_dead_letters(
        session.cluster,
        settings.dlq_topic,
        lambda d: d if wanted(d) else None,
        timeout_s=session.timeout_s,
    )
    if not dead:
        raise WorkerError(f"no dead letter {printable(what)}")
    redrives = await fetch_redrives(session.conn, [d.original for d in dead if d.original])
    if args.format == "json":
        rows = [as_dict(d, redrives.get(d.original) if d.original else None, whole=True)
                for d in dead]  # fmt: skip
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    texts = [
        format_whole(d, redrives.get(d.original) if d.original else None, settings.dlq_topic)
        for d in dead
    ]
    print("\n\n".join(texts))
    return 0


# --- redrive ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a dead letter is not sent; `forceable` when `--force` sends it anyway."""

    reason: str
    forceable: bool


def _permanent(dead: DeadLetter, inputs: dict[str, str]) -> Refusal | None:
    """What no `--force` overrides: no original to send, or nowhere to send it."""
    original = dead.original
    if original is None:
        return Refusal("it has no original-topic/partition/offset headers", forceable=False)
    form = dead.header("payload")
    if form is not None:
        return Refusal(
            f"its value was cut down in the DLQ (payload: {printable(form)}, "
            f"{dead.header('original-size')} bytes originally); the original is not there "
            "to send",
            forceable=False,
        )
    if original[0] not in inputs:
        return Refusal(
            f"its original topic {printable(original[0])} is not one this worker consumes "
            f"({', '.join(inputs)})",
            forceable=False,
        )
    return None


async def recheck(
    dead: DeadLetter,
    settings: Settings,
    conn: asyncpg.Connection,
    *,
    now: datetime,
) -> Refusal | None:
    """Why `dead` would fail again if sent now, else None: decoded as the worker decodes a
    fetched record stamped `now` (`worker.pipeline.batching.decode`), and a signal's user
    must exist."""
    inputs = {
        settings.signals_topic: SIGNALS,
        settings.prices_topic: TICKS,
        settings.kafka.commands_topic: COMMANDS,
    }
    permanent = _permanent(dead, inputs)
    if permanent is not None:
        return permanent
    assert dead.original is not None  # noqa: S101 - _permanent refused those without
    topic, partition, offset = dead.original
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=int(now.timestamp() * 1000),
        timestamp_type=0,
        key=dead.key,
        value=dead.value,
        checksum=None,
        serialized_key_size=len(dead.key or b""),
        serialized_value_size=dead.value_size,
        headers=list(dead.headers),
    )
    ahead = timedelta(seconds=settings.price_max_future_s)
    # As the worker reads it: an order marker as one where markers are honoured.
    kind = inputs[topic]
    items, bad = decode([record], kind=kind, now=now, max_ahead=ahead, markers=kind != SIGNALS)
    if bad:
        return Refusal(bad[0].reason, forceable=True)
    item = items[0]
    if item is not None and isinstance(item.message, SignalV1):
        user_id = item.message.user_id
        if user_id not in await AgentQueries(conn).existing_users([user_id]):
            return Refusal(f"unknown user_id {user_id}: no such user", forceable=True)
    return None


def redriven_headers(dead: DeadLetter, dlq_topic: str) -> list[tuple[str, bytes]]:
    """The original record's own headers (the DLQ's and an earlier redrive's left out),
    then where this redrive comes from."""
    own = [(k, v) for k, v in dead.headers if k not in DLQ_HEADERS | REDRIVE_HEADERS]
    return [
        *own,
        ("redriven-from", f"{dlq_topic}:{dead.where}".encode()),
        ("redriven-original", coordinates(dead.original).encode()),
    ]


def _selection(args: argparse.Namespace) -> Callable[[DeadLetter], DeadLetter | None]:
    if not (args.original or args.reason_contains is not None or args.all):
        raise UsageError(
            "select what to redrive: --original T:P:O, --reason-contains TEXT or --all"
        )
    if args.all and (args.original or args.reason_contains is not None):
        raise UsageError("--all selects every dead letter: give it alone")
    originals = set(args.original or ())
    needle = (args.reason_contains or "").casefold()

    def keep(dead: DeadLetter) -> DeadLetter | None:
        if originals and dead.original not in originals:
            return None
        if needle and needle not in dead.reason.casefold():
            return None
        return dead

    return keep


@dataclass
class Tally:
    """What a redrive run did, for its summary and exit code."""

    redriven: int = 0
    refused: int = 0
    already: int = 0
    duplicates: int = 0


class Redriver:
    """Sends dead letters back, each claimed in `dlq_redrives` before and marked after."""

    def __init__(
        self,
        settings: Settings,
        conn: asyncpg.Connection,
        producer: AIOKafkaProducer | None,
        args: argparse.Namespace,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.producer = producer  # None: a dry run
        self.force: bool = args.force
        self.tally = Tally()
        self.now = datetime.now(UTC)  # the checks' clock: a record sent now

    async def one(self, dead: DeadLetter, redrive: Redrive | None) -> str:
        """Redrive `dead` (or refuse it); its line."""
        if redrive is not None and redrive.status == "sent":
            self.tally.already += 1
            return f"already redriven at {_iso(redrive.sent_at)} as {redrive.sent_to}"
        refusal = await recheck(dead, self.settings, self.conn, now=self.now)
        if redrive is not None:  # pending: an earlier redrive was not confirmed
            refusal = refusal or Refusal(
                f"a redrive of it started at {_iso(redrive.created_at)} was not confirmed "
                "(it may have been sent: look for the header redriven-original on "
                f"{coordinates(dead.original)}'s topic)",
                forceable=True,
            )
        if refusal is not None and not (refusal.forceable and self.force):
            self.tally.refused += 1
            hint = " (--force sends it anyway)" if refusal.forceable else ""
            return f"refused: {printable(refusal.reason)}{hint}"
        forced = " (forced)" if refusal is not None else ""
        if self.producer is None:
            self.tally.redriven += 1
            return f"would redrive{forced}"
        return await self._send(dead, forced=bool(forced))

    async def _send(self, dead: DeadLetter, *, forced: bool) -> str:
        assert self.producer is not None  # noqa: S101 - not a dry run
        assert dead.original is not None  # noqa: S101 - refused by recheck otherwise
        dlq = (self.settings.dlq_topic, dead.partition, dead.offset)
        claimed = await claim(
            self.conn, dead.original, dlq, dead.reason, forced=forced, reclaim_pending=self.force
        )
        if not claimed:  # another redrive claimed it since it was read
            self.tally.refused += 1
            return "refused: another redrive of it started meanwhile"
        try:
            future = await self.producer.send(
                dead.original[0],
                value=dead.value,
                key=dead.key,
                headers=redriven_headers(dead, self.settings.dlq_topic),
            )
            sent = await future
        except KafkaError as exc:
            raise WorkerError(
                f"the broker failed while redriving {coordinates(dead.original)} "
                f"({describe(exc)}); it is recorded as pending (a later redrive needs --force: "
                "look first whether it arrived)"
            ) from exc
        sent_to = f"{sent.topic}:{sent.partition}:{sent.offset}"
        try:
            await mark_sent(self.conn, dead.original, sent_to)
        except SERVICE_ERRORS as exc:
            raise WorkerError(
                f"{coordinates(dead.original)} was redriven as {sent_to} but could not be "
                f"marked sent ({describe(exc)}); it stays pending: do not --force it"
            ) from exc
        self.tally.redriven += 1
        return f"redriven{' (forced)' if forced else ''} as {sent_to}"


def _ordered(dead: Sequence[DeadLetter]) -> Iterator[tuple[DeadLetter, DeadLetter | None]]:
    """Each dead letter in original coordinates order, with the earlier one of the same
    record when it is a duplicate (else None)."""
    first: dict[Original, DeadLetter] = {}
    known: list[tuple[Original, DeadLetter]] = []
    for d in dead:
        if d.original is None:
            yield d, None
        else:
            known.append((d.original, d))
    for original, d in sorted(known, key=lambda pair: (pair[0], pair[1].partition, pair[1].offset)):
        earlier = first.setdefault(original, d)
        yield d, None if earlier is d else earlier


async def _redrive(settings: Settings, args: argparse.Namespace, session: Session) -> int:
    keep = _selection(args)
    dead = await read_dead_letters(
        session.cluster, settings.dlq_topic, keep, timeout_s=session.timeout_s
    )
    redrives = await fetch_redrives(session.conn, [d.original for d in dead if d.original])
    producer: AIOKafkaProducer | None = None
    if not args.dry_run and dead:
        topics = [settings.signals_topic, settings.prices_topic]
        await require_topics(settings.kafka, topics, timeout_s=session.timeout_s)
        producer = make_producer(settings.kafka)
        await start_client(producer, settings.kafka, timeout_s=session.timeout_s)
    redriver = Redriver(settings, session.conn, producer, args)
    try:
        for d, earlier in _ordered(dead):
            where = f"{coordinates(d.original)} (dlq {d.where})"
            if earlier is not None:
                redriver.tally.duplicates += 1
                print(f"{where}: a second dead letter of the record of dlq {earlier.where}: "
                      "one redrive for both")  # fmt: skip
                continue
            redrive = redrives.get(d.original) if d.original else None
            print(f"{where}: {await redriver.one(d, redrive)}", flush=True)
    finally:
        if producer is not None:
            await producer.stop()
    for missing in sorted(set(args.original or ()) - {d.original for d in dead}):
        redriver.tally.refused += 1
        print(f"{coordinates(missing)}: refused: no dead letter of it on {settings.dlq_topic}")
    print(_summary(redriver.tally, dry_run=args.dry_run))
    return 1 if redriver.tally.refused else 0


def _summary(tally: Tally, *, dry_run: bool) -> str:
    parts = [
        f"{'would redrive' if dry_run else 'redriven'} {tally.redriven}",
        f"refused {tally.refused}",
        f"already redriven {tally.already}",
    ]
    if tally.duplicates:
        parts.append(f"duplicates {tally.duplicates}")
    return (
        ("dry run: " if dry_run else "")
        + ", ".join(parts)
        + ("; nothing was sent" if dry_run else "")
    )


# --- the command -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """The cluster, the database connection and the timeout one command uses."""

    cluster: Cluster
    conn: asyncpg.Connection
    timeout_s: float


_ACTIONS = {"list": _list, "show": _show, "redrive": _redrive}


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """`dlq list|show|redrive`."""
    action = _ACTIONS[args.dlq_command]
    if args.dlq_command == "redrive":
        _selection(args)  # a missing selector fails before anything is touched
    timeout_s = settings.startup_timeout_s
    conn = await connect_migrated(settings.db, timeout_s=timeout_s)
    try:
        async with open_cluster(settings.kafka, timeout_s=timeout_s) as cluster:
            return await action(settings, args, Session(cluster, conn, timeout_s))
    except asyncpg.PostgresError as exc:
        raise WorkerError(f"PostgreSQL: {describe(exc)}") from exc
    finally:
        await conn.close()
