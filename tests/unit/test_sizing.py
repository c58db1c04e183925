"""Position sizing: tiers, deterministic randomization, the cap and the kept minimum."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from worker.domain.config import AgentTradingConfig, resolve_config
from worker.domain.sizing import SizingFailure, draw_in_range, position_size, sizing_seed

AGENT = uuid.UUID("0b7f6f38-3f4e-4a55-9a3c-6a7f1d1f2e01")
USER = uuid.UUID("5a1c0de0-0000-4000-8000-000000000001")
DEFAULTS = resolve_config(None)
NOT_RANDOM = resolve_config({"positionCalculator": {"randomization": {"enabled": False}}})


def size_of(balance: str, cfg: AgentTradingConfig = DEFAULTS, seed: bytes = b"seed") -> Decimal:
    result = position_size(Decimal(balance), cfg, seed)
    assert isinstance(result, Decimal), result
    return result


def failure_of(balance: str, cfg: AgentTradingConfig = DEFAULTS) -> str:
    result = position_size(Decimal(balance), cfg, b"seed")
    assert isinstance(result, SizingFailure), result
    return result.reason


# --- the examples of domain.md section 5 -------------------------------------------------


def test_one_sol_buys_the_small_size() -> None:
    assert size_of("1") == Decimal("0.1")


def test_keeps_the_minimum_balance_when_the_size_would_eat_into_it() -> None:
    # 0.55 is the small tier (0.1), but 0.55 - 0.1 < 0.5: buy 0.55 - 0.5.
    assert size_of("0.55") == Decimal("0.05")


@pytest.mark.parametrize(
    ("balance", "low", "high"),
    [("6", "0.5", "1.0"), ("12", "1.5", "2.0"), ("5", "0.5", "1.0"), ("10", "1.5", "2.0")],
)
def test_tier_sizes_fall_in_the_tier_range(balance: str, low: str, high: str) -> None:
    for signal_id in range(50):
        size = size_of(balance, seed=sizing_seed(USER, f"k-{signal_id}", AGENT))
        assert Decimal(low) <= size < Decimal(high)


@pytest.mark.parametrize(("balance", "expected"), [("1", "0.1"), ("6", "1.0"), ("12", "2.0")])
def test_without_randomization_the_size_is_the_tier_max(balance: str, expected: str) -> None:
    assert size_of(balance, NOT_RANDOM) == Decimal(expected)


def test_size_is_capped_at_max_purchase_per_token() -> None:
    cfg = resolve_config({"purchaseLimits": {"maxPurchasePerToken": 0.75}})
    assert size_of("100", cfg) == Decimal("0.75")


def test_result_is_quantized_to_sol_places() -> None:
    assert size_of("6").as_tuple().exponent == -8
    cfg = resolve_config(
        {
            "positionCalculator": {
                "randomization": {"enabled": False},
                "positionSizes": {"small": {"min": 0.1, "max": 0.123456789123}},
            }
        }
    )
    assert size_of("1", cfg) == Decimal("0.12345678")


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "overrides", "reason"),
    [
        (
            "0.5",
            {},
            "SOL balance 0.5 leaves nothing to buy with above minimumAgentBalance 0.5",
        ),
        (
            "0.3",
            {},
            "SOL balance 0.3 leaves nothing to buy with above minimumAgentBalance 0.5",
        ),
        (
            "0.15",
            {"purchaseLimits": {"minimumAgentBalance": 0.1}},
            "SOL balance 0.15 is below the position calculator's minimum balance 0.2",
        ),
        (
            "1",
            {"positionCalculator": {"positionSizes": {"small": {"min": 0, "max": 0}}}},
            "the position size for SOL balance 1 is 0 SOL",
        ),
        (  # a size of 0 leaves exactly the kept 0.5: the size, not the balance, is the reason
            "0.5",
            {"positionCalculator": {"positionSizes": {"small": {"min": 0, "max": 0}}}},
            "the position size for SOL balance 0.5 is 0 SOL",
        ),
    ],
)
def test_failures_name_the_numbers(balance: str, overrides: dict[str, Any], reason: str) -> None:
    assert failure_of(balance, resolve_config(overrides)) == reason


# --- the seeded draw ---------------------------------------------------------------------


def test_seed_is_stable_and_distinct_per_signal_and_agent() -> None:
    other = uuid.UUID("0b7f6f38-3f4e-4a55-9a3c-6a7f1d1f2e02")
    other_user = uuid.UUID("5a1c0de0-0000-4000-8000-000000000002")
    assert sizing_seed(USER, "k-7", AGENT) == sizing_seed(USER, "k-7", AGENT)
    assert sizing_seed(USER, "k-7", AGENT) == (
        b"signal-worker/sizing/v2/5a1c0de0-0000-4000-8000-000000000001/"
        b"0b7f6f38-3f4e-4a55-9a3c-6a7f1d1f2e01/k-7"
    )
    seeds = {
        sizing_seed(USER, "k-7", AGENT),
        sizing_seed(USER, "k-8", AGENT),
        sizing_seed(USER, "k-7", other),
        sizing_seed(other_user, "k-7", AGENT),
    }
    assert len(seeds) == 4


@given(
    user=st.uuids(),
    key=st.text(min_size=1, max_size=40),
    agent=st.uuids(),
    other_key=st.text(min_size=1, max_size=40),
    other_agent=st.uuids(),
)
# a key that looks like the seed's separators, and one that only a prefix tells apart
@example(user=USER, key="a/b", agent=AGENT, other_key="a/b/", other_agent=AGENT)
@example(user=USER, key="k-1", agent=AGENT, other_key="k-10", other_agent=AGENT)
def test_seeds_depend_on_the_natural_key_and_agent_alone(
    user: uuid.UUID, key: str, agent: uuid.UUID, other_key: str, other_agent: uuid.UUID
) -> None:
    # A function of (user, key, agent) only: no serial id, no clock, nothing else.
    assert sizing_seed(user, key, agent) == sizing_seed(user, key, agent)
    if (key, agent) != (other_key, other_agent):
        assert sizing_seed(user, key, agent) != sizing_seed(user, other_key, other_agent)


def test_draw_spreads_over_the_range() -> None:
    sizes = [
        draw_in_range(Decimal("0.5"), Decimal("1.0"), sizing_seed(USER, f"k-{i}", AGENT))
        for i in range(400)
    ]
    assert min(sizes) < Decimal("0.55")
    assert max(sizes) > Decimal("0.95")
    assert len(set(sizes)) > 390


def test_draw_of_an_empty_range_is_its_end() -> None:
    assert draw_in_range(Decimal("0.1"), Decimal("0.1"), b"x") == Decimal("0.1")
    assert draw_in_range(Decimal("0.123456789"), Decimal("0.123456789"), b"x") == Decimal(
        "0.12345678"
    )


def test_draw_counts_the_last_grid_point_below_an_off_grid_end() -> None:
    # [0.1, 0.100000015): grid points 0.1 and 0.10000001 only.
    seen = {draw_in_range(Decimal("0.1"), Decimal("0.100000015"), bytes([i])) for i in range(64)}
    assert seen == {Decimal("0.1"), Decimal("0.10000001")}


def test_draw_rounds_the_range_start_up_to_the_grid() -> None:
    # [0.100000001, 0.100000011): the only grid point is 0.10000001 (0.1 is below the range).
    seen = {
        draw_in_range(Decimal("0.100000001"), Decimal("0.100000011"), bytes([i])) for i in range(64)
    }
    assert seen == {Decimal("0.10000001")}


def test_draw_counts_a_partial_last_step_as_a_grid_point() -> None:
    # [0.1, 0.100000011): 1.1 steps of 1e-8 hold the grid points 0.1 and 0.10000001.
    seen = {draw_in_range(Decimal("0.1"), Decimal("0.100000011"), bytes([i])) for i in range(64)}
    assert seen == {Decimal("0.1"), Decimal("0.10000001")}


def test_a_balance_exactly_at_the_calculators_minimum_buys() -> None:
    # minimum 0.2: 0.2 buys the small size 0.1, leaving exactly the 0.1 to keep.
    cfg = resolve_config({"purchaseLimits": {"minimumAgentBalance": 0.1}})
    assert size_of("0.2", cfg) == Decimal("0.1")
    assert failure_of("0.19999999", cfg) == (
        "SOL balance 0.19999999 is below the position calculator's minimum balance 0.2"
    )


sol_amounts = st.decimals(
    min_value=Decimal(0), max_value=Decimal(1000), places=9, allow_nan=False, allow_infinity=False
)


@given(
    balance=sol_amounts, signal_id=st.integers(min_value=1, max_value=2**31), seed_agent=st.uuids()
)
# the kept minimum exactly, one step above it, and each tier threshold exactly
@example(balance=Decimal("0.5"), signal_id=1, seed_agent=AGENT)
@example(balance=Decimal("0.50000001"), signal_id=1, seed_agent=AGENT)
@example(balance=Decimal(5), signal_id=1, seed_agent=AGENT)
@example(balance=Decimal(10), signal_id=1, seed_agent=AGENT)
def test_sizing_is_deterministic_bounded_and_keeps_the_minimum(
    balance: Decimal, signal_id: int, seed_agent: uuid.UUID
) -> None:
    seed = sizing_seed(USER, f"signal-{signal_id}", seed_agent)
    first = position_size(balance, DEFAULTS, seed)
    assert position_size(balance, DEFAULTS, seed) == first
    if isinstance(first, SizingFailure):
        # Only a balance that leaves less than 1e-8 SOL above the 0.5 minimum fails.
        assert balance < Decimal("0.50000001")
        return
    assert first.as_tuple().exponent == -8
    assert Decimal(0) < first <= DEFAULTS.purchase_limits.max_purchase_per_token
    assert balance - first >= DEFAULTS.purchase_limits.minimum_agent_balance
    if balance >= 10:
        assert Decimal("1.5") <= first < Decimal(2)
    elif balance >= 5:
        assert Decimal("0.5") <= first < Decimal(1)
    else:
        assert first <= Decimal("0.1")


@given(
    low=st.decimals(min_value=Decimal(0), max_value=Decimal(5), places=10),
    width=st.decimals(min_value=Decimal(0), max_value=Decimal(5), places=10),
    seed=st.binary(max_size=16),
)
# an empty range, a range start off the grid, a range shorter than one step
@example(low=Decimal("0.1"), width=Decimal(0), seed=b"")
@example(low=Decimal("0.100000001"), width=Decimal("0.00000001"), seed=b"\x00")
@example(low=Decimal("0.1000000001"), width=Decimal("0.000000001"), seed=b"\x01")
def test_draw_stays_in_range_on_the_grid(low: Decimal, width: Decimal, seed: bytes) -> None:
    high = low + width
    drawn = draw_in_range(low, high, seed)
    assert drawn.as_tuple().exponent == -8
    if drawn != high.quantize(Decimal("1e-8"), rounding="ROUND_DOWN"):
        assert low <= drawn < high
