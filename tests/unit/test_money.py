"""The rounding helper: places, direction, exact arithmetic, message formatting."""

from __future__ import annotations

from collections.abc import Callable
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    getcontext,
    localcontext,
)

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from worker.domain.money import (
    MATH_CONTEXT,
    MATH_PRECISION,
    PCT_PLACES,
    SL_PCT_PLACES,
    SOL_PLACES,
    TOKEN_PLACES,
    div,
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
# the extremes, one step short of 1e-8 either way, and a negative amount rounding to -0
@example(Decimal(10**11))
@example(Decimal(-(10**11)))
@example(Decimal("0.00000001999999999999"))
@example(Decimal("-0.00000000999999999999"))
def test_to_sol_is_within_one_step_towards_zero(value: Decimal) -> None:
    result = to_sol(value)
    assert abs(result) <= abs(value)
    assert abs(value - result) < Decimal("1e-8")
    assert result.as_tuple().exponent == -SOL_PLACES


def _in_math_context_as_seen(x: Decimal, *, y: Decimal) -> tuple[Decimal, int, str]:
    context = getcontext()
    return x / y, context.prec, context.rounding


def test_exact_sets_the_60_digit_half_even_context_from_any_other() -> None:
    # 2/3 to 60 digits, half-even: ...6667. A 60-digit context that rounds down (same
    # precision, other rounding) must not be taken for the math context.
    third = exact(_in_math_context_as_seen)
    expected = (Decimal("0." + "6" * 59 + "7"), MATH_PRECISION, ROUND_HALF_EVEN)
    assert third(Decimal(2), y=Decimal(3)) == expected
    with localcontext(Context(prec=MATH_PRECISION, rounding=ROUND_DOWN)):
        assert third(Decimal(2), y=Decimal(3)) == expected
    with localcontext(MATH_CONTEXT):  # already in it: the fast path, same result
        assert third(Decimal(2), y=Decimal(3)) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("-0", "0"),
        ("-0E-8", "0"),
        ("Infinity", "Infinity"),
        ("123456789012.123456789012345678", "123456789012.123456789012345678"),
    ],
)
def test_fmt_writes_negative_zero_as_zero_and_keeps_every_digit(value: str, text: str) -> None:
    assert fmt(Decimal(value)) == text


def test_quantize_keeps_30_digits() -> None:
    # 12 integer digits + 18 places: more than the default context's 28 digits.
    value = Decimal("999999999999.9999999999999999999")
    assert to_token(value) == Decimal("999999999999.999999999999999999")


def test_quantize_says_which_value_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"^cannot quantize 1E\+60 to 8 places$"):
        quantize(Decimal("1e60"), SOL_PLACES)


@pytest.mark.parametrize(
    ("helper", "value", "down", "half_up"),
    [
        (to_sol, "1.123456785", "1.12345678", "1.12345679"),
        (to_token, "1.0000000000000000005", "1.000000000000000000", "1.000000000000000001"),
        (to_price, "1.0000000000000000005", "1.000000000000000000", "1.000000000000000001"),
        (to_pct, "1.23455", "1.2345", "1.2346"),
        (to_sl_pct, "1.235", "1.23", "1.24"),
    ],
)
def test_each_column_helper_rounds_down_unless_told_otherwise(
    helper: Callable[..., Decimal], value: str, down: str, half_up: str
) -> None:
    assert str(helper(Decimal(value))) == down
    assert str(helper(Decimal(value), rounding=ROUND_HALF_UP)) == half_up


def test_division_by_zero_names_the_numerator() -> None:
    with pytest.raises(ValueError, match=r"^cannot divide 7 by zero$"):
        div(Decimal(7), Decimal(0))
