"""Files of price ticks or OHLC candles for `prices import`: their formats and each line
validated as the worker validates a live tick.

Formats (`--format`, else from the name: `.csv` is CSV; `.jsonl`, `.ndjson`, `.json` JSON
lines; else from the first line: `{` starts JSON lines, anything else a CSV header):

- CSV: a header line, then one tick or candle per line (UTF-8; a cell may be quoted; a
  line break inside a cell is not read). Column names are trimmed, in any case.
- JSON lines: one JSON object per line, read as a Kafka message is (exact decimals; NaN,
  Infinity and a key twice refused).

Kinds: a file holds ticks (`token_address`, `price_usd`, `ts`) or candles (`token_address`,
`ts` the interval's start, `open`, `high`, `low`, `close`; the interval is `--interval`),
told apart by its first line (a column or key named `open`: candles) and every line held to
it. `token_address` may be left out when `--token` gives it (a line naming another token is
refused). Other columns and keys (`volume`) are ignored, as a message's unknown fields are.

Every value is validated by the wire models of `worker.messages` (a tick as
`PriceTickV1`, with `ts` required; a candle's prices as its `price_usd`): prices above 0,
below 1e12 after rounding to 18 places, written as JSON numbers are (no NaN, no `1e400`, no
`+1`); times RFC 3339 with seconds and an offset (Unix numbers refused: seconds or
milliseconds?). Then against the database's clock: no tick more than PRICE_MAX_FUTURE_S
ahead of it, no candle that has not closed yet, nothing before the oldest day the price
history keeps (PRICE_HISTORY_DAYS: the worker's upkeep would delete it within the hour).
A candle's low must be at most, and its high at least, its open and close. Blank lines are
skipped; a line longer than `MAX_MESSAGE_BYTES` is refused without being read into memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from worker.domain.candles import Candle, candle_problem, candle_ticks
from worker.domain.models import PriceTick
from worker.errors import InvalidMessage, UsageError
from worker.messages import (
    MAX_MESSAGE_BYTES,
    CandleV1,
    PriceTickV1,
    describe_validation,
    parse_json,
)

Format = Literal["csv", "jsonl"]
Kind = Literal["ticks", "candles"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")
SUFFIXES: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                               ".json": "jsonl"}  # fmt: skip
TICK_FIELDS = ("token_address", "price_usd", "ts")
CANDLE_FIELDS = ("token_address", "ts", "open", "high", "low", "close")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Limits:
    """What the clock allows: ticks at `oldest` or later (the price history's retention),
    at most `ahead` after `now`, candles closed by `now` (`now`: the database's clock)."""

    now: datetime
    ahead: timedelta
    oldest: datetime


@dataclass(frozen=True, slots=True)
class Parsed:
    """One line of a price file: its ticks (four for a candle), or why it is refused."""

    line: int
    ticks: tuple[PriceTick, ...] = ()
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Layout:
    """How a file's lines are read: its format, its kind, the candle interval, the token
    of lines without one, the CSV header's column names."""

    format: Format
    kind: Kind
    interval: timedelta | None = None
    token: str | None = None
    columns: tuple[str, ...] = ()


def format_of(name: str, first: bytes) -> Format:
    """The format of a file named `name` whose first non-blank line is `first`."""
    for suffix, found in SUFFIXES.items():
        if name.lower().endswith(suffix):
            return found
    return "jsonl" if first.lstrip().startswith(b"{") else "csv"


def lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """Each non-blank line with its number (from 1), without its line break; None for a
    line longer than `MAX_MESSAGE_BYTES` (skipped, not held in memory)."""
    number = 0
    while True:
        raw = stream.readline(MAX_MESSAGE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_MESSAGE_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(MAX_MESSAGE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        text = raw.rstrip(b"\r\n")
        if text.strip():
            yield number, text


def layout_of(
    fmt: Format, first: bytes, *, interval: timedelta | None, token: str | None
) -> Layout:
    """The layout from the file's first non-blank line (the CSV header, or the first JSON
    object); `UsageError` when the file cannot be read at all (a header without the columns
    its kind needs, a candle file without `--interval`)."""
    if fmt == "csv":
        try:
            columns = tuple(c.strip().lower() for c in _cells(first, "the header"))
        except InvalidMessage as exc:
            raise UsageError(f"the CSV header: {exc}") from None
        if len(set(columns)) != len(columns):
            raise UsageError("the CSV header names a column twice")
        keys = set(columns)
    else:
        try:
            data = parse_json(first)
        except InvalidMessage as exc:
            raise UsageError(f"the first line is not a JSON object: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError("the first line is not a JSON object")
        columns, keys = (), set(data)
    kind: Kind = "candles" if "open" in keys else "ticks"
    if kind == "candles" and interval is None:
        raise UsageError("a file of candles needs --interval (the length of each candle: "
                         "e.g. 1m, 5m, 1h, 1d)")  # fmt: skip
    if fmt == "csv":
        needed = CANDLE_FIELDS if kind == "candles" else TICK_FIELDS
        missing = [f for f in needed if f not in keys and not (f == "token_address" and token)]
        if missing:
            raise UsageError(
                f"the CSV header has no column {', '.join(missing)} (a file of {kind} needs "
                f"{', '.join(needed)}; token_address may be given by --token)"
            )
    return Layout(fmt, kind, interval, token, columns)


def parse_line(layout: Layout, number: int, raw: bytes | None, limits: Limits) -> Parsed:
    """The ticks of one line (not the CSV header), validated; or why it is refused."""
    if raw is None:
        return Parsed(number, refused=f"longer than {MAX_MESSAGE_BYTES:,} bytes")
    try:
        record = _record(layout, raw)
        ticks = (
            _candle_ticks(layout, record, limits) if layout.kind == "candles" else (_tick(record),)
        )
        for tick in ticks:
            _check_time(tick.ts, limits)
    except InvalidMessage as exc:
        return Parsed(number, refused=str(exc))
    return Parsed(number, ticks)


def _record(layout: Layout, raw: bytes) -> dict[str, object]:
    """The line's fields as a JSON object would hold them, `--token` filled in."""
    if layout.format == "csv":
        cells = _cells(raw, "the line")
        if len(cells) != len(layout.columns):
            raise InvalidMessage(f"{len(cells)} cells; the header has {len(layout.columns)}")
        # An empty cell is no value (a missing field, as in a message).
        record: dict[str, object] = {
            name: cell for name, cell in zip(layout.columns, cells, strict=True) if cell != ""
        }
    else:
        data = parse_json(raw)
        if not isinstance(data, dict):
            raise InvalidMessage("not a JSON object")
        record = data
    if layout.token is not None:
        given = record.get("token_address")
        if given is None:
            record["token_address"] = layout.token
        elif not isinstance(given, str) or given.strip() != layout.token:
            raise InvalidMessage(f"token_address {given!r} is not --token {layout.token}")
    kind_key = "open" if layout.kind == "candles" else "price_usd"
    if kind_key not in record:
        raise InvalidMessage(f"{kind_key}: Field required (the file holds {layout.kind})")
    return record


def _tick(record: dict[str, object]) -> PriceTick:
    message = _validated(PriceTickV1, record)
    if message.ts is None:
        raise InvalidMessage("ts: Field required (an imported tick needs its time)")
    return message.to_domain(received_at=message.ts)


def _cells(raw: bytes, what: str) -> list[str]:
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if "\x00" in text:
        raise InvalidMessage(f"{what} holds a NUL character")
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        raise InvalidMessage(f"{what} is not CSV: {exc}") from None


def _validated(model: type[M], record: dict[str, object]) -> M:
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation(exc)) from None


def _candle_ticks(
    layout: Layout, record: dict[str, object], limits: Limits
) -> tuple[PriceTick, ...]:
    message = _validated(CandleV1, record)
    assert layout.interval is not None  # noqa: S101 - layout_of requires it for candles
    candle = Candle(message.token_address, message.ts, layout.interval,
                    message.open, message.high, message.low, message.close)  # fmt: skip
    try:
        candle.end  # noqa: B018 - computed here to refuse what no datetime holds
    except OverflowError:
        raise InvalidMessage(f"the candle at {message.ts.isoformat()} ends after the "
                             "largest time there is") from None  # fmt: skip
    problem = candle_problem(candle)
    if problem is not None:
        raise InvalidMessage(f"not a candle: {problem}")
    if candle.end > limits.now:
        raise InvalidMessage(f"the candle has not closed yet: it ends at "
                             f"{candle.end.isoformat()}, after the database's clock "
                             f"({limits.now.isoformat()})")  # fmt: skip
    return candle_ticks(candle)


def _check_time(ts: datetime, limits: Limits) -> None:
    if ts > limits.now + limits.ahead:
        raise InvalidMessage(f"ts {ts.isoformat()} is more than "
                             f"{limits.ahead.total_seconds():g}s ahead of the database's "
                             f"clock (PRICE_MAX_FUTURE_S)")  # fmt: skip
    if ts < limits.oldest:
        raise InvalidMessage(
            f"ts {ts.isoformat()} is before {limits.oldest.isoformat()}, the oldest time the "
            "price history keeps (PRICE_HISTORY_DAYS): the worker's upkeep would delete it; "
            "raise PRICE_HISTORY_DAYS (the worker's too) to keep older prices"
        )
