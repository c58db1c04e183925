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

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

import asyncpg

from worker.errors import InvalidMessage
from worker.retry import describe, is_transient, transient_retry
from worker.settings import Settings

_T = TypeVar("_T")


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


class StopRequested(Exception):  # noqa: N818 - a condition, not a failure
    """The stop event cut a batch short: nothing of it was stored, the next owner redoes it."""


class Watch(Protocol):
    """Who is told what waits on server trouble (`worker.pipeline.telemetry.Troubles`)."""

    def retrying(self, key: str, exc: BaseException, what: str) -> None: ...

    def cleared(self, key: str) -> None: ...


class Retrier:
    """Runs a unit of work of the pipeline, retried on server trouble (`RETRY`)."""

    def __init__(self, settings: Settings, interrupt: asyncio.Event, watch: Watch) -> None:
        self._settings = settings
        self._interrupt = interrupt
        self._watch = watch

    async def __call__(
        self, key: str, what: Callable[[], str], work: Callable[[], Awaitable[_T]]
    ) -> _T:
        """`work()`, retried on server trouble (by default until it passes) with backoff
        that yields to a stop signal and to a rebalance (`StopRequested`: nothing of it was
        stored); meanwhile the retry lines, `/readyz` and the metrics say what waits
        (`what()`, built only when a retry comes), and why."""
        policy = transient_retry(
            attempts=self._settings.retry_max_attempts,
            max_delay_s=self._settings.retry_max_delay_s,
            backoff_max_s=self._settings.retry_backoff_max_s,
            stop=self._interrupt,
            on_retry=lambda exc: self._watch.retrying(key, exc, what()),
            what=what,
        )
        try:
            async for attempt in policy:
                with attempt:
                    return await work()
        except Exception as exc:  # the failure policy decides
            if self._interrupt.is_set() and is_transient(exc):
                raise StopRequested(f"retries cut short: {describe(exc)}") from exc
            raise
        finally:
            self._watch.cleared(key)
        raise AssertionError("unreachable")  # pragma: no cover


async def until_stopped(work: Awaitable[_T], stop: asyncio.Event, grace_s: float) -> _T:
    """`work`, or once `stop` is set and `grace_s` has passed without it finishing, its
    cancellation (`StopRequested`)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_s)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise StopRequested("the batch in flight did not finish in the drain time")
        return task.result()
    finally:
        stopping.cancel()
