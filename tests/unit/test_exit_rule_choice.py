"""Which rules exit a position (`worker.domain.exit_rules.exit_config`): the agent's config
in force while valid, else the rules the position was opened with, else the agent's last
valid config, else the defaults."""

from __future__ import annotations

from worker.domain.config import resolve_config
from worker.domain.config_reading import ConfigReading
from worker.domain.exit_rules import (
    DEFAULT_EXIT_CONFIG,
    ExitRulesSource,
    exit_config,
    last_valid_config,
)

CURRENT = resolve_config({"stopLoss": {"defaultPercentage": -10}})
OPENING = resolve_config({"stopLoss": {"defaultPercentage": -20}})
STALE_OFF = resolve_config({"staleTrade": {"enabled": False}})


def test_a_valid_config_in_force_decides() -> None:
    assert exit_config(CURRENT, OPENING, STALE_OFF) == (CURRENT, ExitRulesSource.CONFIG)


def test_an_invalid_config_leaves_the_opening_rules() -> None:
    assert exit_config(None, OPENING, STALE_OFF) == (OPENING, ExitRulesSource.OPENING_RULES)


def test_without_opening_rules_the_last_valid_config_decides_not_the_defaults() -> None:
    # A position opened before rule sets were kept, its agent's stale-trade closes turned
    # off and then its config broken: stale-trade stays off.
    cfg, source = exit_config(None, None, STALE_OFF)
    assert (cfg, source) == (STALE_OFF, ExitRulesSource.LAST_VALID)
    assert not cfg.stale_trade.enabled


def test_without_any_valid_config_the_defaults_decide() -> None:
    assert exit_config(None, None, None) == (DEFAULT_EXIT_CONFIG, ExitRulesSource.DEFAULTS)


def test_the_last_valid_config_is_the_newest_valid_reading() -> None:
    invalid = ConfigReading(None, "invalid trading_config: ...")
    readings = [invalid, ConfigReading(STALE_OFF), invalid, ConfigReading(OPENING)]
    assert last_valid_config(readings) == STALE_OFF
    assert last_valid_config([invalid]) is None
    assert last_valid_config([]) is None
