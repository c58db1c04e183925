"""`signal-worker publish` and `publish-price`: messages from flags, or JSON lines from a file
or stdin.

Each line is validated as the worker would (`worker.messages`: the decoding, and the check
that its time is not ahead of now by more than `PRICE_MAX_FUTURE_S`): a bad line, text
that is not UTF-8 included, is reported with its number and not sent, and the rest go on.
Signals are keyed by their `user_id`, price ticks by their token. A message counts as sent
once the broker has acknowledged it; if the broker fails half way, the command says exactly
how many were acknowledged before it stopped.

- `--dry-run` validates every line and sends nothing (no broker needed): each invalid line
  with its number and reason, then a summary; exit 1 if one is invalid.
- `--skip-lines N` skips the first N lines of the input (line numbers stay those of the
  input, blank lines counted), to resume where an interrupted run stopped.
- Ctrl-C (SIGINT, or SIGTERM) stops reading, waits for the acknowledgements of what was
  sent, says how many were sent, which line was the last (its number and first bytes)
  and how to resume (`--skip-lines N`); exit 130. A second Ctrl-C stops at once.
- `--key-from-content` gives a signal without an `idempotency_key` the key
  `content-` + the hex of `SignalV1.digest()` (16 bytes of SHA-256 over the canonical JSON
  of its validated fields: sorted keys, absent fields left out, so the same payload however
  spelled has one key). The worker keeps one signal per (user, key), so publishing the same
  file again adds nothing; two identical lines are one signal (give them a `created_at` or
  a key of their own to make them two).
- `--wait` then waits (at most `--wait-timeout` seconds) until the worker has stored each
  signal sent, and prints each agent's decision per signal (`trading_signals` and
  `signal_executions` by (user, idempotency key): the message's key, else the record's
  coordinates `topic:partition:offset` as the producer's acknowledgement gives them). A
  signal stored before (the same key sent earlier) shows the decision made then. Exit 1
  on timeout, saying how many are still undecided (a worker not running, or signals
  dead-lettered: an unknown user, say).

Input from a pipe or a terminal is read by a thread of its own, so that a slow writer never
holds the event loop and Ctrl-C is answered at once; a regular file is read directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.db.decisions import AgentDecision, SignalKey, decisions_of
from worker.db.pool import connect_migrated
from worker.errors import InvalidMessage, UsageError, WorkerError
from worker.messages import (
    SignalV1,
    check_signal_time,
    check_tick_time,
    decode_price,
    decode_signal,
    parse_json,
)
from worker.pipeline.kafka import make_producer, require_topics, start_client
from worker.retry import describe
from worker.settings import Settings

log = structlog.get_logger(__name__)
PROGRESS_EVERY = 1000
IN_FLIGHT = 500
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a tool stopped by Ctrl-C
WAIT_POLL_S = 0.25
WAIT_PROGRESS_S = 5.0
WAIT_KEYS_PER_QUERY = 1000
SHOWN_BYTES = 60
STDIN_CHUNK_BYTES = 64 * 1024
STDIN_CHUNKS_AHEAD = 64


@dataclass(frozen=True, slots=True)
class Checked:
    """A valid line: the value to send, its record key and, for a signal, its natural key
    (`idempotency_key` None: the record's coordinates will be its key)."""

    value: bytes
    key: bytes
    user_id: UUID | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """How `publish` goes about it (see the module docstring)."""

    dry_run: bool = False
    wait: bool = False
    wait_timeout_s: float = 60.0
    skip_lines: int = 0
    key_from_content: bool = False


@dataclass(frozen=True, slots=True)
class Kind:
    """What a publish command sends: its noun, topic, and the check of one line
    (`InvalidMessage` for one the worker would dead-letter)."""

    noun: str
    topic: Callable[[Settings], str]
    check: Callable[[bytes, datetime, timedelta, Options], Checked]

    def count(self, n: int) -> str:
        """`1 signal`, `3 signals`."""
        return f"{n} {self.noun}{'' if n == 1 else 's'}"


def content_key(message: SignalV1) -> str:
    """The idempotency key `--key-from-content` gives a signal: its payload's digest."""
    return f"content-{message.digest().hex()}"


def _with_key(raw: bytes, key: str) -> bytes:
    """The line with `"idempotency_key": key`: put first in the object when it has none
    (the rest of the line as it was, decimals and all); an explicit null is replaced, the
    object written again (decimals as the strings the worker reads exactly)."""
    data = parse_json(raw)
    assert isinstance(data, dict)  # noqa: S101 - decode_signal accepted it as an object
    if "idempotency_key" not in data:
        return b'{"idempotency_key":' + orjson.dumps(key) + b"," + raw[1:]
    data["idempotency_key"] = key
    return json.dumps(data, default=str, ensure_ascii=False).encode()


def _check_signal(raw: bytes, now: datetime, ahead: timedelta, options: Options) -> Checked:
    message = decode_signal(raw)
    # The record will be stamped about now, by the producer.
    check_signal_time(message, received_at=now, now=now, ahead=ahead)
    if options.key_from_content and message.idempotency_key is None:
        raw = _with_key(raw, content_key(message))
        message = decode_signal(raw)  # what the worker will read
    return Checked(raw, str(message.user_id).encode(), message.user_id, message.idempotency_key)


def _check_tick(raw: bytes, now: datetime, ahead: timedelta, options: Options) -> Checked:
    del options
    tick = decode_price(raw)
    check_tick_time(tick, received_at=now, now=now, ahead=ahead)
    return Checked(raw, tick.token_address.encode())


SIGNALS = Kind("signal", lambda s: s.signals_topic, _check_signal)
TICKS = Kind("price tick", lambda s: s.prices_topic, _check_tick)


def _signal_from_flags(args: argparse.Namespace) -> bytes:
    # The flags a signal cannot go without are those contract section 3 requires: none has a
    # default, as agents choose signals by type (allowedSignalTypes) and strength (minScore).
    if not (args.user_id and args.token_address and args.signal_type) or (
        args.signal_strength is None
    ):
        raise UsageError(
            "give --user-id, --token-address, --signal-type and --signal-strength (what a "
            "signal requires), or --file FILE (or - for stdin)"
        )
    message: dict[str, Any] = {
        "user_id": args.user_id,
        "token_address": args.token_address,
        "signal_type": args.signal_type,
        "signal_strength": args.signal_strength,
    }
    for name in (
        "symbol",
        "price_usd",
        "idempotency_key",
        "source",
        "activation_reason",
        "market_cap_usd",
        "liquidity_usd",
        "holder_count",
        "created_at",
    ):
        value = getattr(args, name, None)
        if value is not None:
            message[name] = value
    return orjson.dumps(message)


def _tick_from_flags(args: argparse.Namespace) -> bytes:
    if not args.token_address or args.price_usd is None:
        raise UsageError("give --token-address and --price-usd, or --file FILE (or - for stdin)")
    message: dict[str, Any] = {"token_address": args.token_address, "price_usd": args.price_usd}
    if args.ts is not None:
        message["ts"] = args.ts
    return orjson.dumps(message)


# ------------------------------------------------------------------------------ the input


def _open(path: str) -> int | BinaryIO:
    """A file descriptor to read in a thread for stdin from a pipe or a terminal; the file
    for a regular file."""
    if path == "-":
        fd = sys.stdin.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        return sys.stdin.buffer
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such file")
    return file.open("rb")


async def _file_lines(lines: BinaryIO, stop: asyncio.Event) -> AsyncIterator[bytes]:
    for n, line in enumerate(lines):
        if n % 256 == 255:
            await asyncio.sleep(0)  # let a Ctrl-C be seen
        if stop.is_set():
            return
        yield line


class _Chunks:
    """The chunks of a pipe or terminal, read by a daemon thread (`os.read`: no lock that
    the interpreter's exit could wait for) at most `STDIN_CHUNKS_AHEAD` chunks ahead."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        self._room = threading.Semaphore(STDIN_CHUNKS_AHEAD)
        threading.Thread(target=self._read, name="publish-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            self._room.acquire()
            chunk: bytes | OSError
            try:
                chunk = os.read(self._fd, STDIN_CHUNK_BYTES)
            except OSError as exc:
                chunk = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
            except RuntimeError:
                return  # the loop is closed: the command has ended
            if not chunk or isinstance(chunk, OSError):
                return

    async def next(self, stopped: asyncio.Future[Any]) -> bytes | None:
        """The next chunk (b"" at EOF), or None once `stopped` is done."""
        if self._queue.empty():
            getter = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return None
            chunk = getter.result()
        else:
            chunk = self._queue.get_nowait()
        self._room.release()
        if isinstance(chunk, OSError):
            raise WorkerError(f"cannot read stdin: {describe(chunk)}") from chunk
        return chunk


async def _stream_lines(fd: int, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """The lines of a pipe or terminal; ends at EOF, or as soon as `stop` is set even while
    the writer is silent."""
    chunks = _Chunks(fd)
    stopped = asyncio.ensure_future(stop.wait())
    rest = b""
    try:
        while (chunk := await chunks.next(stopped)) is not None:
            if not chunk:
                if rest:
                    yield rest
                return
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if stop.is_set():
                    return
                yield line
    finally:
        stopped.cancel()


async def _numbered(
    path: str | None, flags: bytes | None, skip: int, stop: asyncio.Event
) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line after the first `skip`; bytes, so that
    a line that is not UTF-8 is reported as that line, with its own number."""
    if path is None:
        assert flags is not None  # noqa: S101 - one or the other
        yield 1, flags
        return
    source = _open(path)
    file = None if isinstance(source, int) else source
    try:
        raw_lines = (
            _stream_lines(source, stop) if isinstance(source, int) else _file_lines(source, stop)
        )
        number = 0
        async for line in raw_lines:
            number += 1
            if number <= skip:
                continue
            raw = line.strip()
            if raw:
                yield number, raw
    finally:
        if file is not None:
            file.close()


@contextlib.contextmanager
def _interruptible() -> Iterator[asyncio.Event]:
    """An event set by the first SIGINT or SIGTERM; a second one stops at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


# ------------------------------------------------------------------------------ sending


@dataclass(frozen=True, slots=True)
class Sent:
    """A signal the broker acknowledged: its line and its key in the worker's tables."""

    line: int
    key: SignalKey


@dataclass
class _Sender:
    """Sends checked lines with up to `IN_FLIGHT` awaiting their acknowledgement; counts
    what was acknowledged, and remembers the last line sent and the last line read."""

    kind: Kind
    topic: str
    producer: AIOKafkaProducer
    options: Options
    ahead: timedelta
    partitions: Counter[int] = field(default_factory=Counter)
    rejected: list[int] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    last_read: int = 0
    last_sent: tuple[int, bytes] | None = None
    started: float = field(default_factory=time.monotonic)
    _pending: list[tuple[Any, int, Checked]] = field(default_factory=list)

    async def send_all(self, lines: AsyncIterator[tuple[int, bytes]]) -> None:
        async for number, raw in lines:
            self.last_read = number
            try:
                checked = self.kind.check(raw, datetime.now(UTC), self.ahead, self.options)
            except InvalidMessage as exc:
                self.rejected.append(number)
                log.warning("line_rejected", line=number, reason=str(exc))
                continue
            future = await self.producer.send(self.topic, checked.value, key=checked.key)
            self._pending.append((future, number, checked))
            if len(self._pending) >= IN_FLIGHT:
                await self.drain()
                self._progress()
        await self.drain()

    async def drain(self, *, after_failure: bool = False) -> None:
        """Wait for the acknowledgements and count them. After a failure, count those that
        were acknowledged and drop the others."""
        for future, number, checked in self._pending:
            if after_failure:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._acknowledged(future.result(), number, checked)
                continue
            self._acknowledged(await future, number, checked)
        self._pending.clear()

    def _acknowledged(self, metadata: Any, number: int, checked: Checked) -> None:  # noqa: ANN401
        self.partitions[metadata.partition] += 1
        self.last_sent = (number, checked.value)
        if self.options.wait and checked.user_id is not None:
            key = checked.idempotency_key or (
                f"{metadata.topic}:{metadata.partition}:{metadata.offset}"
            )
            self.sent.append(Sent(number, (checked.user_id, key)))

    def _progress(self) -> None:
        sent = sum(self.partitions.values())
        if sent % PROGRESS_EVERY < IN_FLIGHT:
            rate = sent / max(time.monotonic() - self.started, 1e-9)
            log.info("publish_progress", sent=self.kind.count(sent), per_s=round(rate))

    def summary(self) -> str:
        """`sent 1 signal to trading-signals (partition 2)`, `sent 300 signals to ... (12
        partitions)`, with the rejected lines named."""
        partitions = self.partitions
        if len(partitions) == 1:
            where = f" (partition {next(iter(partitions))})"
        elif partitions:
            where = f" ({len(partitions)} partitions)"
        else:
            where = ""
        text = f"sent {self.kind.count(sum(partitions.values()))} to {self.topic}{where}"
        if self.rejected:
            text += f"; {_lines_named(self.rejected, 'rejected')}"
        return text

    def interrupted(self) -> str:
        """What an interrupted run sent last and how to go on from there."""
        if self.last_read == 0:
            return "interrupted before the first line: nothing was sent"
        if self.last_sent is None:
            last = "nothing was sent"
        else:
            number, value = self.last_sent
            last = f"the last line sent is line {number}: {_first_bytes(value)}"
        return (
            f"interrupted after line {self.last_read}: {last}; to resume, run the same "
            f"command with --skip-lines {self.last_read}"
        )


def _lines_named(numbers: list[int], what: str) -> str:
    """`1 line rejected (271)`, `4 lines invalid (2, 3, 4, 5)`, at most ten named."""
    shown = ", ".join(str(n) for n in numbers[:10]) + (", ..." if len(numbers) > 10 else "")
    return f"{len(numbers)} line{'' if len(numbers) == 1 else 's'} {what} ({shown})"


def _first_bytes(value: bytes) -> str:
    text = value[:SHOWN_BYTES].decode("utf-8", "replace")
    return text + ("…" if len(value) > SHOWN_BYTES else "")


async def publish(
    settings: Settings,
    kind: Kind,
    lines: Callable[[asyncio.Event], AsyncIterator[tuple[int, bytes]]],
    options: Options,
) -> int:
    """Validate and send every line (or only validate: `--dry-run`); print what was sent,
    then (`--wait`) what the worker decided; 1 when a line was rejected, 130 when
    interrupted."""
    ahead = timedelta(seconds=settings.price_max_future_s)
    if options.dry_run:
        with _interruptible() as stop:
            return await _dry_run(kind, lines(stop), ahead, options, stop)
    topic = kind.topic(settings)
    await require_topics(settings.kafka, [topic], timeout_s=settings.startup_timeout_s)
    conn = (
        await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
        if options.wait
        else None
    )
    try:
        with _interruptible() as stop:
            sender = await _send(settings, kind, topic, lines(stop), options, ahead)
            print(sender.summary(), flush=True)
            if stop.is_set():
                print(f"signal-worker publish: {sender.interrupted()}", file=sys.stderr)
                return EXIT_INTERRUPTED
            code = 1 if sender.rejected else 0
            if conn is not None:
                waited = await _wait(conn, sender.sent, options.wait_timeout_s, stop)
                code = waited if waited != 0 else code
            return code
    finally:
        if conn is not None:
            await conn.close()


async def _send(
    settings: Settings,
    kind: Kind,
    topic: str,
    lines: AsyncIterator[tuple[int, bytes]],
    options: Options,
    ahead: timedelta,
) -> _Sender:
    producer = make_producer(settings.kafka)
    await start_client(producer, settings.kafka, timeout_s=settings.startup_timeout_s)
    sender = _Sender(kind, topic, producer, options, ahead)
    try:
        await sender.send_all(lines)
    except KafkaError as exc:
        await sender.drain(after_failure=True)
        raise WorkerError(
            f"stopped: the broker failed ({describe(exc)}) after "
            f"{kind.count(sum(sender.partitions.values()))} had been acknowledged; the rest "
            f"of the input was not sent (the last line sent: "
            f"{sender.last_sent[0] if sender.last_sent else 'none'})"
        ) from exc
    finally:
        await producer.stop()
    return sender


async def _dry_run(
    kind: Kind,
    lines: AsyncIterator[tuple[int, bytes]],
    ahead: timedelta,
    options: Options,
    stop: asyncio.Event,
) -> int:
    """Check every line as `publish` would, print each invalid one; send nothing."""
    valid = 0
    invalid: list[int] = []
    last = 0
    async for number, raw in lines:
        last = number
        try:
            kind.check(raw, datetime.now(UTC), ahead, options)
        except InvalidMessage as exc:
            invalid.append(number)
            print(f"line {number}: {exc}")
            continue
        valid += 1
    text = f"dry run: {kind.count(valid)} valid"
    if invalid:
        text += f", {_lines_named(invalid, 'invalid')}"
    if stop.is_set():
        text += f" up to line {last} (interrupted)"
    print(f"{text}; nothing was sent")
    if stop.is_set():
        return EXIT_INTERRUPTED
    return 1 if invalid else 0


# ------------------------------------------------------------------------------ waiting


async def _wait(
    conn: asyncpg.Connection, sent: list[Sent], timeout_s: float, stop: asyncio.Event
) -> int:
    """Print each signal's decisions as the worker stores them; `WorkerError` naming how
    many are undecided after `timeout_s`; 130 when interrupted meanwhile."""
    undecided: dict[SignalKey, list[int]] = {}
    for s in sent:
        undecided.setdefault(s.key, []).append(s.line)
    total = len(undecided)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    next_progress = loop.time() + WAIT_PROGRESS_S
    while undecided:
        keys = list(undecided)
        for start in range(0, len(keys), WAIT_KEYS_PER_QUERY):
            found = await decisions_of(conn, keys[start : start + WAIT_KEYS_PER_QUERY])
            for key in sorted(found, key=lambda k: undecided[k][0]):
                print(_decided(key, undecided.pop(key), found[key]), flush=True)
        if not undecided:
            break
        if stop.is_set():
            print(
                f"signal-worker publish: interrupted while waiting: {len(undecided)} of "
                f"{total} undecided",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if loop.time() >= deadline:
            first = min(lines[0] for lines in undecided.values())
            raise WorkerError(
                f"{len(undecided)} of {SIGNALS.count(total)} still undecided after "
                f"{timeout_s:g}s (the first at line {first}): is a worker running "
                "(`signal-worker run`)? A signal for an unknown user is dead-lettered "
                "(DLQ_TOPIC); --wait-timeout waits longer"
            )
        if loop.time() >= next_progress:
            log.info("publish_waiting", decided=total - len(undecided), undecided=len(undecided))
            next_progress = loop.time() + WAIT_PROGRESS_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(WAIT_POLL_S, deadline - loop.time()))
    return 0


def _decided(key: SignalKey, lines: list[int], decisions: list[AgentDecision]) -> str:
    """`line 3: signal 'k-3' of user …: 2 agents` and one line per agent."""
    user_id, idempotency_key = key
    where = f"line {lines[0]}" if len(lines) == 1 else "lines " + ", ".join(map(str, lines))
    head = f"{where}: signal {idempotency_key!r} of user {user_id}: "
    if not decisions:
        return head + "no agent (the user had none at the signal's time)"
    rows = [head + f"{len(decisions)} agent{'' if len(decisions) == 1 else 's'}"]
    width = max(len(d.name) for d in decisions)
    for d in decisions:
        why = f": {d.reason}" if d.reason else ""
        rows.append(f"  {d.agent_id}  {d.name:<{width}}  {d.status}{why}")
    return "\n".join(rows)


# ------------------------------------------------------------------------------ commands


def _options(args: argparse.Namespace) -> Options:
    options = Options(
        dry_run=args.dry_run,
        wait=getattr(args, "wait", False),
        wait_timeout_s=getattr(args, "wait_timeout", 60.0),
        skip_lines=args.skip_lines,
        key_from_content=getattr(args, "key_from_content", False),
    )
    if options.skip_lines and args.file is None:
        raise UsageError("--skip-lines needs --file FILE (or - for stdin)")
    if options.dry_run and options.wait:
        raise UsageError("--dry-run sends nothing: there is nothing to --wait for")
    return options


def _source(
    args: argparse.Namespace, flags: Callable[[argparse.Namespace], bytes], options: Options
) -> Callable[[asyncio.Event], AsyncIterator[tuple[int, bytes]]]:
    message = flags(args) if args.file is None else None
    return lambda stop: _numbered(args.file, message, options.skip_lines, stop)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """`publish`: signals from flags or JSON lines."""
    options = _options(args)
    return await publish(settings, SIGNALS, _source(args, _signal_from_flags, options), options)


async def run_price(settings: Settings, args: argparse.Namespace) -> int:
    """`publish-price`: price ticks from flags or JSON lines."""
    options = _options(args)
    return await publish(settings, TICKS, _source(args, _tick_from_flags, options), options)
