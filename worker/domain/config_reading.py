"""A stored `trading_config` read: its text (or the fact that it is too large), decoded by
the worker's one JSON reader (`worker.domain.exact_json`), validated (`resolve_config`), and
the keys in it that this worker does not use. Never raises: whatever a stored row holds,
an invalid config comes back as its reason (`ConfigReading.error`).

Keys this worker does not know are ignored, as the source ignores them (its zod schemas
strip them), so a config that Nexgent itself writes is accepted; but unlike the source
they are not silent: `read_config` lists them, the worker logs and counts them once per
config, and `signal-worker agents lint` lists them per agent. So a typo such as
`minscore` is reported, not refused. The source's legacy key
`stopLoss.continuousTrailing` (which it deletes on read) is accepted without a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from worker.domain.config import (
    MAX_MESSAGE_CHARS,
    AgentTradingConfig,
    InvalidConfig,
    resolve_config,
)
from worker.domain.exact_json import JsonRefusedError, loads_exact

LEGACY_KEYS: Final = frozenset({"stopLoss.continuousTrailing"})


# The largest stored config (its JSON text, UTF-8) the worker reads, unless
# AGENT_CONFIG_MAX_BYTES says otherwise. Realistic configs are about 1 KB.
DEFAULT_MAX_CONFIG_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class OversizedConfig:
    """A stored `trading_config` larger than the cap, in place of its text: the database
    sends its size, never the text (`worker.db.agents`), so no stored row can take the
    worker's memory. It reads as an invalid config: the agent buys nothing (each
    execution `failed` with `reason`), its open positions keep the exit rules they were
    opened with."""

    size_bytes: int
    max_bytes: int

    @property
    def reason(self) -> str:
        """One sentence naming the size and the cap."""
        return (
            f"invalid trading_config: the stored config is {self.size_bytes:,} bytes, over "
            f"the {self.max_bytes:,}-byte cap (AGENT_CONFIG_MAX_BYTES)"
        )


# A stored config as the stores give it: its JSON text, NULL (None: the defaults), or
# the fact that it is too large to read.
StoredConfigText = str | OversizedConfig | None


def text_bytes(text: str) -> int:
    """The UTF-8 size of `text` in bytes (what PostgreSQL's `octet_length` counts)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def capped(text: StoredConfigText, max_bytes: int) -> StoredConfigText:
    """`text` as a store with the cap gives it: an `OversizedConfig` beyond `max_bytes`
    (for the stores that hold configs in memory; PostgreSQL does it in its query)."""
    if isinstance(text, str) and (size := text_bytes(text)) > max_bytes:
        return OversizedConfig(size, max_bytes)
    return text


@dataclass(frozen=True, slots=True)
class ConfigReading:
    """What one stored `trading_config` text says: the config, or why there is none (`error`,
    one sentence), and the keys in it that this worker does not use."""

    config: AgentTradingConfig | None
    error: str | None = None
    unknown_keys: tuple[str, ...] = ()
    legacy_keys: tuple[str, ...] = ()


def read_config(text: StoredConfigText) -> ConfigReading:
    """Decode and validate `agents.trading_config` as the database's JSON text (None: SQL
    NULL, all defaults; an `OversizedConfig`: invalid, with its reason). Never raises:
    whatever the text holds, an invalid config comes back as `error`."""
    if isinstance(text, OversizedConfig):
        return ConfigReading(None, text.reason)
    try:
        stored = decode_json(text)
        config = resolve_config(stored)
    except InvalidConfig as exc:
        return ConfigReading(None, str(exc))
    unknown, legacy = unknown_keys(stored)
    return ConfigReading(config, None, unknown, legacy)


def decode_json(text: str | None) -> object:
    """The JSON value of `text` by the worker's one set of rules (`worker.domain.exact_json`:
    exact numbers, no NaN, no key twice, bounded nesting); None for None; `InvalidConfig`
    for anything else."""
    if text is None:
        return None
    try:
        return loads_exact(text)
    except JsonRefusedError as exc:
        raise InvalidConfig(f"invalid trading_config: {exc}") from exc


def unknown_keys(stored: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys of a stored config that no model field reads: (unknown, legacy), as paths
    such as `signals.minscore` or `takeProfit.levels[1].target`."""
    found: list[str] = []
    if isinstance(stored, Mapping):
        _walk_keys(AgentTradingConfig, stored, "", found)
    unknown = tuple(path for path in found if path not in LEGACY_KEYS)
    legacy = tuple(path for path in found if path in LEGACY_KEYS)
    return unknown, legacy


def _walk_keys(
    model: type[BaseModel], stored: Mapping[Any, Any], prefix: str, found: list[str]
) -> None:
    fields: dict[str, FieldInfo] = {}
    for name, field_info in model.model_fields.items():
        fields[name] = field_info
        if field_info.alias:
            fields[field_info.alias] = field_info
    for key, value in stored.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        info = fields.get(key)
        if info is None:
            found.append(path[:MAX_MESSAGE_CHARS])
            continue
        inner = _model_of(info.annotation)
        if inner is None:
            continue
        if isinstance(value, Mapping):
            _walk_keys(inner, value, path, found)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    _walk_keys(inner, item, f"{path}[{index}]", found)


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The model a field holds (itself, or as the items of a tuple), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
