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
from dataclasses import dataclass
from uuid import UUID

from worker.domain.config import ConfigReading, config_of_exit_rules, read_config


@functools.lru_cache(maxsize=8192)
def config_of_text(text: str | None) -> ConfigReading:
    """`read_config` of `trading_config` as the database's JSON text (None: NULL), cached by
    the text: invalid configs too, so a hostile one costs its decoding once."""
    return read_config(text)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """An agent's stored config that is invalid (`error`) or holds keys this worker ignores."""

    agent_id: UUID
    error: str | None
    unknown_keys: tuple[str, ...]


def problem_of(agent_id: UUID, reading: ConfigReading) -> ConfigProblem | None:
    """The problem of this agent's config as read, if it has one."""
    if reading.config is not None and not reading.unknown_keys:
        return None
    return ConfigProblem(agent_id, reading.error, reading.unknown_keys)


@functools.lru_cache(maxsize=4096)
def config_of_rules(text: str | None) -> ConfigReading:
    """`config_of_exit_rules`, cached: rule sets are immutable (content-addressed)."""
    return config_of_exit_rules(text)


class ConfigTexts:
    """Agents' `trading_config` JSON text by agent and row version, least recent dropped
    beyond `maxsize` agents; and the exit rule sets that positions were opened with, by id
    (immutable, so held until dropped as least recent)."""

    def __init__(self, maxsize: int = 100_000, rules_maxsize: int = 10_000) -> None:
        self._maxsize = maxsize
        self._texts: OrderedDict[UUID, tuple[str, str | None]] = OrderedDict()
        self._rules_maxsize = rules_maxsize
        self._rules: OrderedDict[UUID, str] = OrderedDict()

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

    def missing_rules(self, ids: Iterable[UUID]) -> list[UUID]:
        """The rule set ids among `ids` not held."""
        return [rule_id for rule_id in dict.fromkeys(ids) if rule_id not in self._rules]

    def update_rules(self, rules: dict[UUID, str]) -> None:
        """Hold these rule sets (JSON text by id)."""
        for rule_id, text in rules.items():
            self._rules[rule_id] = text
            self._rules.move_to_end(rule_id)
        while len(self._rules) > self._rules_maxsize:
            self._rules.popitem(last=False)

    def rules_text(self, rule_id: UUID | None) -> str | None:
        """The held rule set's JSON (None when there is none: the defaults apply)."""
        return None if rule_id is None else self._rules.get(rule_id)
