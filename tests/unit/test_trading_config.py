"""`agents.trading_config`: defaults, deep merge, validation messages and templates."""

from __future__ import annotations

import copy
import json
import typing
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from worker.domain.config import (
    DEFAULT_TRADING_CONFIG,
    AgentTradingConfig,
    DcaLevel,
    DcaMode,
    InvalidConfig,
    StopLossMode,
    TakeProfitLevel,
    TakeProfitMode,
    TokenFilterMode,
    dca_levels,
    deep_merge,
    resolve_config,
    take_profit_levels,
)
from worker.domain.config_reading import _model_of, decode_json, read_config
from worker.domain.exit_rules import config_of_exit_rules, exit_rules

MINT = "So11111111111111111111111111111111111111112"


def tp(target: int, sell: int) -> TakeProfitLevel:
    return TakeProfitLevel(target_percent=Decimal(target), sell_percent=Decimal(sell))


def dca(drop: int, buy: int) -> DcaLevel:
    return DcaLevel(drop_percent=Decimal(drop), buy_percent=Decimal(buy))


# --- defaults ---------------------------------------------------------------------------


def test_none_gives_the_documented_defaults() -> None:
    cfg = resolve_config(None)
    assert cfg.purchase_limits.minimum_agent_balance == Decimal("0.5")
    assert cfg.purchase_limits.max_purchase_per_token == Decimal(2)
    assert cfg.purchase_limits.max_price_impact == Decimal("0.05")
    assert cfg.purchase_limits.max_open_positions == 25
    assert cfg.signals.min_score == 1
    assert cfg.signals.allowed_signal_types == ()
    assert cfg.signals.token_filter_mode is TokenFilterMode.NONE
    assert cfg.signals.market_cap_min is None
    assert cfg.stop_loss.enabled is True
    assert cfg.stop_loss.default_percentage == Decimal(-32)
    assert cfg.stop_loss.mode is StopLossMode.FIXED
    thresholds = cfg.position_calculator.sol_balance_thresholds
    assert (thresholds.minimum, thresholds.medium, thresholds.large) == (
        Decimal("0.2"),
        Decimal(5),
        Decimal(10),
    )
    sizes = cfg.position_calculator.position_sizes
    assert (sizes.small.min, sizes.small.max) == (Decimal("0.1"), Decimal("0.1"))
    assert (sizes.medium.min, sizes.medium.max) == (Decimal("0.5"), Decimal(1))
    assert (sizes.large.min, sizes.large.max) == (Decimal("1.5"), Decimal(2))
    assert cfg.position_calculator.randomization.enabled is True
    assert cfg.stale_trade.enabled is True
    assert cfg.stale_trade.min_hold_time_minutes == 60
    assert (cfg.stale_trade.min_profit_percent, cfg.stale_trade.max_profit_percent) == (
        Decimal(1),
        Decimal(10),
    )
    assert cfg.dca.enabled is False
    assert cfg.dca.mode is DcaMode.MODERATE
    assert (cfg.dca.max_dca_count, cfg.dca.cooldown_seconds) == (3, Decimal(30))
    assert cfg.take_profit.enabled is False
    assert cfg.take_profit.mode is TakeProfitMode.MODERATE
    assert cfg.take_profit.levels == (tp(50, 25), tp(150, 25), tp(300, 25), tp(400, 15))
    bag = cfg.take_profit.moon_bag
    assert (bag.enabled, bag.trigger_percent, bag.retain_percent) == (
        True,
        Decimal(300),
        Decimal(10),
    )


def test_model_defaults_match_the_json_defaults() -> None:
    assert resolve_config(None) == AgentTradingConfig() == resolve_config({})


def test_json_numbers_become_exact_decimals() -> None:
    cfg = resolve_config({"purchaseLimits": {"minimumAgentBalance": 0.1}})
    assert cfg.purchase_limits.minimum_agent_balance == Decimal("0.1")
    assert isinstance(cfg.position_calculator.sol_balance_thresholds.minimum, Decimal)


def test_decimal_strings_are_accepted() -> None:
    cfg = resolve_config({"purchaseLimits": {"maxPurchasePerToken": "1.25"}})
    assert cfg.purchase_limits.max_purchase_per_token == Decimal("1.25")


def test_config_is_frozen() -> None:
    cfg = resolve_config(None)
    with pytest.raises(ValidationError):
        cfg.signals.min_score = 3  # type: ignore[misc]  # frozen on purpose: proving it


def test_snake_case_names_are_accepted_too() -> None:
    cfg = AgentTradingConfig.model_validate({"signals": {"min_score": 4}})
    assert cfg.signals.min_score == 4


def test_the_defaults_are_the_documented_ones_all_the_way_down() -> None:
    # domain.md section 4, written out independently of the models (plus this worker's
    # maxOpenPositions): a default changed in one nested model shows up here.
    assert DEFAULT_TRADING_CONFIG == {
        "purchaseLimits": {
            "minimumAgentBalance": "0.5",
            "maxPurchasePerToken": "2.0",
            "maxPriceImpact": "0.05",
            "maxOpenPositions": 25,
        },
        "signals": {
            "minScore": 1,
            "allowedSignalTypes": [],
            "tokenFilterMode": "none",
            "tokenList": [],
        },
        "stopLoss": {
            "enabled": True,
            "defaultPercentage": "-32",
            "mode": "fixed",
            "trailingLevels": [],
        },
        "positionCalculator": {
            "solBalanceThresholds": {"minimum": "0.2", "medium": "5", "large": "10"},
            "positionSizes": {
                "small": {"min": "0.1", "max": "0.1"},
                "medium": {"min": "0.5", "max": "1.0"},
                "large": {"min": "1.5", "max": "2.0"},
            },
            "randomization": {"enabled": True},
        },
        "staleTrade": {
            "enabled": True,
            "minHoldTimeMinutes": "60",
            "minProfitPercent": "1",
            "maxProfitPercent": "10",
        },
        "dca": {
            "enabled": False,
            "mode": "moderate",
            "levels": [],
            "maxDCACount": 3,
            "cooldownSeconds": "30",
        },
        "takeProfit": {
            "enabled": False,
            "mode": "moderate",
            "levels": [
                {"targetPercent": "50", "sellPercent": "25"},
                {"targetPercent": "150", "sellPercent": "25"},
                {"targetPercent": "300", "sellPercent": "25"},
                {"targetPercent": "400", "sellPercent": "15"},
            ],
            "moonBag": {"enabled": True, "triggerPercent": "300", "retainPercent": "10"},
        },
    }
    # And the model read from nothing is the model read from its own defaults.
    assert resolve_config(None) == AgentTradingConfig.model_validate(DEFAULT_TRADING_CONFIG)


def test_serializes_back_to_camel_case() -> None:
    dumped = resolve_config(None).model_dump(mode="json")
    assert set(dumped) == set(DEFAULT_TRADING_CONFIG)
    assert dumped["dca"]["maxDCACount"] == 3
    assert resolve_config(dumped) == resolve_config(None)


# --- deep merge -------------------------------------------------------------------------


def test_deep_merge_merges_objects_recursively() -> None:
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": 4}
    assert deep_merge(base, {"a": {"c": {"d": 20}}}) == {
        "a": {"b": 1, "c": {"d": 20, "e": 3}},
        "f": 4,
    }


def test_deep_merge_replaces_arrays() -> None:
    assert deep_merge({"levels": [1, 2, 3]}, {"levels": [9]}) == {"levels": [9]}
    assert deep_merge({"levels": [1, 2, 3]}, {"levels": []}) == {"levels": []}


def test_deep_merge_null_keeps_the_default() -> None:
    base = {"a": {"b": 1}, "c": 2}
    assert deep_merge(base, {"a": None, "c": None}) == base
    assert deep_merge(base, {"a": {"b": None}}) == base
    assert deep_merge(base, {"new": None}) == base


def test_deep_merge_adds_new_keys_and_replaces_scalars_by_objects() -> None:
    assert deep_merge({"a": 1}, {"a": {"x": None, "y": 2}, "b": 3}) == {"a": {"y": 2}, "b": 3}


def test_deep_merge_never_mutates_or_aliases_its_inputs() -> None:
    before = copy.deepcopy(DEFAULT_TRADING_CONFIG)
    override: dict[str, Any] = {"takeProfit": {"levels": [{"targetPercent": 10, "sellPercent": 5}]}}
    merged = deep_merge(DEFAULT_TRADING_CONFIG, override)
    merged["takeProfit"]["moonBag"]["enabled"] = False
    merged["takeProfit"]["levels"].append({})
    merged["signals"]["tokenList"].append("x")
    assert before == DEFAULT_TRADING_CONFIG
    assert override == {"takeProfit": {"levels": [{"targetPercent": 10, "sellPercent": 5}]}}


def test_stored_overrides_are_merged_over_the_defaults() -> None:
    cfg = resolve_config(
        {
            "signals": {"minScore": 3, "marketCapMin": 100000},
            "positionCalculator": {"positionSizes": {"medium": {"max": 0.8}}},
        }
    )
    assert cfg.signals.min_score == 3
    assert cfg.signals.market_cap_min == Decimal(100000)
    assert cfg.position_calculator.position_sizes.medium.min == Decimal("0.5")
    assert cfg.position_calculator.position_sizes.medium.max == Decimal("0.8")
    assert cfg.stop_loss.default_percentage == Decimal(-32)


def test_null_bound_clears_it_and_null_section_resets_it() -> None:
    cfg = resolve_config({"signals": {"marketCapMin": None}, "stopLoss": None})
    assert cfg.signals.market_cap_min is None
    assert cfg.stop_loss == resolve_config(None).stop_loss


def test_max_open_positions_can_be_set() -> None:
    assert (
        resolve_config(
            {"purchaseLimits": {"maxOpenPositions": 3}}
        ).purchase_limits.max_open_positions
        == 3
    )


# --- validation -------------------------------------------------------------------------

_CUSTOM_TP = {"mode": "custom", "moonBag": {"enabled": False}}


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (
            {"signals": {"minScore": 6}},
            "signals.minScore: Input should be less than or equal to 5",
        ),
        (
            {"signals": {"minScore": 0}},
            "signals.minScore: Input should be greater than or equal to 1",
        ),
        (
            {"signals": {"minScore": 2.5}},
            "signals.minScore: Input should be a valid integer, "
            "got a number with a fractional part",
        ),
        (
            {"signals": {"minScore": True}},
            "signals.minScore: Input should be a valid integer, not a boolean",
        ),
        (
            {"signals": {"allowedSignalTypes": [""]}},
            "signals.allowedSignalTypes[0]: String should have at least 1 character",
        ),
        (
            {"signals": {"allowedSignalTypes": ["x" * 51]}},
            "signals.allowedSignalTypes[0]: String should have at most 50 characters",
        ),
        (
            {"signals": {"tokenFilterMode": "greylist"}},
            "signals.tokenFilterMode: Input should be 'none', 'blacklist' or 'whitelist'",
        ),
        (
            {"signals": {"tokenList": ["short"]}},
            "signals.tokenList[0]: String should have at least 32 characters",
        ),
        (
            {"signals": {"marketCapMin": 0}},
            "signals.marketCapMin: Input should be greater than 0",
        ),
        (
            {"signals": {"marketCapMin": 5000, "marketCapMax": 3000}},
            "signals: marketCapMin 5000 must be at most marketCapMax 3000",
        ),
        (
            {"signals": {"liquidityMin": 2, "liquidityMax": 1}},
            "signals: liquidityMin 2 must be at most liquidityMax 1",
        ),
        (
            {"signals": {"holderCountMin": 10, "holderCountMax": 9}},
            "signals: holderCountMin 10 must be at most holderCountMax 9",
        ),
        (
            {"signals": {"holderCountMin": -1}},
            "signals.holderCountMin: Input should be greater than or equal to 0",
        ),
        (
            {"purchaseLimits": {"minimumAgentBalance": 0.05}},
            "purchaseLimits.minimumAgentBalance: Input should be greater than or equal to 0.1",
        ),
        (
            {"purchaseLimits": {"maxPurchasePerToken": 0}},
            "purchaseLimits.maxPurchasePerToken: Input should be greater than 0",
        ),
        (
            {"purchaseLimits": {"maxPriceImpact": 1.5}},
            "purchaseLimits.maxPriceImpact: Input should be less than or equal to 1",
        ),
        (
            {"purchaseLimits": {"maxOpenPositions": 0}},
            "purchaseLimits.maxOpenPositions: Input should be greater than or equal to 1",
        ),
        (
            {"purchaseLimits": {"maxOpenPositions": 1001}},
            "purchaseLimits.maxOpenPositions: Input should be less than or equal to 1000",
        ),
        (
            {"stopLoss": {"defaultPercentage": 5}},
            "stopLoss.defaultPercentage: Input should be less than or equal to 0",
        ),
        (
            {"stopLoss": {"defaultPercentage": -101}},
            "stopLoss.defaultPercentage: Input should be greater than or equal to -100",
        ),
        (
            {"stopLoss": {"mode": "trailing"}},
            "stopLoss.mode: Input should be 'fixed', 'exponential', 'zones' or 'custom'",
        ),
        (
            {"stopLoss": {"enabled": "yes"}},
            "stopLoss.enabled: Input should be a valid boolean",
        ),
        (
            {"stopLoss": {"mode": "custom"}},
            "stopLoss: trailingLevels cannot be empty when mode is custom",
        ),
        (
            {
                "stopLoss": {
                    "mode": "custom",
                    "trailingLevels": [
                        {"change": 50, "stopLoss": 30},
                        {"change": 100, "stopLoss": 60},
                    ],
                }
            },
            "stopLoss: trailingLevels must be sorted by change, highest first, "
            "but level 1 has change 100 after 50",
        ),
        (
            {"stopLoss": {"trailingLevels": [{"change": 50, "stopLoss": 1001}]}},
            "stopLoss.trailingLevels[0].stopLoss: Input should be less than or equal to 1000",
        ),
        (
            {"stopLoss": {"trailingLevels": [{"change": 0, "stopLoss": 10}]}},
            "stopLoss.trailingLevels[0].change: Input should be greater than 0",
        ),
        (
            {"positionCalculator": {"solBalanceThresholds": {"medium": 12}}},
            "positionCalculator.solBalanceThresholds: thresholds must satisfy "
            "minimum < medium < large, got 0.2, 12 and 10",
        ),
        (
            {"positionCalculator": {"solBalanceThresholds": {"minimum": 0}}},
            "positionCalculator.solBalanceThresholds.minimum: Input should be greater than 0",
        ),
        (
            {"positionCalculator": {"positionSizes": {"large": {"min": 3}}}},
            "positionCalculator.positionSizes.large: min 3 must be at most max 2",
        ),
        (
            {"positionCalculator": {"positionSizes": {"small": {"min": -1}}}},
            "positionCalculator.positionSizes.small.min: "
            "Input should be greater than or equal to 0",
        ),
        (
            {"staleTrade": {"minHoldTimeMinutes": 0}},
            "staleTrade.minHoldTimeMinutes: Input should be greater than or equal to 1",
        ),
        (
            {"staleTrade": {"minProfitPercent": 5, "maxProfitPercent": -5}},
            "staleTrade: minProfitPercent 5 must be at most maxProfitPercent -5",
        ),
        (
            {"dca": {"maxDCACount": 11}},
            "dca.maxDCACount: Input should be less than or equal to 10",
        ),
        (
            {"dca": {"cooldownSeconds": 5}},
            "dca.cooldownSeconds: Input should be greater than or equal to 10",
        ),
        (
            {"dca": {"levels": [{"dropPercent": 5, "buyPercent": 50}]}},
            "dca.levels[0].dropPercent: Input should be less than or equal to -1",
        ),
        (
            {"dca": {"levels": [{"dropPercent": -10, "buyPercent": 501}]}},
            "dca.levels[0].buyPercent: Input should be less than or equal to 500",
        ),
        (
            {"dca": {"enabled": True, "mode": "custom"}},
            "dca: levels cannot be empty when mode is custom",
        ),
        (
            {
                "dca": {
                    "mode": "custom",
                    "levels": [
                        {"dropPercent": -30, "buyPercent": 50},
                        {"dropPercent": -20, "buyPercent": 50},
                    ],
                }
            },
            "dca: levels must be sorted by dropPercent, least negative first, "
            "but level 1 has -20 after -30",
        ),
        (
            {"takeProfit": {"levels": [{"targetPercent": 10, "sellPercent": 10}] * 11}},
            "takeProfit.levels: Tuple should have at most 10 items after validation, not 11",
        ),
        (
            {"takeProfit": {"levels": [{"targetPercent": 50, "sellPercent": 101}]}},
            "takeProfit.levels[0].sellPercent: Input should be less than or equal to 100",
        ),
        (
            {"takeProfit": {"moonBag": {"retainPercent": 51}}},
            "takeProfit.moonBag.retainPercent: Input should be less than or equal to 50",
        ),
        (
            {"takeProfit": {**_CUSTOM_TP, "levels": []}},
            "takeProfit: levels cannot be empty when mode is custom",
        ),
        (
            {
                "takeProfit": {
                    **_CUSTOM_TP,
                    "levels": [
                        {"targetPercent": 100, "sellPercent": 50},
                        {"targetPercent": 100, "sellPercent": 10},
                    ],
                }
            },
            "takeProfit: levels must be sorted by targetPercent, lowest first, "
            "but level 1 has 100 after 100",
        ),
        (
            {
                "takeProfit": {
                    "mode": "custom",
                    "levels": [
                        {"targetPercent": 100, "sellPercent": 50},
                        {"targetPercent": 300, "sellPercent": 45},
                    ],
                    "moonBag": {"enabled": True, "triggerPercent": 200, "retainPercent": 10},
                }
            },
            "takeProfit: levels sell 95% and the moon bag keeps 10%, 105% in all, more than 100%",
        ),
        (
            {
                "takeProfit": {
                    "mode": "custom",
                    "levels": [{"targetPercent": 100, "sellPercent": 50}],
                    "moonBag": {"enabled": True, "triggerPercent": 200, "retainPercent": 10},
                }
            },
            "takeProfit: moonBag.triggerPercent 200 is above the last level's targetPercent 100",
        ),
        (
            {"signals": []},
            "signals: Input should be a valid dictionary or instance of SignalFilters",
        ),
    ],
)
def test_rejects_invalid_config_with_one_sentence(stored: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        resolve_config(stored)
    assert str(caught.value) == f"invalid trading_config: {message}"
    assert "\n" not in str(caught.value)


def test_non_object_config_is_invalid() -> None:
    with pytest.raises(
        InvalidConfig, match=r"^invalid trading_config: expected a JSON object, got list$"
    ):
        resolve_config([1, 2])
    with pytest.raises(InvalidConfig, match="got str"):
        resolve_config('{"signals": {}}')


def test_counts_further_problems() -> None:
    with pytest.raises(InvalidConfig) as caught:
        resolve_config(
            {"signals": {"minScore": 9, "tokenFilterMode": "x"}, "dca": {"maxDCACount": 0}}
        )
    assert str(caught.value) == (
        "invalid trading_config: signals.minScore: Input should be less than or equal to 5 "
        "(and 2 more problems)"
    )


def test_unknown_keys_are_ignored_and_reported_legacy_keys_only_ignored() -> None:
    stored = {
        "signals": {"minscore": 3, "minScore": 2},
        "stopLoss": {"continuousTrailing": True, "trailingLevels": [{"change": 5,
                     "stopLoss": 1, "note": "x"}]},
        "extraSection": {"a": 1},
        "k" * 5000: 1,
    }  # fmt: skip
    reading = read_config(json.dumps(stored))
    assert reading.error is None
    assert reading.config is not None
    assert reading.config.signals.min_score == 2
    assert reading.unknown_keys == (
        "signals.minscore",
        "stopLoss.trailingLevels[0].note",
        "extraSection",
        "k" * 300,  # long keys are cut: a report never echoes a huge input
    )
    assert reading.legacy_keys == ("stopLoss.continuousTrailing",)
    assert resolve_config(stored) == reading.config


def test_a_config_nexgent_writes_is_accepted() -> None:
    # What the source's defaults look like once its UI has saved them, legacy key included.
    nexgent = copy.deepcopy(DEFAULT_TRADING_CONFIG)
    nexgent["stopLoss"]["continuousTrailing"] = False
    del nexgent["purchaseLimits"]["maxOpenPositions"]
    reading = read_config(json.dumps(nexgent))
    assert (reading.error, reading.unknown_keys) == (None, ())
    assert reading.config == resolve_config(None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
              "(char 1)"),
        # The reader every JSON input shares (`worker.domain.exact_json`).
        ("[" * 5000 + "]" * 5000, "not JSON this worker accepts: nested too deeply"),
        ('{"dca": {"maxDCACount": ' + "9" * 41 + "}}",
         "not JSON this worker accepts: a number with 41 digits is too long (at most 40 "
         "digits)"),
        ('{"purchaseLimits": {"maxPurchasePerToken": 1' + "0" * 400 + "}}",
         "not JSON this worker accepts: a number with 401 digits is too long (at most 40 "
         "digits)"),
        ('{"dca": {"cooldownSeconds": NaN}}',
         "not JSON this worker accepts: NaN is not a number this worker accepts"),
        ('{"dca": {"cooldownSeconds": 1e1000000000000000000}}',
         "not JSON this worker accepts: a number's exponent is too large"),
        ('{"dca": {"cooldownSeconds": 1, "cooldownSeconds": 2}}',
         "not JSON this worker accepts: the key 'cooldownSeconds' appears twice in one object"),
        ('{"purchaseLimits": {"maxPurchasePerToken": 1e400}}',
         "purchaseLimits.maxPurchasePerToken: Input should be less than or equal to "
         "1.7976931348623157E+308"),
        ('"a string"', "expected a JSON object, got str"),
    ],
)  # fmt: skip
def test_any_stored_text_reads_as_a_config_or_one_reason(text: str, reason: str) -> None:
    reading = read_config(text)
    assert (reading.config, reading.error) == (None, f"invalid trading_config: {reason}")


def test_every_number_of_the_config_has_finite_bounds() -> None:
    """A number without an upper bound could be 1e400 and fail deep in the arithmetic."""

    checked: list[str] = []

    def walk(model: type[BaseModel], path: str) -> list[str]:
        unbounded = []
        for name, info in model.model_fields.items():
            inner = _model_of(info.annotation)
            if inner is not None:
                unbounded += walk(inner, f"{path}.{name}")
                continue
            kinds = {info.annotation, *typing.get_args(info.annotation)}
            if kinds & {Decimal, int}:
                checked.append(name)
                has = {type(m).__name__ for m in info.metadata}
                if not ({"Lt", "Le"} & has and {"Gt", "Ge"} & has):
                    unbounded.append(f"{path}.{name}")
        return unbounded

    assert walk(AgentTradingConfig, "config") == []
    assert len(checked) >= 30  # the walk reached every section's numbers


def test_exit_rules_round_trip_and_are_content_addressed() -> None:
    cfg = resolve_config({"stopLoss": {"mode": "zones", "defaultPercentage": -20},
                          "signals": {"minScore": 5}})  # fmt: skip
    rules = exit_rules(cfg)
    assert rules == exit_rules(
        resolve_config({"stopLoss": {"mode": "zones", "defaultPercentage": -20}})
    )
    assert rules.id != exit_rules(resolve_config(None)).id
    back = config_of_exit_rules(rules.json).config
    assert back is not None
    assert (back.stop_loss, back.take_profit, back.dca, back.stale_trade) == (
        cfg.stop_loss,
        cfg.take_profit,
        cfg.dca,
        cfg.stale_trade,
    )
    assert back.signals == resolve_config(None).signals  # only the exit sections are kept
    assert config_of_exit_rules(None).config == resolve_config(None)


def test_invalid_config_is_a_value_error() -> None:
    assert issubclass(InvalidConfig, ValueError)


def test_custom_rules_do_not_apply_to_preset_modes() -> None:
    # The source validates take-profit levels only in custom mode; a preset uses its template.
    cfg = resolve_config(
        {
            "takeProfit": {
                "mode": "aggressive",
                "levels": [{"targetPercent": 50, "sellPercent": 100}] * 2,
            }
        }
    )
    assert take_profit_levels(cfg) == [tp(25, 25), tp(50, 25), tp(100, 25), tp(150, 15)]


def test_disabled_custom_stop_loss_and_dca_may_have_no_levels() -> None:
    cfg = resolve_config(
        {"stopLoss": {"enabled": False, "mode": "custom"}, "dca": {"mode": "custom"}}
    )
    assert cfg.stop_loss.trailing_levels == ()
    assert dca_levels(cfg) == []


def test_custom_levels_are_accepted_when_valid() -> None:
    cfg = resolve_config(
        {
            "stopLoss": {
                "mode": "custom",
                "trailingLevels": [
                    {"change": 200, "stopLoss": 150},
                    {"change": 50, "stopLoss": 20},
                ],
            },
            "dca": {
                "enabled": True,
                "mode": "custom",
                "levels": [
                    {"dropPercent": -15, "buyPercent": 50},
                    {"dropPercent": -15, "buyPercent": 80},
                ],
            },
            "takeProfit": {
                "enabled": True,
                "mode": "custom",
                "levels": [
                    {"targetPercent": 40, "sellPercent": 50},
                    {"targetPercent": 80, "sellPercent": 40},
                ],
                "moonBag": {"enabled": True, "triggerPercent": 80, "retainPercent": 10},
            },
        }
    )
    assert dca_levels(cfg) == [dca(-15, 50), dca(-15, 80)]
    assert take_profit_levels(cfg) == [tp(40, 50), tp(80, 40)]


# --- templates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "levels"),
    [
        ("aggressive", [dca(-10, 100), dca(-10, 100), dca(-10, 100)]),
        ("moderate", [dca(-20, 75), dca(-20, 75)]),
        ("conservative", [dca(-20, 100)]),
    ],
)
def test_dca_levels_come_from_the_mode_template(mode: str, levels: list[DcaLevel]) -> None:
    cfg = resolve_config(
        {"dca": {"mode": mode, "levels": [{"dropPercent": -50, "buyPercent": 10}]}}
    )
    assert dca_levels(cfg) == levels


@pytest.mark.parametrize(
    ("mode", "levels"),
    [
        ("aggressive", [tp(25, 25), tp(50, 25), tp(100, 25), tp(150, 15)]),
        ("moderate", [tp(50, 25), tp(150, 25), tp(300, 25), tp(400, 15)]),
        ("conservative", [tp(100, 20), tp(200, 20), tp(400, 25), tp(600, 20)]),
    ],
)
def test_take_profit_levels_follow_the_mode_not_the_stored_levels(
    mode: str, levels: list[TakeProfitLevel]
) -> None:
    cfg = resolve_config(
        {"takeProfit": {"mode": mode, "levels": [{"targetPercent": 10, "sellPercent": 10}]}}
    )
    assert take_profit_levels(cfg) == levels


def test_custom_take_profit_uses_the_stored_levels() -> None:
    cfg = resolve_config(
        {
            "takeProfit": {
                "mode": "custom",
                "levels": [{"targetPercent": 10, "sellPercent": 10}],
                "moonBag": {"enabled": False},
            }
        }
    )
    assert take_profit_levels(cfg) == [tp(10, 10)]


def test_token_list_accepts_mints() -> None:
    cfg = resolve_config({"signals": {"tokenFilterMode": "blacklist", "tokenList": [MINT]}})
    assert cfg.signals.token_list == (MINT,)


# --- boundaries of the validators and of the messages ---------------------------------------


@pytest.mark.parametrize(
    ("thresholds", "got"),
    [({"minimum": 5, "medium": 5}, "5, 5 and 10"), ({"medium": 10}, "0.2, 10 and 10")],
)
def test_balance_thresholds_must_strictly_increase(thresholds: dict[str, Any], got: str) -> None:
    reading = read_config(json.dumps({"positionCalculator": {"solBalanceThresholds": thresholds}}))
    assert reading.error == (
        "invalid trading_config: positionCalculator.solBalanceThresholds: thresholds must "
        f"satisfy minimum < medium < large, got {got}"
    )


def test_custom_trailing_levels_may_not_repeat_a_change() -> None:
    levels = [{"change": 50, "stopLoss": 20}, {"change": 50, "stopLoss": 10}]
    reading = read_config(json.dumps({"stopLoss": {"mode": "custom", "trailingLevels": levels}}))
    assert reading.error == (
        "invalid trading_config: stopLoss: trailingLevels must be sorted by change, highest "
        "first, but level 1 has change 50 after 50"
    )


@pytest.mark.parametrize(("sell", "error"), [("90", None), ("90.5", "100.5% in all")])
def test_custom_take_profit_may_sell_exactly_what_the_bag_leaves(
    sell: str, error: str | None
) -> None:
    text = (
        '{"takeProfit": {"enabled": true, "mode": "custom", "levels": [{"targetPercent": 50, '
        f'"sellPercent": {sell}}}], "moonBag": {{"enabled": true, "triggerPercent": 50, '
        '"retainPercent": 10}}}'
    )
    reading = read_config(text)
    if error is None:
        assert reading.error is None
    else:
        assert reading.error == (
            f"invalid trading_config: takeProfit: levels sell {sell}% and the moon bag keeps "
            f"10%, {error}, more than 100%"
        )


def test_one_further_problem_is_counted_in_the_singular() -> None:
    reading = read_config('{"signals": {"minScore": 9, "tokenFilterMode": "x"}}')
    assert reading.error == (
        "invalid trading_config: signals.minScore: Input should be less than or equal to 5 "
        "(and 1 more problem)"
    )


def _thresholds_text(minimum_zeros: int) -> str:
    """Thresholds out of order written with many digits: a long message of a known length."""
    z = "0" * 55
    return (
        f'{{"positionCalculator": {{"solBalanceThresholds": {{"minimum": 6.{"0" * minimum_zeros}1, '
        f'"medium": 5.{z}1, "large": 9.{z}1}}}}}}'
    )


def test_a_message_of_300_characters_is_kept_whole() -> None:
    error = read_config(_thresholds_text(55)).error
    assert error is not None
    assert len(error) == 300
    assert error.endswith(f"and 9.{'0' * 55}1")


def test_a_longer_message_is_cut_to_300_characters_with_an_ellipsis() -> None:
    # One digit more: 301 characters, cut to the first 297 and "...".
    whole = read_config(_thresholds_text(55)).error
    error = read_config(_thresholds_text(56)).error
    assert whole is not None
    assert error is not None
    assert len(error) == 300
    assert error == whole.replace("6.", "6.0", 1)[:297] + "..."


def test_whole_numbers_up_to_40_digits_are_ints_and_longer_ones_refused() -> None:
    short = decode_json("9" * 40)
    assert type(short) is int
    assert short == int("9" * 40)
    with pytest.raises(InvalidConfig, match="a number with 41 digits is too long"):
        decode_json("9" * 41)


def test_integers_of_40_digits_are_read_exactly() -> None:
    assert decode_json("-" + "9" * 40) == -int("9" * 40)
    assert decode_json("[" + "1" * 40 + "]") == [int("1" * 40)]


def test_the_default_exit_rules_keep_their_canonical_text_and_id() -> None:
    # Positions store the id: the canonical form (sorted keys, no spaces) must never drift.
    rules = exit_rules(resolve_config(None))
    assert rules.json == (
        '{"dca":{"cooldownSeconds":"30","enabled":false,"levels":[],"maxDCACount":3,'
        '"mode":"moderate"},"staleTrade":{"enabled":true,"maxProfitPercent":"10",'
        '"minHoldTimeMinutes":"60","minProfitPercent":"1"},"stopLoss":{"defaultPercentage":'
        '"-32","enabled":true,"mode":"fixed","trailingLevels":[]},"takeProfit":{"enabled":'
        'false,"levels":[{"sellPercent":"25","targetPercent":"50"},{"sellPercent":"25",'
        '"targetPercent":"150"},{"sellPercent":"25","targetPercent":"300"},{"sellPercent":'
        '"15","targetPercent":"400"}],"mode":"moderate","moonBag":{"enabled":true,'
        '"retainPercent":"10","triggerPercent":"300"}}}'
    )
    assert rules.id == uuid.UUID("c9b462b1-06c0-5978-91cd-ec823a76ea7f")


def test_exit_rules_bring_back_every_exit_section_and_nothing_else() -> None:
    stored = {
        "stopLoss": {"mode": "zones"},
        "takeProfit": {"enabled": True, "mode": "aggressive"},
        "dca": {"enabled": True, "mode": "conservative"},
        "staleTrade": {"minHoldTimeMinutes": 5},
        "signals": {"minScore": 5},
        "purchaseLimits": {"maxOpenPositions": 3},
    }
    cfg = resolve_config(stored)
    back = config_of_exit_rules(json.dumps(stored)).config
    assert back is not None
    assert (back.stop_loss, back.take_profit, back.dca, back.stale_trade) == (
        cfg.stop_loss,
        cfg.take_profit,
        cfg.dca,
        cfg.stale_trade,
    )
    assert back.signals == resolve_config(None).signals
    assert back.purchase_limits == resolve_config(None).purchase_limits
