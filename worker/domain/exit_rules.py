"""The exit rules a position is opened with.

A position keeps the exit sections of the config its buy was decided with (stored once per
distinct set, content-addressed, `exit_rule_sets`). Ticks use the agent's current config
while it is valid (a change applies to open positions, as in the source); when it is not,
they use these, so no position is ever left without its stop loss, take profit, DCA or
stale close.

A position without stored rules (opened before `schema/0004`, or by another writer), or
whose stored set no longer validates, takes its agent's last valid config instead: the
latest version of the agent's settings before the one in force (`agent_config_history`)
whose config is valid, among the `EARLIER_VERSIONS_LIMIT` before it. That is what the
source would be using (its API refuses an invalid config, so the last valid one stays in
force), and it keeps the user's choices: a position whose agent turned stale-trade closes
off is not closed as stale because a later edit broke the config. Only when no such version
exists (the agent's config was never valid since its history began) the defaults apply.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from worker.domain.config import AgentTradingConfig
from worker.domain.config_reading import ConfigReading, read_config

_EXIT_SECTIONS = ("stopLoss", "takeProfit", "dca", "staleTrade")
_EXIT_RULES_NAMESPACE = uuid.UUID("0b6c54f6-6a43-4c3b-9df4-4c1f5c2f0e51")


@dataclass(frozen=True, slots=True)
class ExitRules:
    """The exit sections of a config as canonical JSON, and the id derived from them."""

    id: uuid.UUID
    json: str


def exit_rules(cfg: AgentTradingConfig) -> ExitRules:
    """The exit sections of `cfg` (stop loss, take profit, DCA, stale trade) as canonical
    JSON, with a content-derived id: the same rules always get the same id."""
    dumped = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps({k: dumped[k] for k in _EXIT_SECTIONS}, sort_keys=True, separators=(",", ":"))
    return ExitRules(uuid.uuid5(_EXIT_RULES_NAMESPACE, text), text)


def config_of_exit_rules(text: str | None) -> ConfigReading:
    """The config that exits use for a position opened with these rules (None: opened
    before rules were kept, so the defaults); the other sections are the defaults."""
    reading = read_config(text)
    if reading.config is None:
        return reading
    return ConfigReading(
        AgentTradingConfig().model_copy(
            update={
                "stop_loss": reading.config.stop_loss,
                "take_profit": reading.config.take_profit,
                "dca": reading.config.dca,
                "stale_trade": reading.config.stale_trade,
            }
        )
    )


# How many versions before the one in force are searched for the last valid config.
EARLIER_VERSIONS_LIMIT: Final = 50


class ExitRulesSource(StrEnum):
    """Where the rules exiting a position come from (`exit_config`)."""

    CONFIG = "config"  # the agent's config in force
    OPENING_RULES = "opening rules"  # the exit rules the position was opened with
    LAST_VALID = "last valid config"  # the agent's last valid config before the one in force
    DEFAULTS = "defaults"  # none of these (no stored rules, never a valid config)


# The rules of a position whose agent's config is invalid and that has no valid stored set.
DEFAULT_EXIT_CONFIG: Final = AgentTradingConfig()


def exit_config(
    current: AgentTradingConfig | None,
    opening: AgentTradingConfig | None,
    last_valid: AgentTradingConfig | None = None,
) -> tuple[AgentTradingConfig, ExitRulesSource]:
    """The config that exits a position: its agent's config in force while that is valid
    (`current`), else the rules it was opened with (`opening`, `config_of_exit_rules`; None
    when absent or no longer valid), else the agent's last valid config before the one in
    force (`last_valid`, `last_valid_config`), else the defaults; and which it is."""
    if current is not None:
        return current, ExitRulesSource.CONFIG
    if opening is not None:
        return opening, ExitRulesSource.OPENING_RULES
    if last_valid is not None:
        return last_valid, ExitRulesSource.LAST_VALID
    return DEFAULT_EXIT_CONFIG, ExitRulesSource.DEFAULTS


def last_valid_config(earlier: Iterable[ConfigReading]) -> AgentTradingConfig | None:
    """The first valid config among `earlier` (the readings of the versions before the one
    in force, newest first), or None."""
    return next((r.config for r in earlier if r.config is not None), None)
