"""tenacity policies and `is_transient()`: what is worth retrying, and how."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import structlog
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
)
from aiokafka.errors import RequestTimedOutError as KafkaRequestTimedOut
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

log = structlog.get_logger(__name__)

# SQLSTATEs that mean "do it again": serialization failure, deadlock, and the connection
# classes (08xxx), plus admin shutdown / cannot-connect-now while a server restarts.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "53300"})

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    KafkaRequestTimedOut,
)


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on their own: connection loss, 40001, deadlock, broker."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state in _TRANSIENT_SQLSTATES or state.startswith("08")
    return isinstance(exc, OSError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "retrying_after_transient_error",
        attempt=state.attempt_number,
        error=describe(exc) if exc else None,
        sleep_s=round(state.next_action.sleep, 3) if state.next_action else None,
    )
    if _on_retry is not None:
        _on_retry()


_on_retry: Callable[[], None] | None = None


def set_retry_observer(observer: Callable[[], None] | None) -> None:
    """Install a callback run on every retry (the metrics counter)."""
    global _on_retry  # one process-wide observer, set at start-up
    _on_retry = observer


def transient_retry(
    *, attempts: int = 5, max_delay_s: float = 60.0, stop: asyncio.Event | None = None
) -> AsyncRetrying:
    """Retry a whole unit of work on transient errors, with exponential backoff and jitter.

    With `stop`, a set event ends the retries at once: a backoff sleep wakes when it is set,
    and no further attempt starts (the last error is raised, as when retries run out).
    """
    ends = stop_after_attempt(attempts) | stop_after_delay(max_delay_s)
    if stop is None:
        return AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=ends,
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
            reraise=True,
            before_sleep=_log_retry,
        )
    event = stop

    async def sleep_unless_stopped(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=lambda state: event.is_set() or ends(state),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        sleep=sleep_unless_stopped,
        reraise=True,
        before_sleep=_log_retry,
    )


def startup_retry(timeout_s: float) -> AsyncRetrying:
    """Retry connecting to a service at start-up for at most `timeout_s` seconds."""
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(timeout_s),
        wait=wait_exponential_jitter(multiplier=0.5, max=3.0, jitter=0.5),
        reraise=True,
        before_sleep=_log_retry,
    )


def describe(exc: BaseException) -> str:
    """A short human description of an exception for one-line error messages."""
    name = type(exc).__name__
    # aiokafka's errors put their own class name in str(); keep the message only.
    raw = str(exc.args[0]) if isinstance(exc, KafkaError) and exc.args else str(exc)
    text = raw.strip().splitlines()[0] if raw.strip() else ""
    text = text.removeprefix(f"{name}: ").removeprefix(f"[Error {getattr(exc, 'errno', '')}] ")
    return f"{name}: {text}" if text and text != name else name


__all__ = [
    "AsyncRetrying",
    "describe",
    "is_transient",
    "set_retry_observer",
    "startup_retry",
    "transient_retry",
]
