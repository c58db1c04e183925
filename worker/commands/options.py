"""Command-line options shared by `report` and `replay`; light (parsed before any command
module is imported)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

FORMATS = ("table", "json", "csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's flags (shared with `replay`'s output flags where they apply)."""
    parser.add_argument("--agent", action="append", type=uuid_arg, metavar="ID",
                        help="only this agent (repeatable)")  # fmt: skip
    parser.add_argument("--user", type=uuid_arg, metavar="ID", help="only this user's agents")
    parser.add_argument(
        "--since",
        type=time_arg,
        metavar="TIME",
        help="executions and exits from this time on (ISO 8601, e.g. 2026-11-01 or "
        "2026-11-01T12:00Z); open positions are always shown",
    )
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--format and --chart."""
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (default), json or csv")  # fmt: skip
    parser.add_argument(
        "--chart",
        type=chart_arg,
        metavar="FILE.png",
        help="also draw the results over time to this file (.png, .svg or .pdf)",
    )


def uuid_arg(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id (a UUID): {text!r}") from None


# The times a message may carry (`worker.messages`): the range a --since/--from/--to means.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
CHART_SUFFIXES = (".png", ".svg", ".pdf")


def time_arg(text: str) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), within the times messages carry."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        value = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601, e.g. 2026-11-01 or 2026-11-01T12:00Z)"
        ) from None
    if not EARLIEST <= value <= LATEST:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1970-01-01 and 9999-12-30")
    return value


def chart_arg(text: str) -> Path:
    """A file to draw a chart to: a kind matplotlib writes, not a directory."""
    path = Path(text)
    if path.suffix.lower() not in CHART_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a chart is written as {', '.join(CHART_SUFFIXES)} (by its name's ending)"
        )
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file to write")
    return path


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """`replay`'s flags."""
    add = parser.add_argument
    add("--agent", action="append", type=uuid_arg, metavar="ID",
        help="only this agent (repeatable); default: every agent")  # fmt: skip
    add("--user", type=uuid_arg, metavar="ID", help="only this user's agents")
    add("--from", dest="from_", type=time_arg, metavar="TIME",
        help="the start of the range (ISO 8601); default: the first signal of the agents' "
        "users (each agent starts with its SOL at its own user's first signal, or at its "
        "creation when later)")  # fmt: skip
    add("--to", type=time_arg, metavar="TIME",
        help="the end of the range, excluded; default: now")  # fmt: skip
    add("--signals", type=Path, metavar="FILE.jsonl",
        help="signals from this file (one message per line, with created_at) instead of "
        "the database")  # fmt: skip
    add("--ticks", type=Path, metavar="FILE.jsonl",
        help="price ticks from this file (one message per line, with ts); default: the "
        "price history (recorded, or added by `prices import`)")  # fmt: skip
    add("--config", action="append", type=Path, metavar="FILE.json",
        help="a config to replay: overrides merged over each agent's stored config "
        "(repeatable)")  # fmt: skip
    add("--vary", action="append", metavar="PATH=V1,V2",
        help="replay each value of a config path, e.g. stopLoss.mode=fixed,exponential "
        "(repeatable: the grid of all; at most 64 configs in all)")  # fmt: skip
    add("--allow-unknown-keys", action="store_true",
        help="replay --config and --vary keys no config has (ignored, as the worker "
        "ignores them; refused by default: a misspelt key would change nothing)")  # fmt: skip
    add("--verify", action="store_true",
        help="replay the range (default: everything) with the stored configs and compare it "
        "with the live ledger row by row: executions, swaps, balances at the range's end, "
        "positions (open ones only without --to); rows of other agents or signals out of "
        "the range are not compared. Prints 'identical' (exit 0) or the differences "
        "(exit 1)")  # fmt: skip
    add("--max-differences", type=positive_int, default=20, metavar="N",
        help="--verify: print at most N differences (default: %(default)s)")  # fmt: skip
    add("--ignore", action="append", metavar="COLUMN[,COLUMN]",
        help="--verify: leave these columns out of the comparison, e.g. time,id")  # fmt: skip
    add_output_arguments(parser)


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def no_agent_message(args: argparse.Namespace, wanted: str = "agent with the id") -> str:
    """Why `--agent` / `--user` (or an empty database) matched no agent, in one line."""
    if args.agent:
        return f"no {wanted} " + ", ".join(map(str, args.agent))
    if args.user:
        return f"no agent of the user {args.user}"
    return "no agents yet (`signal-worker seed-demo` creates some)"


def add_view_arguments(parser: argparse.ArgumentParser, rows: str) -> None:
    """The filters and --format of `positions list` and `trades list`; `rows` says which
    time --since/--until bound (e.g. "positions opened")."""
    add = parser.add_argument
    add("--user", type=uuid_arg, metavar="ID", help="only this user's agents")
    add("--agent", action="append", type=uuid_arg, metavar="ID",
        help="only this agent (repeatable)")  # fmt: skip
    add("--token", action="append", metavar="MINT|SYMBOL",
        help="only this token, by its address or its symbol, exactly (repeatable)")  # fmt: skip
    add("--since", type=time_arg, metavar="TIME",
        help=f"{rows} at or after TIME (RFC 3339 / ISO 8601, e.g. 2026-11-01T12:00Z)")  # fmt: skip
    add("--until", type=time_arg, metavar="TIME", help=f"{rows} before TIME")
    add("--format", choices=FORMATS, default="table", help="table (default), json or csv")
