"""Validated agent configs, cached by content: a changed config is a new key, so it takes
effect on the next signal or tick that reads the agent, with no invalidation to get wrong.

Ticks read the configs of every agent holding the token; rather than carry each config's
JSON with every position on every tick, they carry the agents row's version and
`ConfigTexts` keeps the text by (agent, version): only agents new to the worker, or whose
row changed since, are read again.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable
from uuid import UUID

import orjson

from worker.domain.config import AgentTradingConfig, resolve_config


@functools.lru_cache(maxsize=8192)
def config_of_text(text: str | None) -> AgentTradingConfig:
    """The validated config of `trading_config` as the database's JSON text (None: NULL);
    raises `InvalidConfig` like `resolve_config` (failures are not cached)."""
    return resolve_config(None if text is None else orjson.loads(text))


class ConfigTexts:
    """Agents' `trading_config` JSON text by agent and row version, least recent dropped
    beyond `maxsize` agents."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._maxsize = maxsize
        self._texts: OrderedDict[UUID, tuple[str, str | None]] = OrderedDict()

    def stale(self, versions: Iterable[tuple[UUID, str]]) -> list[UUID]:
        """The agents whose text is not held at the given version."""
        missing: dict[UUID, None] = {}
        for agent_id, version in versions:
            held = self._texts.get(agent_id)
            if held is None or held[0] != version:
                missing[agent_id] = None
        return list(missing)

    def update(self, texts: dict[UUID, tuple[str, str | None]]) -> None:
        """Hold these (version, text) pairs."""
        for agent_id, pair in texts.items():
            self._texts[agent_id] = pair
            self._texts.move_to_end(agent_id)
        while len(self._texts) > self._maxsize:
            self._texts.popitem(last=False)

    def text(self, agent_id: UUID) -> str | None:
        """The held text of `agent_id` (None for a NULL config); KeyError if not held."""
        return self._texts[agent_id][1]
