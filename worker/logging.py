"""structlog configuration: JSON lines by default, console rendering for humans."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from worker.settings import Settings, mask_dsn

_SECRET_KEYS = frozenset({"password", "sasl_password", "kafka_sasl_password", "secret"})


def _mask_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Never let a password reach a log line: mask DSNs and secret-named keys."""
    for key, value in event.items():
        if key in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(value, str) and ("://" in value or "password=" in value):
            event[key] = mask_dsn(value)
    return event


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the standard library's logging once, from the settings."""
    level = logging.getLevelName(settings.log_level)
    renderer: structlog.types.Processor
    if settings.log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        tracebacks: list[structlog.types.Processor] = []
    else:
        renderer = structlog.processors.JSONRenderer()
        tracebacks = [structlog.processors.dict_tracebacks]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiokafka logs through the standard library; keep it at WARNING and on stderr.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(message)s")
    logging.getLogger("aiokafka").setLevel(max(level, logging.ERROR))
