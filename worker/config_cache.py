"""Validated agent configs, cached by content: a changed config is a new key, so it takes
effect on the next signal or tick that reads the agent, with no invalidation to get wrong."""

from __future__ import annotations

import functools

import orjson

from worker.domain.config import AgentTradingConfig, resolve_config


@functools.lru_cache(maxsize=8192)
def _config_from_json(text: bytes) -> AgentTradingConfig:
    return resolve_config(orjson.loads(text))


@functools.lru_cache(maxsize=8192)
def config_of_text(text: str | None) -> AgentTradingConfig:
    """The validated config of `trading_config` as the database's JSON text (None: NULL)."""
    return resolve_config(None if text is None else orjson.loads(text))


def config_of(stored: object) -> AgentTradingConfig:
    """The validated config of a stored `trading_config`; raises `InvalidConfig` like
    `resolve_config` (failures are not cached)."""
    return _config_from_json(orjson.dumps(stored, option=orjson.OPT_SORT_KEYS))
