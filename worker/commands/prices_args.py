"""`prices import`'s arguments (apart from the command, so that building the parser imports
no database or validation code)."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from pathlib import Path

from worker.domain.models import SOL_MINT

FORMATS = ("csv", "jsonl")
MAX_INTERVAL = timedelta(days=7)
_INTERVAL_RE = re.compile(r"^([1-9][0-9]{0,6})([smhd]?)$", re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_prices(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`prices import`'s parser."""
    prices = sub.add_parser("prices", help="import price history (ticks or OHLC candles)")
    actions = prices.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    imported = actions.add_parser(
        "import",
        help="add a file of price ticks or OHLC candles (CSV or JSON lines) to the price "
        "history that replay reads",
        description="Adds the ticks of FILE (or its candles, each as four ticks: open, low, "
        "high, close at 0, 1/4, 1/2 and 3/4 of its interval: the low before the high, the "
        "order worse for a long position) to the price history (token_price_history), "
        "validated as live ticks, in one transaction. A tick already there is skipped, so "
        "a re-import adds nothing. One bad line refuses the whole file (exit 1) unless "
        "--skip-bad.",
    )
    add = imported.add_argument
    add("file", type=Path, metavar="FILE", help="a regular file (it is read twice)")
    add("--format", choices=FORMATS, default=None,
        help="csv or jsonl; default: from the file's name (.csv, .jsonl, .ndjson, .json), "
        "else from its first line")  # fmt: skip
    add("--interval", type=interval_arg, metavar="LENGTH",
        help="the length of each candle (a file of candles needs it): seconds, or a number "
        "with s, m, h or d, e.g. 1m, 5m, 1h, 1d")  # fmt: skip
    add("--token", type=token_arg, metavar="MINT",
        help="the token of lines without token_address (SOL for SOL/USD)")  # fmt: skip
    add("--skip-bad", action="store_true",
        help="import the good lines of a file with bad ones (default: refuse the "
        "whole file)")  # fmt: skip


def interval_arg(text: str) -> timedelta:
    """A candle's length: whole seconds, or a number with s, m, h or d; up to 7 days."""
    found = _INTERVAL_RE.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"not a candle length: {text[:40]!r} (seconds, or e.g. 30s, 1m, 5m, 1h, 1d)"
        )
    length = timedelta(seconds=int(found[1]) * _UNITS[found[2]])
    if length > MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 7 days")
    return length


def token_arg(text: str) -> str:
    """A mint address as given (validated with each line), or SOL for the SOL mint."""
    text = text.strip()
    return SOL_MINT if text.upper() == "SOL" else text
