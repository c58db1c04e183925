"""The failure policy: the one place that decides what a failure means for the records.

As FastStream's acknowledgement policy maps a handler's exception to ack, nack or reject in
one middleware, `disposition` maps an exception, in the scope where it happened, to one of:

- `RETRY`: the server's trouble, not the record's (the table `SERVER_SQLSTATES` in
  `worker.retry`: connection loss, a lock or statement timeout, a full disk, a read-only
  database, serialization failure, deadlock, a broker away): retry the unit of work with
  backoff until it passes (`worker.retry`), in every scope; never dead-lettered.
- `ISOLATE`: a batch's transaction failed for a reason that is not transient: redo it one
  record at a time (a savepoint each), so only the record at fault is dead-lettered.
- `DEAD_LETTER`: the record can never be processed: send it to the DLQ with `kind` (the
  metric label) and `reason`, and move on.
- `ABANDON`: the stop signal or a rebalance came while the work was retrying: give it up,
  store nothing (the next owner of the partitions, or this worker, redoes it).
- `FATAL`: not ours to handle (a cancellation, an interpreter exit; retries that ran out
  where `RETRY_MAX_ATTEMPTS` / `RETRY_MAX_DELAY_S` set a limit):
  stop the worker (exit 1), without storing an offset past the failed work.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import asyncpg

from worker.errors import InvalidMessage
from worker.retry import describe, is_transient


class Scope(Enum):
    """Where a failure happened."""

    RECORD = "record"  # decoding one record, or applying it alone
    BATCH = "batch"  # a transaction over a chunk of records
    LANE = "lane"  # a lane whose retries ended (ran out, or a stop signal or rebalance came)


class Action(Enum):
    """What to do about it."""

    RETRY = "retry"
    ISOLATE = "isolate"
    DEAD_LETTER = "dead_letter"
    ABANDON = "abandon"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Disposition:
    """The decision: the action, and for a dead letter its kind and reason."""

    action: Action
    kind: str | None = None
    reason: str | None = None


RETRY = Disposition(Action.RETRY)
ISOLATE = Disposition(Action.ISOLATE)
ABANDON = Disposition(Action.ABANDON)
FATAL = Disposition(Action.FATAL)


def disposition(exc: BaseException, scope: Scope, *, stopping: bool = False) -> Disposition:
    """What `exc`, raised in `scope`, means; `stopping` when the stop signal (or a
    rebalance) has come."""
    if not isinstance(exc, Exception):
        return FATAL  # cancellation, KeyboardInterrupt, SystemExit: never swallowed
    if scope is Scope.LANE:
        return ABANDON if stopping and is_transient(exc) else FATAL
    if isinstance(exc, InvalidMessage):
        return Disposition(Action.DEAD_LETTER, "invalid", str(exc))
    if is_transient(exc):
        return RETRY
    if scope is Scope.BATCH:
        return ISOLATE
    if isinstance(exc, asyncpg.PostgresError):
        return Disposition(Action.DEAD_LETTER, "database", f"database rejected it: {describe(exc)}")
    return Disposition(Action.DEAD_LETTER, "unexpected", f"unexpected error: {describe(exc)}")
