"""An agent's trading configuration (`agents.trading_config` jsonb), validated.

The stored JSON uses the source system's camelCase keys (`domain.md` section 4); the models
expose snake_case attributes with those keys as aliases. `resolve_config` deep-merges the
stored JSON over `DEFAULT_TRADING_CONFIG` (objects merged, arrays replaced, an explicit
null meaning "use the default") and validates it with every rule of section 4, raising
`InvalidConfig` with one readable sentence.

Differences from the source system, on purpose:

- `purchaseLimits.maxOpenPositions` (int, 1..1000, default 25) is new: the source
  hard-codes 25.
- Keys this worker does not know are ignored, and reported (`worker.domain.config_reading`).
- Every number has finite bounds (beyond the source's, which has none above for most):
  a value must fit the column it reaches or the arithmetic it feeds, so a stored
  `1e400` is an invalid config with its reason, never an error deep in the pipeline.
  Where the source takes any number, the bound is the largest finite JavaScript number
  (`JS_NUMBER_MAX`: beyond it the source reads Infinity), and a value beyond what the
  arithmetic needs is clamped where that keeps the source's meaning:
  `purchaseLimits.maxPurchasePerToken` above 10^12 SOL is 10^12 (no size reaches it: "no
  cap", as written), `minimumAgentBalance` above 10^12 SOL is 10^12 (no balance reaches
  it: no buy). Settings only compared with a value are taken as they are: a custom
  stop-loss level's `change` (2e6 is a level no realistic gain reaches, as in the
  source), the stale-trade settings, the balance thresholds and the signal metric bounds.
  The position sizes stay below 10^12 SOL (the source takes any number): a size is drawn
  and bought, and a clamp would change the draw.
- `dca.maxDCACount` may be fractional, as the source's schema allows; the source compares
  `dcaCount >= maxDCACount`, so 2.5 allows 3 DCA buys: it is read as its ceiling (an
  integer from 1 to 10; 0.5 and 10.5 are refused, as there).
- The stored JSON text is decoded exactly, by the rules every JSON input follows
  (`worker.domain.exact_json`), and read without raising (`worker.domain.config_reading`);
  the exit sections a position was opened with are kept (`worker.domain.exit_rules`).
- Booleans must be JSON booleans and integers may not be booleans.
- Take-profit levels follow the mode, as DCA levels do (see `take_profit_levels`). The
  source always uses `takeProfit.levels`, whatever the mode: an agent set to `aggressive`
  in its UI kept selling at the moderate targets stored in `levels`. Its own schema
  documents `levels` as "used only in custom mode" and only validates them there, so a
  preset mode here uses its template; `takeProfit.moonBag` is used in every mode (the UI
  writes the preset's moon bag there when a preset is chosen).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from copy import deepcopy
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

from worker.domain.money import fmt

MAX_MESSAGE_CHARS = 300
# Upper bounds of the numbers of a config. A setting the source's schema takes as any
# number is bounded by the largest finite JavaScript number (Number.MAX_VALUE; beyond it
# the source reads Infinity): those only compared with a value need no other bound. A SOL
# setting that feeds the sizing arithmetic is clamped to SOL_LIMIT where that keeps its
# meaning (no balance, numeric(20,8), reaches it), else bounded by it: the position
# sizes, whose draw a clamp would change.
SOL_LIMIT = Decimal(10) ** 12
JS_NUMBER_MAX = Decimal("1.7976931348623157e308")
JS_INT_MAX = int(JS_NUMBER_MAX)  # an integer setting's bound (the source's `.int()`)
# Integers of a stored config longer than this are read as Decimal, not int.
# Keys of the source's configs that it deletes on read: accepted without a report.


class InvalidConfig(ValueError):  # noqa: N818 - the name the pipeline codes against
    """A stored trading_config that cannot be used; `str()` is one readable sentence."""


def _reject_bool(value: object) -> object:
    if isinstance(value, bool):
        msg = "Input should be a valid integer, not a boolean"
        raise ValueError(msg)  # noqa: TRY004
    return value


def _dca_count(value: object) -> object:
    """`dca.maxDCACount` given as a fractional number, as the source's schema allows, read
    as the integer the source's `dcaCount >= maxDCACount` test makes of it: its ceiling
    (2.5 -> 3); below 1 refused, as there. Integers, booleans, strings and non-finite
    numbers go on to the integer's own rules."""
    value = _reject_bool(value)
    if not (isinstance(value, Decimal | float) and math.isfinite(value)):
        return value
    number = float(value)  # the double the source's JSON reader makes of it
    if not math.isfinite(number) or value == int(value):
        return value
    if number != int(number):
        if number < 1:
            msg = "Input should be greater than or equal to 1"
            raise ValueError(msg)
        return math.ceil(number)
    # Fractional as written, whole as a double (2.0000000000000001 is 2 there).
    return int(number)


def _at_most_sol_limit(value: Decimal) -> Decimal:
    """A SOL cap above `SOL_LIMIT` read as `SOL_LIMIT`: no size reaches either."""
    return min(value, SOL_LIMIT)


Int = Annotated[int, BeforeValidator(_reject_bool)]
DcaCount = Annotated[int, BeforeValidator(_dca_count)]
SignalType = Annotated[str, StringConstraints(min_length=1, max_length=50)]
Mint = Annotated[str, StringConstraints(min_length=32, max_length=44)]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        allow_inf_nan=False,
    )


class TokenFilterMode(StrEnum):
    """How `signals.tokenList` filters mints."""

    NONE = "none"
    BLACKLIST = "blacklist"
    WHITELIST = "whitelist"


class StopLossMode(StrEnum):
    """The trailing stop-loss formula (`domain.md` section 6)."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    ZONES = "zones"
    CUSTOM = "custom"


class DcaMode(StrEnum):
    """A DCA template, or `custom` for `dca.levels`."""

    AGGRESSIVE = "aggressive"
    MODERATE = "moderate"
    CONSERVATIVE = "conservative"
    CUSTOM = "custom"


class TakeProfitMode(StrEnum):
    """A take-profit template, or `custom` for `takeProfit.levels`."""

    AGGRESSIVE = "aggressive"
    MODERATE = "moderate"
    CONSERVATIVE = "conservative"
    CUSTOM = "custom"


class PurchaseLimits(_Model):
    """`purchaseLimits`: SOL kept after a buy, the cap per buy, the open-position limit."""

    # Any number from 0.1, as in the source; above SOL_LIMIT clamped to it (no balance,
    # numeric(20,8), reaches either: the agent never buys).
    minimum_agent_balance: Annotated[Decimal, AfterValidator(_at_most_sol_limit)] = Field(
        Decimal("0.5"), alias="minimumAgentBalance", ge=Decimal("0.1"), le=JS_NUMBER_MAX
    )
    # Any positive number, as in the source; above SOL_LIMIT clamped to it ("no cap").
    max_purchase_per_token: Annotated[Decimal, AfterValidator(_at_most_sol_limit)] = Field(
        Decimal("2.0"), alias="maxPurchasePerToken", gt=0, le=JS_NUMBER_MAX
    )
    # A fraction (0.05 = 5%); simulated fills have no price impact, so it is only validated.
    max_price_impact: Decimal | None = Field(Decimal("0.05"), alias="maxPriceImpact", ge=0, le=1)
    max_open_positions: Int = Field(25, alias="maxOpenPositions", ge=1, le=1000)


def _check_bounds(
    low: Decimal | int | None, high: Decimal | int | None, low_name: str, high_name: str
) -> None:
    if low is not None and high is not None and low > high:
        msg = f"{low_name} {fmt(Decimal(low))} must be at most {high_name} {fmt(Decimal(high))}"
        raise ValueError(msg)


class SignalFilters(_Model):
    """`signals`: which signals an agent takes (strength, type, token, metric bounds in USD)."""

    min_score: Int = Field(1, alias="minScore", ge=1, le=5)
    allowed_signal_types: tuple[SignalType, ...] = Field((), alias="allowedSignalTypes")
    token_filter_mode: TokenFilterMode = Field(TokenFilterMode.NONE, alias="tokenFilterMode")
    token_list: tuple[Mint, ...] = Field((), alias="tokenList")
    market_cap_min: Decimal | None = Field(None, alias="marketCapMin", gt=0, le=JS_NUMBER_MAX)
    market_cap_max: Decimal | None = Field(None, alias="marketCapMax", gt=0, le=JS_NUMBER_MAX)
    liquidity_min: Decimal | None = Field(None, alias="liquidityMin", gt=0, le=JS_NUMBER_MAX)
    liquidity_max: Decimal | None = Field(None, alias="liquidityMax", gt=0, le=JS_NUMBER_MAX)
    holder_count_min: Int | None = Field(None, alias="holderCountMin", ge=0, le=JS_INT_MAX)
    holder_count_max: Int | None = Field(None, alias="holderCountMax", ge=0, le=JS_INT_MAX)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Self:
        _check_bounds(self.market_cap_min, self.market_cap_max, "marketCapMin", "marketCapMax")
        _check_bounds(self.liquidity_min, self.liquidity_max, "liquidityMin", "liquidityMax")
        _check_bounds(
            self.holder_count_min, self.holder_count_max, "holderCountMin", "holderCountMax"
        )
        return self


class TrailingLevel(_Model):
    """A custom stop-loss level: from `change`% gain on, the stop sits at +`stop_loss`%."""

    # Only compared with a gain: any positive number, as in the source.
    change: Decimal = Field(gt=0, le=JS_NUMBER_MAX)
    stop_loss: Decimal = Field(alias="stopLoss", gt=0, le=1000)


class StopLossConfig(_Model):
    """`stopLoss`: the initial stop (% from the average price) and the trailing mode."""

    enabled: StrictBool = True
    default_percentage: Decimal = Field(Decimal(-32), alias="defaultPercentage", ge=-100, le=0)
    mode: StopLossMode = StopLossMode.FIXED
    trailing_levels: tuple[TrailingLevel, ...] = Field((), alias="trailingLevels")

    @model_validator(mode="after")
    def _custom_levels(self) -> Self:
        if self.mode is not StopLossMode.CUSTOM:
            return self
        if self.enabled and not self.trailing_levels:
            msg = "trailingLevels cannot be empty when mode is custom"
            raise ValueError(msg)
        for index, (before, level) in enumerate(pairwise(self.trailing_levels), start=1):
            if level.change >= before.change:
                msg = (
                    f"trailingLevels must be sorted by change, highest first, "
                    f"but level {index} has change {fmt(level.change)} after {fmt(before.change)}"
                )
                raise ValueError(msg)
        return self


class SolBalanceThresholds(_Model):
    """SOL balance tiers: below `minimum` no buy; `medium` and `large` pick the size tier."""

    # Only compared with a balance: any positive number, as in the source.
    minimum: Decimal = Field(Decimal("0.2"), gt=0, le=JS_NUMBER_MAX)
    medium: Decimal = Field(Decimal(5), gt=0, le=JS_NUMBER_MAX)
    large: Decimal = Field(Decimal(10), gt=0, le=JS_NUMBER_MAX)

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        if not self.minimum < self.medium < self.large:
            msg = (
                f"thresholds must satisfy minimum < medium < large, got {fmt(self.minimum)}, "
                f"{fmt(self.medium)} and {fmt(self.large)}"
            )
            raise ValueError(msg)
        return self


class PositionSizeRange(_Model):
    """SOL per buy in one tier: uniform in [min, max), or max without randomization."""

    min: Decimal = Field(ge=0, lt=SOL_LIMIT)
    max: Decimal = Field(ge=0, lt=SOL_LIMIT)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_bounds(self.min, self.max, "min", "max")
        return self


class PositionSizes(_Model):
    """The size range of each SOL balance tier."""

    small: PositionSizeRange = PositionSizeRange(min=Decimal("0.1"), max=Decimal("0.1"))
    medium: PositionSizeRange = PositionSizeRange(min=Decimal("0.5"), max=Decimal("1.0"))
    large: PositionSizeRange = PositionSizeRange(min=Decimal("1.5"), max=Decimal("2.0"))


class Randomization(_Model):
    """Whether the size is drawn from [min, max) (deterministically per signal and agent)."""

    enabled: StrictBool = True


class PositionCalculator(_Model):
    """`positionCalculator`: tiers and sizes."""

    sol_balance_thresholds: SolBalanceThresholds = Field(
        SolBalanceThresholds(), alias="solBalanceThresholds"
    )
    position_sizes: PositionSizes = Field(PositionSizes(), alias="positionSizes")
    randomization: Randomization = Randomization()


class StaleTradeConfig(_Model):
    """`staleTrade`: close a position held >= min hold time whose gain% is within [min, max]."""

    enabled: StrictBool = True
    min_hold_time_minutes: Decimal = Field(
        Decimal(60), alias="minHoldTimeMinutes", ge=1, le=JS_NUMBER_MAX
    )
    min_profit_percent: Decimal = Field(
        Decimal(1), alias="minProfitPercent", ge=-JS_NUMBER_MAX, le=JS_NUMBER_MAX
    )
    max_profit_percent: Decimal = Field(
        Decimal(10), alias="maxProfitPercent", ge=-JS_NUMBER_MAX, le=JS_NUMBER_MAX
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_bounds(
            self.min_profit_percent, self.max_profit_percent, "minProfitPercent", "maxProfitPercent"
        )
        return self


class DcaLevel(_Model):
    """Buy `buy_percent`% more of the holding once the price is `drop_percent`% below average."""

    drop_percent: Decimal = Field(alias="dropPercent", ge=-99, le=-1)
    buy_percent: Decimal = Field(alias="buyPercent", ge=1, le=500)


class DcaConfig(_Model):
    """`dca`: averaging down; levels come from the mode's template unless mode is custom."""

    enabled: StrictBool = False
    mode: DcaMode = DcaMode.MODERATE
    levels: tuple[DcaLevel, ...] = ()
    # A fraction is read as its ceiling (`_dca_count`), as the source's test reads it.
    max_dca_count: DcaCount = Field(3, alias="maxDCACount", ge=1, le=10)
    cooldown_seconds: Decimal = Field(Decimal(30), alias="cooldownSeconds", ge=10, le=3600)

    @model_validator(mode="after")
    def _custom_levels(self) -> Self:
        if self.mode is not DcaMode.CUSTOM:
            return self
        if self.enabled and not self.levels:
            msg = "levels cannot be empty when mode is custom"
            raise ValueError(msg)
        for index, (before, level) in enumerate(pairwise(self.levels), start=1):
            if level.drop_percent > before.drop_percent:
                msg = (
                    f"levels must be sorted by dropPercent, least negative first, but level "
                    f"{index} has {fmt(level.drop_percent)} after {fmt(before.drop_percent)}"
                )
                raise ValueError(msg)
        return self


class TakeProfitLevel(_Model):
    """At `target_percent`% gain sell `sell_percent`% of the position's purchase amount."""

    target_percent: Decimal = Field(alias="targetPercent", ge=1, le=10000)
    sell_percent: Decimal = Field(alias="sellPercent", ge=1, le=100)


class MoonBagConfig(_Model):
    """Keep `retain_percent`% of the purchase amount once gain >= trigger or the last level."""

    enabled: StrictBool = True
    trigger_percent: Decimal = Field(Decimal(300), alias="triggerPercent", ge=1, le=10000)
    retain_percent: Decimal = Field(Decimal(10), alias="retainPercent", ge=1, le=50)


# The templates as (target %, sell %) and (drop %, buy %) pairs, built into levels here at
# import (module-level code: nothing for mutation testing to alter that the tests of the
# templates' values would not see).
TAKE_PROFIT_TEMPLATES: Final[Mapping[TakeProfitMode, tuple[TakeProfitLevel, ...]]] = {
    mode: tuple(
        TakeProfitLevel(target_percent=Decimal(target), sell_percent=Decimal(sell))
        for target, sell in pairs
    )
    for mode, pairs in {
        TakeProfitMode.AGGRESSIVE: ((25, 25), (50, 25), (100, 25), (150, 15)),
        TakeProfitMode.MODERATE: ((50, 25), (150, 25), (300, 25), (400, 15)),
        TakeProfitMode.CONSERVATIVE: ((100, 20), (200, 20), (400, 25), (600, 20)),
    }.items()
}

DCA_TEMPLATES: Final[Mapping[DcaMode, tuple[DcaLevel, ...]]] = {
    mode: tuple(
        DcaLevel(drop_percent=Decimal(drop), buy_percent=Decimal(buy)) for drop, buy in pairs
    )
    for mode, pairs in {
        DcaMode.AGGRESSIVE: ((-10, 100), (-10, 100), (-10, 100)),
        DcaMode.MODERATE: ((-20, 75), (-20, 75)),
        DcaMode.CONSERVATIVE: ((-20, 100),),
    }.items()
}


class TakeProfitConfig(_Model):
    """`takeProfit`: partial sales at gain targets, plus an optional moon bag."""

    enabled: StrictBool = False
    mode: TakeProfitMode = TakeProfitMode.MODERATE
    levels: tuple[TakeProfitLevel, ...] = Field(
        TAKE_PROFIT_TEMPLATES[TakeProfitMode.MODERATE], max_length=10
    )
    moon_bag: MoonBagConfig = Field(MoonBagConfig(), alias="moonBag")

    @model_validator(mode="after")
    def _custom_levels(self) -> Self:
        if self.mode is not TakeProfitMode.CUSTOM:
            return self
        if not self.levels:
            msg = "levels cannot be empty when mode is custom"
            raise ValueError(msg)
        for index, (before, level) in enumerate(pairwise(self.levels), start=1):
            if level.target_percent <= before.target_percent:
                msg = (
                    f"levels must be sorted by targetPercent, lowest first, but level {index} "
                    f"has {fmt(level.target_percent)} after {fmt(before.target_percent)}"
                )
                raise ValueError(msg)
        sold = sum((level.sell_percent for level in self.levels), Decimal(0))
        bag = self.moon_bag.retain_percent if self.moon_bag.enabled else Decimal(0)
        if sold + bag > 100:
            msg = (
                f"levels sell {fmt(sold)}% and the moon bag keeps {fmt(bag)}%, "
                f"{fmt(sold + bag)}% in all, more than 100%"
            )
            raise ValueError(msg)
        last = self.levels[-1].target_percent
        if self.moon_bag.enabled and self.moon_bag.trigger_percent > last:
            msg = (
                f"moonBag.triggerPercent {fmt(self.moon_bag.trigger_percent)} is above "
                f"the last level's targetPercent {fmt(last)}"
            )
            raise ValueError(msg)
        return self


class AgentTradingConfig(_Model):
    """The whole validated `agents.trading_config`; build it with `resolve_config`."""

    purchase_limits: PurchaseLimits = Field(PurchaseLimits(), alias="purchaseLimits")
    signals: SignalFilters = SignalFilters()
    stop_loss: StopLossConfig = Field(StopLossConfig(), alias="stopLoss")
    position_calculator: PositionCalculator = Field(
        PositionCalculator(), alias="positionCalculator"
    )
    stale_trade: StaleTradeConfig = Field(StaleTradeConfig(), alias="staleTrade")
    dca: DcaConfig = DcaConfig()
    take_profit: TakeProfitConfig = Field(TakeProfitConfig(), alias="takeProfit")


# The JSON defaults of domain.md section 4 (plus maxOpenPositions), from the models
# themselves (one source of truth): numbers as decimal strings, unset metric bounds absent.
# Never mutate it: `deep_merge` copies.
DEFAULT_TRADING_CONFIG: Final[dict[str, Any]] = AgentTradingConfig().model_dump(
    mode="json", by_alias=True, exclude_none=True
)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict of `override` over `base`: objects merged, arrays replaced, null = keep base."""
    merged: dict[str, Any] = {key: deepcopy(value) for key, value in base.items()}
    for key, value in override.items():
        if value is None:
            continue
        base_value = base.get(key)
        if isinstance(value, Mapping):
            merged[key] = deep_merge(base_value if isinstance(base_value, Mapping) else {}, value)
        else:
            merged[key] = deepcopy(value)
    return merged


def resolve_config(stored: object) -> AgentTradingConfig:
    """The validated config from stored jsonb (None = defaults); raises `InvalidConfig`.

    Keys this worker does not know are ignored here; `unknown_keys` lists them.
    """
    if stored is None:
        stored = {}
    if not isinstance(stored, Mapping):
        msg = f"invalid trading_config: expected a JSON object, got {type(stored).__name__}"
        raise InvalidConfig(msg)
    merged = deep_merge(DEFAULT_TRADING_CONFIG, stored)
    try:
        return AgentTradingConfig.model_validate(merged)
    except ValidationError as exc:
        msg = _describe(exc)
        raise InvalidConfig(msg) from exc


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = _format_location(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    text = (
        f"invalid trading_config: {where}: {message}"
        if where
        else f"invalid trading_config: {message}"
    )
    if len(text) > MAX_MESSAGE_CHARS:  # a stored key can be arbitrarily long
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    if len(errors) > 1:
        more = len(errors) - 1
        text += f" (and {more} more {'problem' if more == 1 else 'problems'})"
    return text


def _format_location(location: Sequence[int | str]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def dca_levels(cfg: AgentTradingConfig) -> list[DcaLevel]:
    """The DCA levels in effect: the mode's template, or `dca.levels` in custom mode."""
    if cfg.dca.mode is DcaMode.CUSTOM:
        return list(cfg.dca.levels)
    return list(DCA_TEMPLATES[cfg.dca.mode])


def take_profit_levels(cfg: AgentTradingConfig) -> list[TakeProfitLevel]:
    """The take-profit levels in effect: the mode's template, or `takeProfit.levels` in custom mode.

    Deliberately unlike the source, which uses `takeProfit.levels` whatever the mode (see
    the module docstring). The moon bag is always `takeProfit.moonBag`.
    """
    if cfg.take_profit.mode is TakeProfitMode.CUSTOM:
        return list(cfg.take_profit.levels)
    return list(TAKE_PROFIT_TEMPLATES[cfg.take_profit.mode])
