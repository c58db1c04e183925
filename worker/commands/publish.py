"""`signal-worker publish`: signals from flags, or JSON lines from a file or stdin.

Each line is validated as the worker would (a bad line is reported with its number and
not sent), keyed by its `user_id`, and acknowledged by the broker before it is counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from worker.errors import InvalidMessage, UsageError
from worker.kafka import make_producer, start_client
from worker.messages import decode_signal
from worker.settings import Settings

PROGRESS_EVERY = 1000
IN_FLIGHT = 500


def _from_flags(args: argparse.Namespace) -> bytes:
    if not args.user_id or not args.token_address:
        raise UsageError("give --user-id and --token-address, or --file FILE (or - for stdin)")
    message: dict[str, Any] = {
        "user_id": args.user_id,
        "token_address": args.token_address,
        "signal_type": args.signal_type,
        "signal_strength": args.signal_strength,
        "source": args.source,
    }
    for name in ("symbol", "price_usd", "idempotency_key"):
        value = getattr(args, name)
        if value is not None:
            message[name] = value
    return orjson.dumps(message)


def _lines(args: argparse.Namespace) -> Iterator[tuple[int, bytes]]:
    if args.file is None:
        yield 1, _from_flags(args)
        return
    stream: TextIO
    if args.file == "-":
        stream = sys.stdin
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"{args.file}: no such file")
        stream = path.open(encoding="utf-8")
    with stream:
        number = 0
        try:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield number, line.strip().encode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{args.file}: line {number + 1} is not UTF-8 text") from exc


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Validate, key by user and send every signal; print the count per partition."""
    producer = make_producer(settings.kafka)
    await start_client(producer, settings.kafka, timeout_s=settings.startup_timeout_s)
    partitions: Counter[int] = Counter()
    rejected = 0
    started = time.monotonic()
    pending: list[Any] = []
    try:
        for number, raw in _lines(args):
            try:
                signal = decode_signal(raw)
            except InvalidMessage as exc:
                rejected += 1
                print(f"line {number}: not sent: {exc}", file=sys.stderr)
                continue
            pending.append(
                await producer.send(settings.signals_topic, raw, key=str(signal.user_id).encode())
            )
            if len(pending) >= IN_FLIGHT:
                await _drain(pending, partitions)
            sent = sum(partitions.values())
            if sent and sent % PROGRESS_EVERY == 0:
                rate = sent / max(time.monotonic() - started, 1e-9)
                print(f"publish: {sent} sent ({rate:.0f}/s)", file=sys.stderr)
        await _drain(pending, partitions)
    finally:
        await producer.stop()
    total = sum(partitions.values())
    spread = ", ".join(f"{p}: {n}" for p, n in sorted(partitions.items())) or "none"
    print(
        f"sent {total} signal(s) to {settings.signals_topic} (partition: count {spread})"
        + (f"; {rejected} line(s) rejected" if rejected else "")
    )
    return 1 if rejected else 0


async def _drain(pending: list[Any], partitions: Counter[int]) -> None:
    for future in pending:
        metadata = await future
        partitions[metadata.partition] += 1
    pending.clear()
