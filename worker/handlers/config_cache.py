"""Validated agent configs, cached by content: a changed config is a new key, so it takes
effect on the next signal or tick that reads the agent, with no invalidation to get wrong.

Ticks read the configs of every agent holding the token; rather than carry each config's
JSON with every position on every tick, they read which versions of the agents' settings
are in force (`agent_config_history`, ids only) and `ConfigTexts` keeps the text by
version id (a version never changes): only versions new to the worker are read.

Every cache here is bounded in bytes, not in entries (`ByteBoundedCache`): a stored config
is at most AGENT_CONFIG_MAX_BYTES (the stores send an `OversizedConfig` instead of a larger
one), but many large ones must not add up either. The bounds, together at most 60 MiB:

- `READINGS_MAX_BYTES` (32 MiB): decoded configs by text. A reading weighs
  `READING_OVERHEAD` plus 4 bytes per byte of its text (measured: a decoded config takes
  about 13 KB plus 2.4 times its text; the text itself is the key);
- `RULE_READINGS_MAX_BYTES` (8 MiB): decoded exit rule sets, weighed alike;
- `ConfigTexts`: agents' texts (16 MiB) and exit rule sets' texts (4 MiB), each weighing
  its UTF-8 size plus `ENTRY_OVERHEAD`.

An entry heavier than its cache's bound is used and not held. What falls out is read or
decoded again when next needed: slower, never wrong.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from uuid import UUID

from worker.domain.config_reading import ConfigReading, StoredConfigText, read_config, text_bytes
from worker.domain.exit_rules import config_of_exit_rules

MIB = 1024 * 1024
READINGS_MAX_BYTES = 32 * MIB
RULE_READINGS_MAX_BYTES = 8 * MIB
TEXTS_MAX_BYTES = 16 * MIB
RULE_TEXTS_MAX_BYTES = 4 * MIB
READING_OVERHEAD = 16 * 1024  # a decoded config's objects, beyond its text
ENTRY_OVERHEAD = 256  # an entry's key, tuple and dict slot

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedCache(Generic[K, V]):
    """A least-recently-used cache whose entries' weights (bytes, given with each) never sum
    to more than `max_bytes`: the least recent are dropped to make room, and an entry
    heavier than the bound on its own is not held at all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value held for `key` (now the most recent), or None."""
        held = self._entries.get(key)
        if held is None:
            return None
        self._entries.move_to_end(key)
        return held[0]

    def peek(self, key: K) -> V | None:
        """The value held for `key`, leaving the order as it is."""
        held = self._entries.get(key)
        return None if held is None else held[0]

    def put(self, key: K, value: V, weight: int) -> None:
        """Hold `value` for `key` (the most recent), dropping the least recent beyond the
        bound; not held if it alone weighs more than the bound."""
        self.pop(key)
        if weight > self.max_bytes:
            return
        self._entries[key] = (value, weight)
        self.bytes += weight
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def pop(self, key: K) -> None:
        """Forget `key`, if held."""
        held = self._entries.pop(key, None)
        if held is not None:
            self.bytes -= held[1]


def _reading_weight(text: StoredConfigText) -> int:
    return READING_OVERHEAD + (4 * text_bytes(text) if isinstance(text, str) else 0)


def _text_weight(text: StoredConfigText) -> int:
    return ENTRY_OVERHEAD + (text_bytes(text) if isinstance(text, str) else 0)


_READINGS: ByteBoundedCache[StoredConfigText, ConfigReading] = ByteBoundedCache(READINGS_MAX_BYTES)
_RULE_READINGS: ByteBoundedCache[StoredConfigText, ConfigReading] = ByteBoundedCache(
    RULE_READINGS_MAX_BYTES
)


def config_of_text(text: StoredConfigText) -> ConfigReading:
    """`read_config` of `trading_config` as the database's JSON text (None: NULL; an
    `OversizedConfig`: invalid), cached by the text: invalid configs too, so a hostile one
    costs its decoding once."""
    reading = _READINGS.get(text)
    if reading is None:
        reading = read_config(text)
        _READINGS.put(text, reading, _reading_weight(text))
    return reading


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


def config_of_rules(text: str | None) -> ConfigReading:
    """`config_of_exit_rules`, cached: rule sets are immutable (content-addressed)."""
    reading = _RULE_READINGS.get(text)
    if reading is None:
        reading = config_of_exit_rules(text)
        _RULE_READINGS.put(text, reading, _reading_weight(text))
    return reading


LAST_VALID_MAX = 100_000


class ConfigTexts:
    """Agents' `trading_config` JSON text (or `OversizedConfig`) by version id
    (`agent_config_history`) and the exit rule sets that positions were opened with, by id
    (both immutable); each the least recent dropped beyond its bound in bytes (see the
    module's docstring)."""

    def __init__(
        self, max_bytes: int = TEXTS_MAX_BYTES, rules_max_bytes: int = RULE_TEXTS_MAX_BYTES
    ) -> None:
        self.texts: ByteBoundedCache[int, StoredConfigText] = ByteBoundedCache(max_bytes)
        self.rules: ByteBoundedCache[UUID, str] = ByteBoundedCache(rules_max_bytes)
        # For a version in force that is invalid: the id of the newest valid version before
        # it (None: none among those looked at). Fixed once known: versions are only ever
        # added after the ones there are (an agent's changes are decided in order).
        self.last_valid: dict[int, int | None] = {}

    def remember_last_valid(self, found: dict[int, int | None]) -> None:
        """Hold `found` (see `last_valid`); at most `LAST_VALID_MAX` versions, the whole
        map dropped beyond it (a few integers each: it is refilled by the next lookups)."""
        if len(self.last_valid) + len(found) > LAST_VALID_MAX:
            self.last_valid.clear()
        self.last_valid.update(found)

    def missing(self, version_ids: Iterable[int]) -> list[int]:
        """The versions among `version_ids` whose text is not held."""
        return [v for v in dict.fromkeys(version_ids) if v not in self.texts]

    def update(self, texts: dict[int, StoredConfigText]) -> None:
        """Hold these texts by version id."""
        for version_id, text in texts.items():
            self.texts.put(version_id, text, _text_weight(text))

    def text(self, version_id: int) -> StoredConfigText:
        """The held text of a version (None for a NULL config); KeyError if not held."""
        if version_id not in self.texts:
            raise KeyError(version_id)
        return self.texts.get(version_id)

    def missing_rules(self, ids: Iterable[UUID]) -> list[UUID]:
        """The rule set ids among `ids` not held."""
        return [rule_id for rule_id in dict.fromkeys(ids) if rule_id not in self.rules]

    def update_rules(self, rules: dict[UUID, str]) -> None:
        """Hold these rule sets (JSON text by id)."""
        for rule_id, text in rules.items():
            self.rules.put(rule_id, text, _text_weight(text))

    def rules_text(self, rule_id: UUID | None) -> str | None:
        """The held rule set's JSON (None when there is none: the defaults apply)."""
        return None if rule_id is None else self.rules.get(rule_id)
