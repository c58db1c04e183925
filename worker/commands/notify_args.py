"""`notify`'s command-line flags; light (parsed before any command module is imported)."""

from __future__ import annotations

import argparse
import math
from uuid import UUID

from worker.domain.notify import DEFAULT_EVENTS, EVENT_TYPES, FORMATS


def events_arg(text: str) -> frozenset[str]:
    """A comma list of event types, each one the worker publishes."""
    chosen = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(chosen - set(EVENT_TYPES))
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event type(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(EVENT_TYPES)}"
        )
    return chosen


def users_arg(text: str) -> list[UUID]:
    """A comma list of user ids."""
    try:
        return [UUID(u.strip()) for u in text.split(",") if u.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a user id (UUID): {text!r}") from None


def rate_arg(text: str) -> float:
    """Posts per second: more than 0, at most 1000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1000, not {text}")
    return value


def add_notify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`notify` and its flags."""
    notify = sub.add_parser(
        "notify",
        help="post chosen events of EVENTS_TOPIC to a webhook (Slack, Discord, Telegram), "
        "each once, until SIGTERM/SIGINT",
        description="Reads EVENTS_TOPIC and posts one line per chosen event to a webhook, "
        "each event once per webhook across restarts (progress in PostgreSQL). A webhook "
        "that fails (5xx, 429, no connection) is retried until it answers; a 4xx refusal is "
        "logged and the event skipped.",
    )
    notify.add_argument(
        "--url",
        help="the webhook (default: NOTIFY_WEBHOOK_URL, which keeps the secret out of the "
        "process list)",
    )
    notify.add_argument(
        "--events",
        type=events_arg,
        default=frozenset(DEFAULT_EVENTS),
        metavar="TYPES",
        help=f"comma list of event types (default: {','.join(DEFAULT_EVENTS)}; all: "
        f"{','.join(EVENT_TYPES)})",
    )
    notify.add_argument(
        "--format",
        choices=FORMATS,
        help="the body: slack {text}, discord {content}, telegram {chat_id, text} (default: "
        "from the URL; Slack's for an unknown host)",
    )
    notify.add_argument(
        "--user",
        type=users_arg,
        action="append",
        default=[],
        metavar="U",
        help="only this user's events (comma list or repeated; default: every user's)",
    )
    notify.add_argument(
        "--rate",
        type=rate_arg,
        default=1.0,
        metavar="N",
        help="at most N posts per second (token bucket, bursts of max(1, N); default: "
        "%(default)g, Slack's limit)",
    )
    notify.add_argument(
        "--start",
        choices=("latest", "earliest"),
        default="latest",
        help="where a webhook's first run starts: the end of the topic (events from now) or "
        "its first retained event; later runs go on from the stored offsets "
        "(default: %(default)s)",
    )
