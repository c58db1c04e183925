"""The rounding helper: places, direction, exact arithmetic, message formatting."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.domain.money import (
    PCT_PLACES,
    SL_PCT_PLACES,
    SOL_PLACES,
    TOKEN_PLACES,
    exact,
    fmt,
    pct_change,
    quantize,
    to_pct,
    to_price,
    to_sl_pct,
    to_sol,
    to_token,
)


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        ("1.123456789", 8, "1.12345678"),
        ("-1.123456789", 8, "-1.12345678"),
        ("0.000000009", 8, "0E-8"),
        ("-0.000000009", 8, "0E-8"),
        ("2", 8, "2.00000000"),
        ("12.34567", 4, "12.3456"),
        ("999.999", 2, "999.99"),
    ],
)
def test_quantize_rounds_towards_zero_to_the_places(value: str, places: int, expected: str) -> None:
    result = quantize(Decimal(value), places)
    assert str(result) == expected
    assert result.as_tuple().exponent == -places


def test_quantize_never_returns_negative_zero() -> None:
    assert not quantize(Decimal("-0.000000001"), SOL_PLACES).is_signed()


def test_quantize_takes_another_rounding() -> None:
    assert quantize(Decimal("0.125"), 2, rounding=ROUND_HALF_UP) == Decimal("0.13")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_quantize_refuses_non_finite_values(value: str) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        quantize(Decimal(value), SOL_PLACES)


def test_wrappers_use_the_column_places() -> None:
    value = Decimal("1.1234567890123456789012")
    assert to_sol(value).as_tuple().exponent == -SOL_PLACES
    assert to_token(value).as_tuple().exponent == -TOKEN_PLACES
    assert to_price(value) == Decimal("1.123456789012345678")
    assert to_pct(value).as_tuple().exponent == -PCT_PLACES
    assert to_sl_pct(value).as_tuple().exponent == -SL_PCT_PLACES


def test_exact_keeps_30_digit_amounts_exact() -> None:
    # 12 integer digits + 18 places: the default 28-digit context would round this sum.
    a = Decimal("123456789012.123456789012345678")
    b = Decimal("0.000000000000000001")

    @exact
    def add(x: Decimal, y: Decimal) -> Decimal:
        return x + y

    assert add(a, b) == Decimal("123456789012.123456789012345679")


@pytest.mark.parametrize(
    ("value", "text"),
    [("0.50000000", "0.5"), ("25", "25"), ("5E+1", "50"), ("0E-8", "0"), ("-32.00", "-32")],
)
def test_fmt_writes_plain_numbers(value: str, text: str) -> None:
    assert fmt(Decimal(value)) == text


def test_pct_change_is_relative_to_the_base() -> None:
    assert pct_change(Decimal("0.0015"), Decimal("0.001")) == Decimal(50)
    assert pct_change(Decimal("0.0008"), Decimal("0.001")) == Decimal(-20)
    with pytest.raises(ValueError, match="positive"):
        pct_change(Decimal(1), Decimal(0))


@given(
    st.decimals(
        min_value=Decimal(-(10**11)),
        max_value=Decimal(10**11),
        places=20,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_to_sol_is_within_one_step_towards_zero(value: Decimal) -> None:
    result = to_sol(value)
    assert abs(result) <= abs(value)
    assert abs(value - result) < Decimal("1e-8")
    assert result.as_tuple().exponent == -SOL_PLACES
