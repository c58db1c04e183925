"""`python -m worker <command>` and the `signal-worker` console script.

Builds `Settings`, configures logging, then runs the command. Every failure a user can
cause (a bad setting, an unreachable service, a bad argument) ends in one line on stderr
and a non-zero exit, never a traceback: 2 for a bad setting or usage, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, cast

import asyncpg
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from worker.errors import UsageError, WorkerError
from worker.logging import configure_logging
from worker.retry import describe
from worker.settings import Settings, describe_error, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Command(Protocol):
    def __call__(
        self, settings: Settings, args: argparse.Namespace
    ) -> Coroutine[Any, Any, int]: ...


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signal-worker",
        description="Trading signals from Kafka to simulated trades in PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = sub.add_parser("migrate", help="apply pending schema/*.sql files")
    migrate.add_argument("--dry-run", action="store_true", help="list what would run")
    migrate.add_argument(
        "--schema-dir", help="folder of the NNNN_name.sql files (default: the bundled schema/)"
    )

    sub.add_parser("run", help="consume signals and prices until SIGTERM/SIGINT")

    publish = sub.add_parser("publish", help="publish signals to the signals topic")
    publish.add_argument(
        "--file", help="JSON lines to publish ('-' for stdin); without it, one signal from flags"
    )
    publish.add_argument("--user-id")
    publish.add_argument("--token-address")
    publish.add_argument("--signal-type", default="Velocity (Dex Boost Detection)")
    publish.add_argument("--signal-strength", type=int, default=3)
    publish.add_argument("--symbol")
    publish.add_argument("--price-usd")
    publish.add_argument("--idempotency-key")
    publish.add_argument("--source", default="cli")

    seed = sub.add_parser("seed-demo", help="create a demo user with funded simulation agents")
    seed.add_argument(
        "--if-empty", action="store_true", help="only when the database has no users yet"
    )
    sub.add_parser("check", help="verify the ledger invariants; exit 1 listing violations")
    sub.add_parser("snapshot", help="write this hour's balance snapshots now")
    _add_offsets(sub)
    schema = sub.add_parser("schema", help="write the JSON Schemas of the Kafka messages")
    schema.add_argument(
        "--out", metavar="DIR", help="folder to write them to (default: docs/schemas)"
    )
    return parser


def _add_offsets(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    offsets = sub.add_parser(
        "offsets", help="show or reset the consumer group's offsets (database and Kafka)"
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


_COMMANDS = {
    "migrate": "worker.commands.migrate",
    "run": "worker.app",
    "publish": "worker.commands.publish",
    "seed-demo": "worker.commands.seed_demo",
    "check": "worker.commands.check",
    "snapshot": "worker.commands.snapshot",
    "offsets": "worker.commands.offsets",
    "schema": "worker.commands.schema",
}


def _load(command: str) -> Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]:
    module = importlib.import_module(_COMMANDS[command])
    return cast(_Command, module.run)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, validate settings, run the command; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"signal-worker: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings)
    command = _load(args.command)
    try:
        import uvloop  # optional speed-up, imported where the loop starts

        return uvloop.run(command(settings, args))
    except UsageError as exc:
        print(f"signal-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"signal-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as exc:
        # A service failure no command translated: still one line, not a traceback.
        print(f"signal-worker {args.command}: {describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
