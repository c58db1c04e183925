"""structlog configuration: console lines for a person at a terminal, JSON lines otherwise.

`LOG_FORMAT=auto` (the default) renders for a person when stderr is a terminal and as one
JSON object a line everywhere else (containers, CI, pipes, files); `json` and `console`
force one. Lines of libraries that log through the standard library (aiokafka, asyncpg) go
through the same processors, so a stream is never a mix of both.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
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
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
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
