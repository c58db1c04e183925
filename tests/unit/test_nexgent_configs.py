"""Configs Nexgent's own schema accepts (`trading-config-validation.ts`) are accepted here,
with the meaning Nexgent gives them; hostile values (1e400, NaN, strings) stay refused."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.helpers.positions import AVG, T0, make_position
from tests.unit.test_eligibility import make_agent, make_signal
from worker.domain.config import SOL_LIMIT, resolve_config
from worker.domain.config_reading import read_config
from worker.domain.eligibility import decide
from worker.domain.exits import evaluate_dca, is_stale, stop_loss_target
from worker.domain.models import ExecutionStatus
from worker.domain.sizing import position_size

# A 20 % drop from the 0.001 average: every aggressive DCA level (-10 %) fires at it.
DROPPED = AVG * Decimal("0.8")
LATER = T0 + timedelta(hours=1)


def dca_config(max_count: object) -> dict[str, object]:
    return {"dca": {"enabled": True, "mode": "aggressive", "maxDCACount": max_count}}


def test_a_fractional_max_dca_count_allows_as_many_buys_as_the_source_allows() -> None:
    # The source skips DCA when dcaCount >= maxDCACount: with 2.5, counts 0, 1 and 2 buy
    # (2 >= 2.5 is false) and the fourth does not: 3 DCA buys.
    cfg = resolve_config(dca_config(2.5))
    assert cfg.dca.max_dca_count == 3
    for count in (0, 1, 2):
        assert evaluate_dca(make_position(dca_count=count), DROPPED, LATER, cfg) is not None
    assert evaluate_dca(make_position(dca_count=3), DROPPED, LATER, cfg) is None


def test_a_fractional_max_dca_count_is_read_from_stored_json() -> None:
    reading = read_config('{"dca": {"maxDCACount": 1.2}}')
    assert reading.error is None and reading.config is not None
    assert reading.config.dca.max_dca_count == 2


@pytest.mark.parametrize(
    ("written", "count"),
    [("2.0000000000000001", 2), ("2.000000000000001", 3), ("9.99999999999999999", 10)],
)
def test_a_max_dca_count_is_read_as_the_double_the_source_reads(written: str, count: int) -> None:
    # JSON.parse makes 2.0000000000000001 the double 2: the source allows 2 DCA buys, not 3.
    reading = read_config(f'{{"dca": {{"maxDCACount": {written}}}}}')
    assert reading.error is None and reading.config is not None
    assert reading.config.dca.max_dca_count == count


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0.5, "dca.maxDCACount: Input should be greater than or equal to 1"),
        (10.5, "dca.maxDCACount: Input should be less than or equal to 10"),
        (True, "dca.maxDCACount: Input should be a valid integer, not a boolean"),
    ],
)
def test_max_dca_counts_the_source_refuses_are_refused(value: object, reason: str) -> None:
    reading = read_config(json.dumps(dca_config(value)))
    assert reading.error == f"invalid trading_config: {reason}"


# Sizes far above the default cap: a balance of 50,000 SOL is in the large tier, which buys
# exactly 20,000 SOL (no randomization).
BIG_SIZES = {
    "solBalanceThresholds": {"minimum": 1, "medium": 100, "large": 1000},
    "positionSizes": {
        "small": {"min": 1, "max": 1},
        "medium": {"min": 10, "max": 10},
        "large": {"min": 20000, "max": 20000},
    },
    "randomization": {"enabled": False},
}


@pytest.mark.parametrize("cap", ["1e12", "1e300", "1.7976931348623157e308"])
def test_a_huge_max_purchase_per_token_is_no_cap(cap: str) -> None:
    # Written as "no cap" in Nexgent's UI (any positive number is valid there): the worker
    # clamps it to 10^12 SOL, which no size reaches, so the buy is the tier's size.
    sizes = json.dumps(BIG_SIZES)
    reading = read_config(
        f'{{"purchaseLimits": {{"maxPurchasePerToken": {cap}}}, "positionCalculator": {sizes}}}'
    )
    assert reading.error is None and reading.config is not None
    cfg = reading.config
    assert cfg.purchase_limits.max_purchase_per_token == SOL_LIMIT
    assert position_size(Decimal(50_000), cfg, b"seed") == Decimal(20_000)


def test_a_cap_below_the_limit_still_caps() -> None:
    cfg = resolve_config(
        {"purchaseLimits": {"maxPurchasePerToken": 150}, "positionCalculator": BIG_SIZES}
    )
    assert position_size(Decimal(50_000), cfg, b"seed") == Decimal(150)


def custom_stop(levels: list[dict[str, object]]) -> dict[str, object]:
    return {"stopLoss": {"mode": "custom", "trailingLevels": levels}}


def test_a_custom_stop_loss_level_far_above_any_usual_gain_is_kept() -> None:
    # change 2e6 (a 20,000x rise) is valid in the source; here too, and only a gain that
    # reaches it moves the stop to its level.
    cfg = resolve_config(
        custom_stop([{"change": 2e6, "stopLoss": 900}, {"change": 50, "stopLoss": 20}])
    )
    assert cfg.stop_loss.trailing_levels[0].change == Decimal("2e6")
    assert stop_loss_target(Decimal(1_999_999), cfg) == Decimal(20)
    assert stop_loss_target(Decimal(2_000_000), cfg) == Decimal(900)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"purchaseLimits": {"maxPurchasePerToken": 1e400}}',
            "purchaseLimits.maxPurchasePerToken: Input should be less than or equal to "
            "1.7976931348623157E+308",
        ),
        (
            '{"stopLoss": {"mode": "custom", "trailingLevels": '
            '[{"change": 1e400, "stopLoss": 10}]}}',
            "stopLoss.trailingLevels[0].change: Input should be less than or equal to "
            "1.7976931348623157E+308",
        ),
        (
            '{"purchaseLimits": {"maxPurchasePerToken": "no cap"}}',
            "purchaseLimits.maxPurchasePerToken: Input should be a valid decimal",
        ),
        (
            '{"dca": {"maxDCACount": NaN}}',
            "not JSON this worker accepts: NaN is not a number this worker accepts",
        ),
    ],
)
def test_hostile_values_stay_refused(text: str, reason: str) -> None:
    reading = read_config(text)
    assert (reading.config, reading.error) == (None, f"invalid trading_config: {reason}")


def test_stale_trade_settings_take_any_number_as_the_source_does() -> None:
    # Only compared with a gain or a hold time: no bound but the largest JS number.
    cfg = resolve_config({"staleTrade": {"minProfitPercent": -1e7, "maxProfitPercent": 1e7}})
    rise = AVG * 50_001  # +5,000,000 %
    assert is_stale(make_position(), rise, LATER, cfg)
    forever = resolve_config({"staleTrade": {"minHoldTimeMinutes": 1e300}})
    assert not is_stale(make_position(), AVG * Decimal("1.05"), T0 + timedelta(days=3650), forever)


def test_a_minimum_balance_no_wallet_holds_means_no_buy() -> None:
    # 1e13 SOL is more than numeric(20,8) holds: clamped to 10^12, the agent never buys.
    cfg = resolve_config({"purchaseLimits": {"minimumAgentBalance": 1e13}})
    assert cfg.purchase_limits.minimum_agent_balance == SOL_LIMIT
    agent = make_agent(sol_balance=Decimal("999999999999.99999999"))
    decision = decide(make_signal(), agent, cfg, seed=b"seed")
    assert (decision.status, decision.reason) == (
        ExecutionStatus.SKIPPED,
        "SOL balance 999999999999.99999999 is below minimumAgentBalance 1000000000000",
    )


def test_balance_tiers_and_signal_bounds_take_any_number_as_the_source_does() -> None:
    # A large tier no balance reaches: every balance from 5 SOL on buys the medium size.
    cfg = resolve_config({"positionCalculator": {
        "solBalanceThresholds": {"minimum": 0.2, "medium": 5, "large": 1e300},
        "randomization": {"enabled": False}}})  # fmt: skip
    assert position_size(Decimal(500_000), cfg, b"seed") == Decimal("1.0")
    # A market cap bound above any metric, and a holder count minimum above the signal's.
    assert resolve_config({"signals": {"marketCapMax": 1e30}}).signals.market_cap_max == Decimal(
        "1e30"
    )
    picky = resolve_config({"signals": {"holderCountMin": 1e10}})
    decision = decide(make_signal(), make_agent(), picky, seed=b"seed")
    assert decision.reason == "holder count 1200 is below holderCountMin 10000000000"


def test_position_sizes_stay_below_the_sol_limit() -> None:
    # Declared: a size feeds the drawn amount, so it keeps the column's bound.
    reading = read_config('{"positionCalculator": {"positionSizes": {"large": {"min": 1, '
                          '"max": 1e12}}}}')  # fmt: skip
    assert reading.error == (
        "invalid trading_config: positionCalculator.positionSizes.large.max: Input should be "
        "less than 1000000000000"
    )
