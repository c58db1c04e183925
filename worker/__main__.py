"""`python -m worker <command>` and the `signal-worker` console script.

Builds `Settings`, configures logging, then runs the command. Every failure a user can
cause (a bad setting, an unreachable service, a bad argument) ends in one line on stderr
and a non-zero exit, never a traceback: 2 for a bad setting or usage, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

from pydantic import ValidationError

from worker.errors import UsageError, WorkerError
from worker.logging import configure_logging
from worker.settings import Settings, describe_error, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Command(Protocol):
    def __call__(self, settings: Settings, args: argparse.Namespace) -> Awaitable[int]: ...


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
    return parser


_COMMANDS = {
    "migrate": "worker.commands.migrate",
    "run": "worker.app",
    "publish": "worker.commands.publish",
    "seed-demo": "worker.commands.seed_demo",
    "check": "worker.commands.check",
    "snapshot": "worker.commands.snapshot",
}


def _load(command: str) -> Callable[[Settings, argparse.Namespace], Awaitable[int]]:
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
        import uvloop  # noqa: PLC0415 - optional speed-up, imported where the loop starts

        return uvloop.run(command(settings, args))
    except UsageError as exc:
        print(f"signal-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"signal-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
