"""`signal-worker publish` and `publish-price`: messages from flags, or JSON lines from a file
or stdin.

Each line is validated as the worker would (`worker.messages`): a bad line, text that is
not UTF-8 included, is reported with its number and not sent, and the rest go on. Signals
are keyed by their `user_id`, price ticks by their token. A message counts as sent once
the broker has acknowledged it; if the broker fails half way, the command says exactly
how many were acknowledged before it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog
from aiokafka.errors import KafkaError

from worker.errors import InvalidMessage, UsageError, WorkerError
from worker.messages import decode_price, decode_signal
from worker.pipeline.kafka import make_producer, require_topics, start_client
from worker.retry import describe
from worker.settings import Settings

log = structlog.get_logger(__name__)
PROGRESS_EVERY = 1000
IN_FLIGHT = 500


@dataclass(frozen=True, slots=True)
class Kind:
    """What a publish command sends: its noun, topic, validation and record key."""

    noun: str
    topic: Callable[[Settings], str]
    key: Callable[[bytes], bytes]


def _signal_key(raw: bytes) -> bytes:
    return str(decode_signal(raw).user_id).encode()


def _tick_key(raw: bytes) -> bytes:
    return decode_price(raw).token_address.encode()


SIGNALS = Kind("signal", lambda s: s.signals_topic, _signal_key)
TICKS = Kind("price tick", lambda s: s.prices_topic, _tick_key)


def _signal_from_flags(args: argparse.Namespace) -> bytes:
    if not args.user_id or not args.token_address:
        raise UsageError("give --user-id and --token-address, or --file FILE (or - for stdin)")
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


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line; bytes, so that a line that is not
    UTF-8 is reported as that line, with its own number, like any other invalid line."""
    stream: BinaryIO
    if path == "-":
        stream = sys.stdin.buffer
    else:
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"{path}: no such file")
        stream = file.open("rb")
    with stream:
        for number, line in enumerate(stream, start=1):
            raw = line.strip()
            if raw:
                yield number, raw


async def publish(settings: Settings, kind: Kind, lines: Iterator[tuple[int, bytes]]) -> int:
    """Validate and send every line; print what was sent; 1 when a line was rejected."""
    topic = kind.topic(settings)
    await require_topics(settings.kafka, [topic], timeout_s=settings.startup_timeout_s)
    producer = make_producer(settings.kafka)
    await start_client(producer, settings.kafka, timeout_s=settings.startup_timeout_s)
    partitions: Counter[int] = Counter()
    rejected: list[int] = []
    started = time.monotonic()
    pending: list[Any] = []
    try:
        for number, raw in lines:
            try:
                key = kind.key(raw)
            except InvalidMessage as exc:
                rejected.append(number)
                log.warning("line_rejected", line=number, reason=str(exc))
                continue
            pending.append(await producer.send(topic, raw, key=key))
            if len(pending) >= IN_FLIGHT:
                await _drain(pending, partitions)
                _progress(kind, partitions, started)
        await _drain(pending, partitions)
    except KafkaError as exc:
        await _drain(pending, partitions, after_failure=True)
        raise WorkerError(
            f"stopped: the broker failed ({describe(exc)}) after {_count(kind, partitions)} "
            f"had been acknowledged; the rest of the input was not sent"
        ) from exc
    finally:
        await producer.stop()
    print(_summary(kind, topic, partitions, rejected))
    return 1 if rejected else 0


async def _drain(
    pending: list[Any], partitions: Counter[int], *, after_failure: bool = False
) -> None:
    """Wait for the acknowledgements; count the partitions. After a failure, count those
    that were acknowledged and drop the others."""
    for future in pending:
        if after_failure:
            if future.done() and not future.cancelled() and future.exception() is None:
                partitions[future.result().partition] += 1
            continue
        metadata = await future
        partitions[metadata.partition] += 1
    pending.clear()


def _progress(kind: Kind, partitions: Counter[int], started: float) -> None:
    sent = sum(partitions.values())
    if sent % PROGRESS_EVERY < IN_FLIGHT:
        rate = sent / max(time.monotonic() - started, 1e-9)
        log.info("publish_progress", sent=_count(kind, partitions), per_s=round(rate))


def _count(kind: Kind, partitions: Counter[int]) -> str:
    n = sum(partitions.values())
    return f"{n} {kind.noun}{'' if n == 1 else 's'}"


def _summary(kind: Kind, topic: str, partitions: Counter[int], rejected: list[int]) -> str:
    """`sent 1 signal to trading-signals (partition 2)`, `sent 300 signals to ... (12
    partitions)`, with the rejected lines named."""
    if len(partitions) == 1:
        where = f" (partition {next(iter(partitions))})"
    elif partitions:
        where = f" ({len(partitions)} partitions)"
    else:
        where = ""
    text = f"sent {_count(kind, partitions)} to {topic}{where}"
    if rejected:
        shown = ", ".join(str(n) for n in rejected[:10]) + (", ..." if len(rejected) > 10 else "")
        text += f"; {len(rejected)} line{'' if len(rejected) == 1 else 's'} rejected ({shown})"
    return text


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """`publish`: signals from flags or JSON lines."""
    lines = _lines(args.file) if args.file is not None else iter([(1, _signal_from_flags(args))])
    return await publish(settings, SIGNALS, lines)


async def run_price(settings: Settings, args: argparse.Namespace) -> int:
    """`publish-price`: price ticks from flags or JSON lines."""
    lines = _lines(args.file) if args.file is not None else iter([(1, _tick_from_flags(args))])
    return await publish(settings, TICKS, lines)
