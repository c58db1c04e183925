"""`python -m worker <command>` and the `signal-worker` console script.

Builds `Settings`, configures logging, then runs the command. Every failure a user can
cause (a bad setting, an unreachable service, a bad argument) ends in one line on stderr
and a non-zero exit, never a traceback: 2 for a bad setting or usage, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, cast

# The standard library only up to here: a Python without the dependencies (`python3 -m worker`
# outside the virtual environment) ends in one line saying how to run the installed command.
from worker.dependencies import exit_missing

try:
    from pydantic import ValidationError

    from worker import version
    from worker.commands import command_options, dlq_args, notify_args, options, prices_args
    from worker.errors import UsageError, WorkerError
    from worker.retry import SERVICE_ERRORS, describe, set_interactive
    from worker.runtime.logging import configure_logging
    from worker.settings import Settings, describe_error, load_settings
except ModuleNotFoundError as missing:
    exit_missing(missing)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader left


class _Command(Protocol):
    def __call__(
        self, settings: Settings, args: argparse.Namespace
    ) -> Coroutine[Any, Any, int]: ...


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signal-worker",
        description="Trading signals from Kafka to simulated trades in PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"signal-worker {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = sub.add_parser("migrate", help="apply pending schema/*.sql files")
    migrate.add_argument("--dry-run", action="store_true", help="list what would run")
    migrate.add_argument(
        "--schema-dir", help="folder of the NNNN_name.sql files (default: the bundled schema/)"
    )

    sub.add_parser("run", help="consume signals and prices until SIGTERM/SIGINT")

    _add_publish(sub)
    seed = sub.add_parser("seed-demo", help="create a demo user with funded simulation agents")
    seed.add_argument(
        "--if-empty", action="store_true", help="only when the database has no users yet"
    )
    sub.add_parser("check", help="verify the ledger invariants; exit 1 listing violations")
    sub.add_parser(
        "demo",
        help="one signal and a short price path through the demo agents: a buy, a "
        "take-profit sale, stop-loss exits with their P/L (starts a worker if none runs)",
    )
    agents = sub.add_parser(
        "agents", help="create, list, show and change agents (commands); lint their configs"
    )
    agent_actions = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    agent_actions.add_parser(
        "lint",
        help="list every agent whose trading_config is invalid or holds keys the worker "
        "ignores; exit 1 if any is invalid",
    )
    command_options.add_agent_actions(agent_actions)
    command_options.add_users(sub)
    sub.add_parser("snapshot", help="write this hour's balance snapshots now")
    report = sub.add_parser(
        "report",
        help="what the agents did: executions, trades, realised and unrealised P/L",
        description="Per agent: executions by status, trades (full exits), win rate, "
        "realised P/L in SOL and %, open positions with their unrealised P/L at the latest "
        "prices, average hold time, largest loss, SOL balance now.",
    )
    options.add_arguments(report)
    replay = sub.add_parser(
        "replay",
        help="recorded signals and ticks through other agent configs, in memory",
        description="Replays the signals and price ticks of a time range (or of JSON lines "
        "files) through the agents' stored configs and the configs you give, in memory, with "
        "the worker's own rules, and prints each config's results next to the live ones. "
        "Writes nothing.",
    )
    options.add_replay_arguments(replay)
    prices_args.add_prices(sub)
    _add_offsets(sub)
    _add_views(sub)
    dlq_args.add_dlq(sub)
    notify_args.add_notify(sub)
    schema = sub.add_parser("schema", help="write the JSON Schemas of the Kafka messages")
    schema.add_argument(
        "--out", metavar="DIR", help="folder to write them to (default: docs/schemas)"
    )
    return parser


def _add_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = sub.add_parser(
        "publish",
        help="publish signals to SIGNALS_TOPIC (flags, or JSON lines from a file or stdin)",
        description="Publish buy signals, validated as the worker validates them; each is "
        "keyed by its user_id. Without --file, one signal from the flags.",
    )
    publish.add_argument(
        "--file", metavar="FILE", help="JSON lines to publish, one signal each ('-' for stdin)"
    )
    publish.add_argument("--user-id", metavar="UUID", help="the owner whose agents take it")
    publish.add_argument("--token-address", metavar="MINT", help="the token's Solana mint")
    # Required, as in a JSON signal (no default: agents choose signals by type and strength).
    publish.add_argument(
        "--signal-type",
        metavar="TEXT",
        help="required: free text, 1 to 50 characters (e.g. 'Velocity (Dex Boost Detection)')",
    )
    publish.add_argument(
        "--signal-strength", type=int, metavar="1-5", help="required: 1 (weak) to 5 (strong)"
    )
    publish.add_argument("--symbol", help="the token's symbol, at most 50 characters")
    publish.add_argument(
        "--price-usd", metavar="USD", help="the token's price; else the latest tick's is used"
    )
    publish.add_argument(
        "--market-cap-usd", metavar="USD", help="for agents with market cap bounds"
    )
    publish.add_argument("--liquidity-usd", metavar="USD", help="for agents with liquidity bounds")
    publish.add_argument(
        "--holder-count", type=int, metavar="N", help="for agents with holder count bounds"
    )
    publish.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key from the same user is the same signal (default: the record's "
        "Kafka coordinates)",
    )
    publish.add_argument("--source", default="cli", help="who sent it (default: %(default)s)")
    publish.add_argument("--activation-reason", metavar="TEXT", help="why, for people")
    publish.add_argument(
        "--created-at", metavar="RFC3339", help="when the signal was made (default: now)"
    )
    publish.add_argument(
        "--key-from-content",
        action="store_true",
        help="a signal without an idempotency_key gets one derived from its content, so "
        "publishing the same file again sends nothing twice in effect",
    )
    publish.add_argument(
        "--wait",
        action="store_true",
        help="then wait for the worker's decisions and print each agent's per signal",
    )
    publish.add_argument(
        "--wait-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="with --wait: exit 1 when signals are still undecided after S seconds "
        "(default: %(default)g)",
    )
    _add_input_options(publish)

    price = sub.add_parser(
        "publish-price",
        help="publish price ticks to PRICES_TOPIC (flags, or JSON lines from a file or stdin)",
        description="Publish USD price ticks, keyed by token. SOL/USD is a tick for the SOL "
        "mint So11111111111111111111111111111111111111112.",
    )
    price.add_argument(
        "--file", metavar="FILE", help="JSON lines to publish, one tick each ('-' for stdin)"
    )
    price.add_argument("--token-address", metavar="MINT", help="the token's mint (or SOL's)")
    price.add_argument("--price-usd", metavar="USD", help="its price in USD, > 0")
    price.add_argument(
        "--ts", metavar="RFC3339", help="when the price was seen (default: the record's time)"
    )
    _add_input_options(price)


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every line as the worker would and send nothing; exit 1 if one is invalid",
    )
    parser.add_argument(
        "--skip-lines",
        type=_count,
        default=0,
        metavar="N",
        help="skip the first N lines of --file (to resume an interrupted run)",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _add_offsets(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    offsets = sub.add_parser(
        "offsets",
        help="show, reset or skip the consumer group's offsets (database and Kafka)",
    )
    actions = offsets.add_subparsers(dest="offsets_command", required=True, metavar="ACTION")
    topic_help = "only this topic (SIGNALS_TOPIC or PRICES_TOPIC); repeatable"
    show = actions.add_parser(
        "show", help="per partition: stored (database), committed (Kafka), end, lag"
    )
    show.add_argument("--topic", action="append", help=topic_help)
    reset = actions.add_parser(
        "reset",
        help="set the stored and the committed offsets; refused while a worker is in the group",
    )
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true", help="the first retained records")
    target.add_argument("--to-latest", action="store_true", help="the end of the log")
    target.add_argument(
        "--to-timestamp", metavar="T", help="the first records at or after T (RFC 3339)"
    )
    reset.add_argument("--topic", action="append", help=topic_help)
    skip = actions.add_parser(
        "skip",
        help="move one partition past the record it is stuck on (dead-lettered first); "
        "refused while a worker is in the group",
        description="For the case nobody foresaw: a record the worker cannot get past. The "
        "record at --offset is sent to DLQ_TOPIC (with the reason) and the partition's stored "
        "and committed offsets move to the next record. Only the record the group would "
        "read next can be skipped; `offsets reset` moves further.",
    )
    skip.add_argument("--topic", required=True, help="SIGNALS_TOPIC or PRICES_TOPIC")
    skip.add_argument("--partition", required=True, type=int, help="the partition")
    skip.add_argument("--offset", required=True, type=int, help="the record to skip")
    skip.add_argument(
        "--reason", default="skipped by an operator", help="the dead letter's error header"
    )


def _add_views(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    positions = sub.add_parser(
        "positions", help="the agents' open positions: list them, close them by hand"
    )
    position_actions = positions.add_subparsers(
        dest="positions_command", required=True, metavar="ACTION"
    )
    listed = position_actions.add_parser(
        "list",
        help="open positions: entry, latest price and its age, unrealised P/L, the stop "
        "loss and the next take-profit level in force",
        description="Open positions per agent: entry price, the latest price and its age, "
        "unrealised P/L at it (before a sale's fees, take-profit returns included), the "
        "stop loss and the next take-profit level the worker's exits use now. Read-only.",
    )
    options.add_view_arguments(listed, "positions opened")
    command_options.add_positions_close(position_actions)
    trades = sub.add_parser("trades", help="the agents' closed trades")
    trade_actions = trades.add_subparsers(dest="trades_command", required=True, metavar="ACTION")
    closed = trade_actions.add_parser(
        "list",
        help="closed trades: entry, exit, P/L, close reason, hold time",
        description="Closed trades (full exits) per agent: entry and exit prices, P/L in "
        "SOL, USD and %, close reason, hold time, take-profit sales before the exit. "
        "Read-only.",
    )
    options.add_view_arguments(closed, "trades closed")


_COMMANDS = {
    "migrate": "worker.commands.migrate",
    "run": "worker.runtime.app",
    "publish": "worker.commands.publish",
    "publish-price": "worker.commands.publish:run_price",
    "seed-demo": "worker.commands.seed_demo",
    "check": "worker.commands.check",
    "demo": "worker.commands.demo",
    "agents": "worker.commands.agent_commands",
    "users": "worker.commands.agent_commands:run_users",
    "snapshot": "worker.commands.snapshot",
    "report": "worker.commands.report",
    "replay": "worker.commands.replay",
    "prices": "worker.commands.prices",
    "offsets": "worker.commands.offsets",
    "dlq": "worker.commands.dlq",
    "notify": "worker.commands.notify",
    "schema": "worker.commands.schema",
    "positions": "worker.commands.views:run_positions",
    "trades": "worker.commands.views:run_trades",
}


# The commands that run as services (the worker, the webhook poster) or as a deployment's
# step (the helm chart's migration Job): they wait for PostgreSQL and Kafka for
# STARTUP_TIMEOUT_S, as services starting beside them need. Every other command is run by a
# person: it waits at most `worker.retry.INTERACTIVE_WAIT_S` and fails at once on a host
# name that does not resolve.
WAITING_COMMANDS = frozenset({"run", "notify", "migrate"})


def _load(command: str) -> Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]:
    module_name, _, function = _COMMANDS[command].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        exit_missing(missing)
    return cast(_Command, getattr(module, function or "run"))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, validate settings, run the command; return the exit code."""
    try:
        try:
            code = _main(argv)
        except SystemExit as exc:  # argparse: --help, --version and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        sys.stdout.flush()  # here, where a closed stdout can still be handled quietly
    except BrokenPipeError:
        # stdout was closed early (`... | head`): stop quietly, as a shell tool does, and
        # keep Python from complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"signal-worker: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings)
    command = _load(args.command)
    set_interactive(args.command not in WAITING_COMMANDS)
    try:
        import uvloop  # optional speed-up, imported where the loop starts

        return uvloop.run(command(settings, args))
    except UsageError as exc:
        print(f"signal-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"signal-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        raise  # see `main`
    except SERVICE_ERRORS as exc:
        # A service failure no command translated: still one line, not a traceback.
        print(f"signal-worker {args.command}: {describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
