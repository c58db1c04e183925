"""`signal-worker prices import FILE`: price ticks or OHLC candles from a file into the
price history that `replay` reads, so a period before the worker ran can be replayed.

The file (CSV or JSON lines; ticks or candles: `worker.commands.price_files`) is read
twice: first every line is checked, with no transaction open; then, in one transaction,
its ticks are added (`worker.db.price_import`). A candle becomes four ticks by the rule of
`worker.domain.candles` (open; low before high, the order worse for a long position;
close; at 0, 1/4, 1/2 and 3/4 of its interval).

- One bad line refuses the whole file by default: each bad line is printed with its
  number and reason, nothing is imported, and the exit status is 1 (a price history with
  holes no one saw replays as if the price had stood still there). `--skip-bad` imports
  the other lines instead (exit status 0; the bad lines are still printed).
- Nothing is half-imported: a crash or a lost connection rolls the transaction back, and
  a re-import adds nothing twice (a tick whose token and time the history holds is skipped
  as already there; at another price, its line is refused as a conflict: with
  `--skip-bad`, a candle's other ticks are kept).
- A line with a tick inside the span the worker recorded its token itself (from its first
  to its last recorded tick of it) is refused: there, the worker's own ticks are the
  record, and mixed with a candle path they would make `replay` (and `replay --verify`)
  differ from what the worker saw. Import the period before the worker ran, or use
  `--skip-bad` to leave the overlap out.
- Progress on stderr every `PROGRESS_LINES` lines of each pass; one summary line on
  stdout: lines read, ticks imported, ticks skipped as already there, lines refused.
- The file must be a regular file (it is read twice): save a pipe's output first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

import asyncpg

from worker.commands.price_files import (
    Format,
    Layout,
    Limits,
    Parsed,
    format_of,
    layout_of,
    lines,
    parse_line,
)
from worker.commands.text import printable
from worker.db.pool import connect_migrated
from worker.db.price_import import (
    ImportTick,
    history_clock,
    import_ticks,
    lock_imports,
    recorded_span,
)
from worker.errors import UsageError
from worker.settings import Settings

PROGRESS_LINES = 100_000  # a progress line on stderr every this many lines of each pass
CHUNK_TICKS = 5_000  # ticks per statement
MAX_SHOWN = 20  # bad lines printed; the summary counts them all


@dataclass
class Tally:
    """What an import did: lines read, ticks imported and already there, lines refused
    (each with its reason, in line order)."""

    lines: int = 0
    imported: int = 0
    already: int = 0
    refused: dict[int, str] = field(default_factory=dict)

    def summary(self, name: str, layout: Layout, *, committed: bool) -> str:
        """The one summary line."""
        kind: str = layout.kind
        if layout.interval is not None and kind == "candles":
            kind = f"candles of {_length(layout.interval)}"
        imported, already = (self.imported, self.already) if committed else (0, 0)
        line = (f"prices import: {name}: {self.lines:,} lines of {kind}: "
                f"{imported:,} ticks imported, {already:,} skipped as already "
                f"there, {len(self.refused):,} line{'' if len(self.refused) == 1 else 's'} "
                "refused")  # fmt: skip
        if not committed:
            line += ("; nothing imported (a bad line refuses the whole file: fix it, or "
                     "--skip-bad to import the other lines)")  # fmt: skip
        return line


class _RefusedFileError(Exception):
    """Raised inside the transaction to roll it back when a line is refused there."""


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Check the file, then import it in one transaction; 0, or 1 when it was refused."""
    path: Path = args.file
    _require_regular(path)
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        now, today = await history_clock(conn)
        limits = Limits(now, timedelta(seconds=settings.price_max_future_s),
                        oldest_kept(today, settings.price_history_days))  # fmt: skip
        layout = open_layout(path, args)
        tally = check_file(path, layout, limits, progress=_progress("checked"))
        name = printable(str(path))
        _print_refused(name, tally.refused)
        if tally.refused and not args.skip_bad:
            print(tally.summary(name, layout, committed=False))
            return 1
        checked = set(tally.refused)
        tally = Tally(refused=dict(tally.refused))
        try:
            await _import(conn, path, layout, limits, tally, skip_bad=args.skip_bad)
        except _RefusedFileError:
            _print_refused(name, {n: r for n, r in tally.refused.items() if n not in checked})
            print(tally.summary(name, layout, committed=False))
            return 1
        _print_refused(name, {n: r for n, r in tally.refused.items() if n not in checked})
    finally:
        await conn.close()
    print(tally.summary(name, layout, committed=True))
    return 0


def _require_regular(path: Path) -> None:
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise UsageError(f"{path}: {what} (the file is read twice: save a pipe's output "
                         "to a file first)")  # fmt: skip


def oldest_kept(today: date, keep_days: int) -> datetime:
    """The oldest time the price history keeps (the upkeep's cutoff: midnight UTC of
    `keep_days` before today)."""
    day = today - timedelta(days=keep_days)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def open_layout(path: Path, args: argparse.Namespace) -> Layout:
    """The file's layout, from its first non-blank line (`UsageError` for an empty file)."""
    with _open(path) as stream:
        first = next((raw for _, raw in lines(stream)), None)
    if first is None:
        raise UsageError(f"{path}: no line to import")
    fmt: Format = args.format or format_of(path.name, first)
    try:
        return layout_of(fmt, first, interval=args.interval, token=args.token)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def parsed_lines(path: Path, layout: Layout, limits: Limits) -> Iterator[Parsed]:
    """Every data line of the file (not the CSV header), parsed."""
    with _open(path) as stream:
        numbered = lines(stream)
        if layout.format == "csv":
            next(numbered, None)
        for number, raw in numbered:
            yield parse_line(layout, number, raw, limits)


def check_file(
    path: Path,
    layout: Layout,
    limits: Limits,
    *,
    progress: Callable[[int], None] | None = None,
    every: int = PROGRESS_LINES,
) -> Tally:
    """The first pass: every line parsed and validated, nothing written; `progress` is
    called with the lines done every `every` lines."""
    tally = Tally()
    for parsed in parsed_lines(path, layout, limits):
        tally.lines += 1
        if parsed.refused is not None:
            tally.refused[parsed.line] = parsed.refused
        if progress is not None and tally.lines % every == 0:
            progress(tally.lines)
    return tally


async def _import(
    conn: asyncpg.Connection,
    path: Path,
    layout: Layout,
    limits: Limits,
    tally: Tally,
    *,
    skip_bad: bool,
) -> None:
    """The second pass, in one transaction: the good lines' ticks added, chunk by chunk,
    counted in `tally` (which holds the first pass's refused lines).
    `_RefusedFileError` (the transaction rolled back) when a line is refused now (a conflict
    with the history, or the file changed since the check) and `skip_bad` is not set."""
    checked = len(tally.refused)
    progress = _progress("imported")
    chunk: dict[tuple[str, datetime], ImportTick] = {}
    spans: dict[str, tuple[datetime, datetime] | None] = {}
    async with conn.transaction():
        await lock_imports(conn)
        for parsed in parsed_lines(path, layout, limits):
            tally.lines += 1
            if tally.lines % PROGRESS_LINES == 0:
                progress(tally.lines)
            refused = parsed.refused or await _recorded(conn, spans, parsed)
            if refused is not None:
                tally.refused.setdefault(parsed.line, refused)
                continue
            _add(chunk, parsed, tally)
            if len(chunk) >= CHUNK_TICKS:
                await _write(conn, chunk, tally)
        await _write(conn, chunk, tally)
        if len(tally.refused) > checked and not skip_bad:
            raise _RefusedFileError


def _add(chunk: dict[tuple[str, datetime], ImportTick], parsed: Parsed, tally: Tally) -> None:
    """The line's ticks into the chunk; one at a token and time the chunk holds already is
    a duplicate (`_duplicate`)."""
    for tick in parsed.ticks:
        key = (tick.token_address, tick.ts)
        first = chunk.get(key)
        if first is None:
            chunk[key] = ImportTick(len(chunk), tick.token_address, tick.price_usd,
                                    tick.ts, parsed.line)  # fmt: skip
        else:
            _duplicate(tally, first, first.price_usd, parsed.line, tick.price_usd)


async def _recorded(
    conn: asyncpg.Connection, spans: dict[str, tuple[datetime, datetime] | None], parsed: Parsed
) -> str | None:
    """Why the line is refused when one of its ticks is at or after the first tick the
    worker recorded of its token itself, else None.

    Not only between its first and last: a gap in the worker's record (a feed that paused,
    a worker stopped) is part of what live saw (prices flat through it), and a tick after
    its last recorded one is where it goes on recording. An import fills only the time
    before the worker began, so that `replay --verify` stays exact."""
    for tick in parsed.ticks:
        token = tick.token_address
        if token not in spans:
            spans[token] = await recorded_span(conn, token)
        span = spans[token]
        if span is not None and tick.ts >= span[0]:
            return (f"the worker records {token}'s prices itself since {span[0].isoformat()} "
                    f"and {tick.ts.isoformat()} is not before that: its own ticks are the "
                    "record from then on (an import fills the time before)")  # fmt: skip
    return None


async def _write(
    conn: asyncpg.Connection, chunk: dict[tuple[str, datetime], ImportTick], tally: Tally
) -> None:
    ticks = list(chunk.values())
    chunk.clear()
    there = await import_ticks(conn, ticks)
    tally.imported += len(ticks) - len(there)
    for n, price in there.items():
        _duplicate(tally, ticks[n], price, ticks[n].line, ticks[n].price_usd, stored=True)


def _duplicate(
    tally: Tally, first: ImportTick, price: Decimal, line: int, new: Decimal, *,
    stored: bool = False,
) -> None:  # fmt: skip
    """A tick whose token and time are there already: skipped when at the same price, its
    line refused as a conflict when at another."""
    if new == price:
        tally.already += 1
        return
    where = "in the price history" if stored else f"on line {first.line}"
    tally.refused.setdefault(line, f"conflict: {first.token_address} at {first.ts.isoformat()} "
                                   f"has price {price.normalize():f} {where}, this line says "
                                   f"{new.normalize():f}")  # fmt: skip


def _print_refused(name: str, refused: dict[int, str]) -> None:
    for line in sorted(refused)[:MAX_SHOWN]:
        print(printable(f"{name}:{line}: {refused[line]}"), file=sys.stderr)
    if len(refused) > MAX_SHOWN:
        print(f"{name}: ... and {len(refused) - MAX_SHOWN:,} more lines refused", file=sys.stderr)


def _progress(stage: str) -> Callable[[int], None]:
    def progress(done: int) -> None:
        print(f"prices import: {done:,} lines {stage}", file=sys.stderr, flush=True)

    return progress


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def _length(interval: timedelta) -> str:
    seconds = int(interval.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
