"""`dlq`'s command-line flags; light (parsed before any command module is imported)."""

from __future__ import annotations

import argparse

from worker.commands.options import positive_int, time_arg

DEFAULT_LIMIT = 100


def coordinates_arg(text: str) -> tuple[str, int, int]:
    """`topic:partition:offset` (a topic name holds no `:`)."""
    rest, _, offset = text.rpartition(":")
    topic, _, partition = rest.rpartition(":")
    if topic and partition.isdigit() and offset.isdigit():
        return topic, int(partition), int(offset)
    raise argparse.ArgumentTypeError(
        f"not topic:partition:offset (such as trading-signals:0:42): {text!r}"
    )


def dlq_place_arg(text: str) -> tuple[int, int]:
    """`partition:offset` of the DLQ topic."""
    partition, _, offset = text.partition(":")
    if partition.isdigit() and offset.isdigit():
        return int(partition), int(offset)
    raise argparse.ArgumentTypeError(
        f"not PARTITION:OFFSET of the DLQ topic (such as 0:17): {text!r}"
    )


def add_dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`dlq list|show|redrive` and their flags."""
    dlq = sub.add_parser("dlq", help="list, show and redrive the dead letters on DLQ_TOPIC")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="the dead letters: reason, original topic/partition/offset, time, first bytes",
    )
    listing.add_argument(
        "--topic",
        action="append",
        metavar="TOPIC",
        help="only the dead letters of this original topic (repeatable)",
    )
    listing.add_argument(
        "--since",
        type=time_arg,
        metavar="TIME",
        help="only those whose record is from this time on (ISO 8601)",
    )
    listing.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help="show at most N, oldest first (default: %(default)s)",
    )
    listing.add_argument(
        "--format", choices=("table", "json"), default="table", help="table (default) or json"
    )

    show = actions.add_parser("show", help="one dead letter whole: headers, value, reason")
    show.add_argument(
        "where",
        nargs="?",
        type=dlq_place_arg,
        metavar="PARTITION:OFFSET",
        help="its place on the DLQ topic",
    )
    show.add_argument(
        "--original",
        type=coordinates_arg,
        metavar="TOPIC:PARTITION:OFFSET",
        help="or the dead letter of this record, by its original coordinates",
    )
    show.add_argument(
        "--format", choices=("text", "json"), default="text", help="text (default) or json"
    )

    redrive = actions.add_parser(
        "redrive",
        help="send selected dead letters back to their original topic, once each",
        description="Sends each selected dead letter's key, value and own headers back to "
        "its original topic, once per original record (recorded in dlq_redrives). Each is "
        "first checked as the worker would check it (decoded; a signal's user must exist): "
        "one that would fail the same way is refused unless --force. Prints one line per "
        "dead letter and a summary; exits 1 when one was refused.",
    )
    redrive.add_argument(
        "--original",
        action="append",
        type=coordinates_arg,
        metavar="TOPIC:PARTITION:OFFSET",
        help="the dead letter of this record (repeatable)",
    )
    redrive.add_argument(
        "--reason-contains", metavar="TEXT", help="those whose reason contains TEXT (any case)"
    )
    redrive.add_argument("--all", action="store_true", help="every dead letter on the topic")
    redrive.add_argument(
        "--force",
        action="store_true",
        help="also send those that would fail the same way, and those whose "
        "earlier redrive was not confirmed (pending)",
    )
    redrive.add_argument(
        "--dry-run",
        action="store_true",
        help="check and say what would be done; send and write nothing",
    )
