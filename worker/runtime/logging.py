"""structlog configuration: console lines for a person at a terminal, JSON lines otherwise.

`LOG_FORMAT=auto` (the default) renders for a person when stderr is a terminal and as one
JSON object a line everywhere else (containers, CI, pipes, files); `json` and `console`
force one. Lines of libraries that log through the standard library (aiokafka, asyncpg) go
through the same processors, so a stream is never a mix of both.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, MutableMapping
from typing import Any

import structlog

from worker.settings import Settings, mask_dsn

_SECRET_KEYS = frozenset(
    {"password", "sasl_password", "sasl_plain_password", "kafka_sasl_password", "secret"}
)
_HANDLER_NAME = "signal-worker"


def _mask_value(value: object) -> object:
    if isinstance(value, str):
        return mask_dsn(value) if ("://" in value or "password=" in value) else value
    if isinstance(value, Mapping):
        return {k: "***" if k in _SECRET_KEYS else _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def _mask_secrets(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Never let a password reach a log line: mask DSNs (nested too) and secret-named keys."""
    for key, value in event.items():
        if key in _SECRET_KEYS:
            event[key] = "***"
        elif not key.startswith("_"):  # `_record` and friends of the stdlib bridge
            event[key] = _mask_value(value)
    return event


class _RetriedKafkaErrors(logging.Filter):
    """aiokafka logs some errors that it retries by itself at ERROR, such as an offset
    lookup on a partition whose leader is not elected yet (right after the worker creates
    its topics, or during a leader change). They are transient: logged as warnings."""

    RETRIED = (
        "NotLeaderForPartitionError",
        "LeaderNotAvailableError",
        "UnknownTopicOrPartitionError",
        # A new broker's group coordinator is not ready yet: an ordinary start-up state.
        "GroupCoordinatorNotAvailableError",
        "CoordinatorNotAvailableError",
        "NotCoordinatorForGroupError",
        "CoordinatorLoadInProgressError",
        "not found in cluster metadata",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.name.startswith("aiokafka")
            and record.levelno == logging.ERROR
            and any(name in record.getMessage() for name in self.RETRIED)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# A condition that lasts (an outage, a lock held for minutes) is said once per interval, with
# the count of the lines it stood for: the state itself is in `/readyz` and the metrics.
REPEAT_INTERVAL_S = 60.0
# The worker's own lines that a lasting condition repeats (keyed by event, cause and what
# waits: a stalled batch is named once a minute, each one apart); every
# other line of the worker names a record, an agent or a batch, and is always written.
REPEATED_EVENTS = frozenset(
    {
        "retrying_after_transient_error",
        "kafka_commit_failed",
        "snapshots_failed",
        "price_history_upkeep_failed",
        "price_history_upkeep_postponed",
        "signals_not_held_longer",
        "topic_recheck_failed",
    }
)


class Repeats:
    """Per key, the first line of each `interval_s` is written and the rest counted; the
    next line written says how many were left out (`repeated`) and over how long."""

    def __init__(
        self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # the standard library logs from threads too
        # Per key: when its interval started, and the lines left out since.
        self._seen: dict[Hashable, tuple[float, int]] = {}

    @property
    def interval_s(self) -> float:
        """How long one key stays quiet after a line is written."""
        return self._interval_s

    def admit(self, key: Hashable) -> int | None:
        """None: leave this line out; else write it, with the number left out before it."""
        now = self._clock()
        with self._lock:
            started, left_out = self._seen.get(key, (None, 0))
            if started is not None and now - started < self._interval_s:
                self._seen[key] = (started, left_out + 1)
                return None
            if len(self._seen) > 10_000:  # keys are few; never let them grow without end
                self._seen.clear()
            self._seen[key] = (now, 0)
            return left_out


def _repeats_processor(repeats: Repeats) -> structlog.types.Processor:
    def throttle(
        _logger: object, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = event.get("event")
        # A start-up wait's progress (`worker.retry.startup_retry`: a line per retry, with
        # `timeout_s`) is bounded by its deadline: every line is written.
        if name not in REPEATED_EVENTS or "timeout_s" in event:
            return event
        key = (name, event.get("cause"), event.get("level"), event.get("waiting"))
        left_out = repeats.admit(key)
        if left_out is None:
            raise structlog.DropEvent
        if left_out:
            event["repeated"] = left_out
            event["repeated_over_s"] = repeats.interval_s
        return event

    return throttle


class _RepeatedLibraryLines(logging.Filter):
    """The libraries' warnings and errors (aiokafka's, during a broker outage, thousands a
    minute) by (logger, level, message template): once per interval, with a count."""

    def __init__(self, repeats: Repeats) -> None:
        super().__init__()
        self._repeats = repeats

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        left_out = self._repeats.admit((record.name, record.levelno, str(record.msg)))
        if left_out is None:
            return False
        if left_out:
            record.repeated = left_out
        return True


def _add_repeated(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    left_out = getattr(record, "repeated", None)
    if left_out:
        event["repeated"] = left_out
        event["repeated_over_s"] = REPEAT_INTERVAL_S
    return event


def is_console(settings: Settings) -> bool:
    """True when lines are rendered for a person: `console`, or `auto` on a terminal."""
    if settings.log_format == "auto":
        return sys.stderr.isatty()
    return settings.log_format == "console"


def _renderer(settings: Settings) -> tuple[list[structlog.types.Processor], Any]:
    """The traceback processors and the final renderer for `settings.log_format`."""
    if is_console(settings):
        # No local variables in tracebacks: they hold DSNs and passwords (rich shows them).
        console = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        return [], console
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    return [tracebacks], structlog.processors.JSONRenderer()


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the standard library's logging once, from the settings.

    Lines of libraries that log through the standard library (aiokafka, asyncpg) go
    through the same processors and renderer, so stderr is all JSON lines (or all console).
    """
    level = logging.getLevelName(settings.log_level)
    tracebacks, renderer = _renderer(settings)
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    repeats = Repeats()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            _repeats_processor(repeats),
            *tracebacks,
            _mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_RetriedKafkaErrors())
    handler.addFilter(_RepeatedLibraryLines(repeats))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _add_repeated],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                _mask_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    # aiokafka logs through the standard library; keep it quiet unless something is wrong.
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("aiokafka").setLevel(max(level, logging.ERROR))
