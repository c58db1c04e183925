"""What is worth retrying (`SERVER_SQLSTATES`, `server_trouble`), and how (tenacity policies)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

log = structlog.get_logger(__name__)

# The errors of the services the worker talks to (the one definition of the tuple):
# here, beneath both `worker.db` and `worker.pipeline`, which catch them.
SERVICE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection left in a confused protocol state (seen after a server restart: "cannot
    # switch to state ...; another operation is in progress"): the connection's, not a row's.
    asyncpg.exceptions._base.InternalClientError,
    KafkaError,
)


# What a failure says about the server, not about the record: the one table. A key is a
# full SQLSTATE or its two-character class; the value is the cause, the label of the
# metrics and `/readyz`. Every error here is retried (with backoff, yielding to SIGTERM and
# to a rebalance), never dead-lettered: the same record goes through once the server is
# well again. What is not here (data exceptions 22, integrity constraints 23, ...) is the
# record's own fault. `tests/unit/test_failures.py` has a case for each row.
SERVER_SQLSTATES: dict[str, str | None] = {
    "08": "connection",  # connection exceptions
    "25006": "read_only",  # read_only_sql_transaction: a standby, default_transaction_read_only
    "25P03": "idle_in_transaction_timeout",
    "40": "transaction_rollback",  # the class: statement completion unknown, ...
    "40002": None,  # a deferred constraint at commit: the record's, like class 23
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "42501": "insufficient_privilege",  # a grant revoked under the worker: the operator's
    "53": "insufficient_resources",  # the class: out of memory, configuration limits
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "55": "object_not_in_prerequisite_state",  # the class: object in use, ...
    "55P03": "lock_not_available",  # lock_timeout, NOWAIT
    "57": "operator_intervention",  # the class
    "57014": "query_canceled",  # statement_timeout, pg_cancel_backend
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "57P05": "idle_session_timeout",
    "58": "system_error",  # the class: I/O errors, files missing or duplicated
    "F0": "config_file_error",
    "XX": "internal_error",  # the class: data or index corrupted, internal errors
}
# The same for what is not a PostgreSQL error: the client side of the services. Kafka's
# errors are the broker's trouble when aiokafka marks them retriable (a leader moving, a
# request timing out) or when they are the connection's; the others (a record refused for
# its timestamp or size, credentials or a certificate refused) are not retried.
_SERVER_TYPES: tuple[tuple[type[BaseException], str], ...] = (
    (asyncpg.exceptions.InterfaceError, "connection"),  # the connection closed under a query
    (asyncpg.exceptions._base.InternalClientError, "connection"),  # its protocol state lost
    (KafkaConnectionError, "kafka"),
    (KafkaTimeoutError, "kafka"),
    (KafkaUnavailableError, "kafka"),
    (TimeoutError, "timeout"),  # asyncpg's command_timeout, a bounded wait
    (MemoryError, "out_of_memory"),
    (OSError, "connection"),  # ConnectionError and the socket errors under both clients
)
# Subclasses of the types above that are the record's (or the caller's) fault after all.
_NOT_SERVER_TYPES: tuple[type[BaseException], ...] = (
    asyncpg.exceptions._base.DataError,  # a query argument asyncpg cannot encode
    ssl.SSLCertVerificationError,  # a certificate the CA file did not sign: never passes
)


def server_trouble(exc: BaseException) -> str | None:
    """The cause when `exc` says the server (PostgreSQL, Kafka, the network, this host) is
    in trouble, not the record: worth retrying; None otherwise."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state in SERVER_SQLSTATES:
            return SERVER_SQLSTATES[state]
        return SERVER_SQLSTATES.get(state[:2])
    if isinstance(exc, _NOT_SERVER_TYPES):
        return None
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return "kafka"
    for kind, cause in _SERVER_TYPES:
        if isinstance(exc, kind):
            return cause
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on their own (`server_trouble`)."""
    return server_trouble(exc) is not None


def _log_retry(
    state: RetryCallState,
    waiting: str | None = None,
    progress: dict[str, float] | None = None,
) -> None:
    exc = state.outcome.exception() if state.outcome else None
    cause = (server_trouble(exc) if exc else None) or "unknown"
    # Repeats of one cause are said once per interval with a count (`worker.runtime.logging`).
    log.warning(
        "retrying_after_transient_error",
        cause=cause,
        attempt=state.attempt_number,
        error=describe(exc) if exc else None,
        sleep_s=round(state.next_action.sleep, 3) if state.next_action else None,
        **({"waiting": waiting} if waiting is not None else {}),
        **(progress or {}),
    )
    if _on_retry is not None:
        _on_retry(cause)


_on_retry: Callable[[str], None] | None = None


def set_retry_observer(observer: Callable[[str], None] | None) -> None:
    """Install a callback run on every retry with its cause (the metrics counter)."""
    global _on_retry  # one process-wide observer, set at start-up
    _on_retry = observer


def transient_retry(
    *,
    attempts: int = 5,
    max_delay_s: float = 60.0,
    backoff_max_s: float = 5.0,
    stop: asyncio.Event | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    what: Callable[[], str] | None = None,
) -> AsyncRetrying:
    """Retry a whole unit of work on server trouble, with exponential backoff and jitter
    up to `backoff_max_s` between attempts, for at most `attempts` attempts and
    `max_delay_s` seconds (0: no limit; the last error is raised when they run out).

    With `stop`, a set event ends the retries at once: a backoff sleep wakes when it is set,
    and no further attempt starts (the last error is raised, as when retries run out).
    `on_retry` is told of each failure that will be retried, before the sleep; `what`
    names the work in the retry line (called only on a retry: the happy path builds no
    description).
    """
    ends: Any = stop_never
    if attempts:
        ends = ends | stop_after_attempt(attempts)
    if max_delay_s:
        ends = ends | stop_after_delay(max_delay_s)
    wait = wait_exponential_jitter(multiplier=0.2, max=backoff_max_s, jitter=0.2)

    last: list[BaseException] = []  # the error a stop during the backoff sleep re-raises

    def before_sleep(state: RetryCallState) -> None:
        _log_retry(state, what() if what is not None else None)
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            last[:] = [exc]
            if on_retry is not None:
                on_retry(exc)

    if stop is None:
        return AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=ends,
            wait=wait,
            reraise=True,
            before_sleep=before_sleep,
        )
    event = stop

    async def sleep_unless_stopped(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        if event.is_set() and last:
            raise last[0]  # no further attempt: the unit of work is given up

    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=lambda state: event.is_set() or ends(state),
        wait=wait,
        sleep=sleep_unless_stopped,
        reraise=True,
        before_sleep=before_sleep,
    )


# The commands a person runs at a terminal (everything but `run`, `notify` and `migrate`, see
# `worker.__main__`) wait for a service at most this long (or STARTUP_TIMEOUT_S if it is
# shorter), and a host name that does not resolve fails them at once: a person at a terminal
# wants to hear "is it running?" now, not after 30 s; 3 s still rides out a service that is
# restarting (a local PostgreSQL or Kafka takes about a second to listen again).
INTERACTIVE_WAIT_S = 3.0
_interactive = False


def set_interactive(interactive: bool) -> None:
    """Make start-up waits those of a command a person runs (`INTERACTIVE_WAIT_S`, names that
    do not resolve not retried) or of a service (`STARTUP_TIMEOUT_S`, everything retried)."""
    global _interactive  # one process, one kind of command: set once by `worker.__main__`
    _interactive = interactive


def startup_wait_s(timeout_s: float) -> float:
    """How long a start-up connection waits: `timeout_s` (STARTUP_TIMEOUT_S), or at most
    `INTERACTIVE_WAIT_S` in a command a person runs."""
    return min(timeout_s, INTERACTIVE_WAIT_S) if _interactive else timeout_s


MIN_ATTEMPT_S = 1.0


class StartupClock:
    """The deadline of a start-up connection (`startup_wait_s`), for bounding each attempt:
    a host that accepts and never answers (or drops packets) would otherwise hold one
    attempt for its whole connect or request timeout (10 s, 30 s) past the deadline."""

    __slots__ = ("deadline", "started")

    def __init__(self, timeout_s: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + startup_wait_s(timeout_s)

    def attempt_s(self, limit: float) -> float:
        """How long the next attempt may take: `limit`, or what is left before the
        deadline (at least `MIN_ATTEMPT_S`, so the last attempt is a real one)."""
        return min(limit, max(MIN_ATTEMPT_S, self.deadline - time.monotonic()))

    def waited_s(self) -> float:
        return time.monotonic() - self.started


def is_unresolvable(exc: BaseException) -> bool:
    """True when the resolver answered that a host name does not exist (not a temporary
    resolver failure, EAI_AGAIN, which is retried)."""
    names = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    return isinstance(exc, socket.gaierror) and exc.errno in names


def startup_retry(
    timeout_s: float, *, service: str | None = None, progress: bool = False
) -> AsyncRetrying:
    """Retry connecting to `service` for `startup_wait_s(timeout_s)` seconds.

    The wait is a deadline: the backoff sleeps end at it and the last attempt starts there
    (STARTUP_TIMEOUT_S=5 gives up after about 5 s, not 5 s plus a backoff). With `progress`
    (a process starting, not a reconnect in a loop that runs for hours) each retry is a line
    of its own (`retrying_after_transient_error` with `waited_s` and `timeout_s`); else one
    a minute, as every repeated retry line. In a command a person runs a host name that does
    not resolve is not retried.
    """
    wait_s = startup_wait_s(timeout_s)
    started = time.monotonic()
    backoff = wait_exponential_jitter(multiplier=0.5, max=3.0, jitter=0.5)

    def retried(exc: BaseException) -> bool:
        return is_transient(exc) and not (_interactive and is_unresolvable(exc))

    def until_deadline(state: RetryCallState) -> float:
        return max(0.0, min(backoff(state), started + wait_s - time.monotonic()))

    def log(state: RetryCallState) -> None:
        waited = {"waited_s": round(time.monotonic() - started, 1), "timeout_s": wait_s}
        _log_retry(state, service, progress=waited if progress else None)

    return AsyncRetrying(
        retry=retry_if_exception(retried),
        stop=lambda _state: time.monotonic() - started >= wait_s,
        wait=until_deadline,
        reraise=True,
        before_sleep=log,
    )


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def unreachable_hint(
    service: str, variable: str, hosts: list[str], exc: BaseException, waited_s: float
) -> str:
    """What a person can do about `exc`, raised connecting to `service` at `hosts`
    (host:port, set by `variable`) after waiting `waited_s`: for a name that does not
    resolve, a refused connection or a timeout; `describe(exc)` for anything else."""
    if is_unresolvable(exc):
        name = hosts[0].rpartition(":")[0] or hosts[0]
        return f"the host name {name!r} does not resolve (check {variable})"
    where = ", ".join(hosts)
    if isinstance(exc, ConnectionRefusedError):
        local = all(h.rpartition(":")[0] in _LOCAL_HOSTS for h in hosts)
        start = "`make services` starts local ones; else " if local else ""
        return (
            f"nothing listens at {where} (connection refused, for {int(waited_s)}s): is "
            f"{service} running there? ({start}check {variable})"
        )
    if isinstance(exc, TimeoutError):
        return (
            f"no answer from {where} (for {int(waited_s)}s): a firewall, or the wrong host or "
            f"port? (check {variable})"
        )
    return describe(exc)


def describe(exc: BaseException) -> str:
    """A short human description of an exception for one-line error messages."""
    name = type(exc).__name__
    # aiokafka's errors put their own class name in str(); keep the message only.
    raw = str(exc.args[0]) if isinstance(exc, KafkaError) and exc.args else str(exc)
    text = raw.strip().splitlines()[0] if raw.strip() else ""
    text = text.removeprefix(f"{name}: ").removeprefix(f"[Error {getattr(exc, 'errno', '')}] ")
    return f"{name}: {text}" if text and text != name else name


__all__ = [
    "INTERACTIVE_WAIT_S",
    "AsyncRetrying",
    "describe",
    "is_transient",
    "is_unresolvable",
    "server_trouble",
    "set_interactive",
    "set_retry_observer",
    "startup_retry",
    "startup_wait_s",
    "transient_retry",
    "unreachable_hint",
]
