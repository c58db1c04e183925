"""The one rounding helper of the domain: every stored amount is quantized here.

Money is `Decimal`, never `float`. Intermediate arithmetic runs in `MATH_CONTEXT`
(60 significant digits, far more than any column holds), and a value is rounded exactly
once, when it becomes something that is stored or compared with a stored value.

Places per unit (the column types of `contract.md` section 5):

- SOL amounts, fees, invested SOL, P/L and USD values: 8 places. 8 places fit numeric(20,8)
  and numeric(30,18) alike, so a SOL amount is the same number in every table it reaches.
- token amounts and token prices: 18 places (numeric(30,18)).
- percentages: 4 places (numeric(10,4)); stop-loss percentages: 2 places (numeric(5,2)).

Rounding defaults to `ROUND_DOWN` (towards zero): a fill never credits more tokens or SOL
than the exact arithmetic gives.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    InvalidOperation,
    getcontext,
    localcontext,
)
from functools import wraps
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

SOL_PLACES = 8
TOKEN_PLACES = 18
PRICE_PLACES = 18
PCT_PLACES = 4
SL_PCT_PLACES = 2

MATH_PRECISION = 60
MATH_CONTEXT = Context(prec=MATH_PRECISION, rounding=ROUND_HALF_EVEN)

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
BPS_PER_UNIT = Decimal(10_000)

# The largest magnitude numeric(10,4) holds (percentages such as change_percent).
PCT_COLUMN_MAX = Decimal("999999.9999")


def exact(func: Callable[P, R]) -> Callable[P, R]:
    """Run `func` with `MATH_CONTEXT` as the decimal context, so `+ - * /` keep 60 digits.

    The default context keeps 28 digits, fewer than a numeric(30,18) amount has.
    """

    @wraps(func)
    def in_math_context(*args: P.args, **kwargs: P.kwargs) -> R:
        # Nested calls (most of them) are already in a 60-digit context: no new one.
        current = getcontext()
        if current.prec == MATH_PRECISION and current.rounding == ROUND_HALF_EVEN:
            return func(*args, **kwargs)
        with localcontext(MATH_CONTEXT):
            return func(*args, **kwargs)

    return in_math_context


def quantize(value: Decimal, places: int, *, rounding: str = ROUND_DOWN) -> Decimal:
    """Round `value` to `places` decimal places (default towards zero); -0 becomes 0.

    Raises `ValueError` for NaN, infinities or a value too large for 60 digits: those are
    programming errors, never expected outcomes.
    """
    if not value.is_finite():
        msg = f"cannot quantize the non-finite value {value}"
        raise ValueError(msg)
    try:
        result = value.quantize(Decimal(1).scaleb(-places), rounding=rounding, context=MATH_CONTEXT)
    except InvalidOperation as exc:
        msg = f"cannot quantize {value} to {places} places"
        raise ValueError(msg) from exc
    return result.copy_abs() if result.is_zero() else result


def to_sol(value: Decimal, *, rounding: str = ROUND_DOWN) -> Decimal:
    """Quantize a SOL (or USD) amount to 8 places (1e-8 SOL)."""
    return quantize(value, SOL_PLACES, rounding=rounding)


def to_token(value: Decimal, *, rounding: str = ROUND_DOWN) -> Decimal:
    """Quantize a token amount (whole tokens, not base units) to 18 places."""
    return quantize(value, TOKEN_PLACES, rounding=rounding)


def to_price(value: Decimal, *, rounding: str = ROUND_DOWN) -> Decimal:
    """Quantize a price (SOL or USD per token) to 18 places."""
    return quantize(value, PRICE_PLACES, rounding=rounding)


def to_pct(value: Decimal, *, rounding: str = ROUND_DOWN) -> Decimal:
    """Quantize a percentage to 4 places (numeric(10,4)); does not clamp."""
    return quantize(value, PCT_PLACES, rounding=rounding)


def to_sl_pct(value: Decimal, *, rounding: str = ROUND_DOWN) -> Decimal:
    """Quantize a stop-loss percentage to 2 places (numeric(5,2)); does not clamp."""
    return quantize(value, SL_PCT_PLACES, rounding=rounding)


def clamp(value: Decimal, low: Decimal, high: Decimal) -> Decimal:
    """`value` limited to [low, high]."""
    return max(low, min(high, value))


def mul(*factors: Decimal) -> Decimal:
    """The exact-as-60-digits product of `factors` (no quantization)."""
    result = ONE
    for factor in factors:
        result = MATH_CONTEXT.multiply(result, factor)
    return result


def div(numerator: Decimal, denominator: Decimal) -> Decimal:
    """`numerator / denominator` to 60 significant digits; `ValueError` on a zero denominator."""
    if denominator.is_zero():
        msg = f"cannot divide {numerator} by zero"
        raise ValueError(msg)
    return MATH_CONTEXT.divide(numerator, denominator)


def pct_change(value: Decimal, base: Decimal) -> Decimal:
    """(value - base) / base x 100, unquantized; `base` must be positive."""
    if base <= 0:
        msg = f"the base of a percentage change must be positive, got {base}"
        raise ValueError(msg)
    return div(mul(MATH_CONTEXT.subtract(value, base), HUNDRED), base)


def fmt(value: Decimal) -> str:
    """Plain text of a Decimal for messages: no exponent, no trailing zeros (`0.5`, `25`)."""
    with localcontext(MATH_CONTEXT):
        normalized = value.normalize()
    text = format(normalized, "f")
    return "0" if text in {"-0", "0"} else text
