"""Simulated fills: worked examples, rejections, and the exact ledger identities."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from worker.domain.fills import (
    BuyFill,
    SellFill,
    buy_fill,
    protocol_fee,
    sell_fill,
    token_price_sol,
)

NETWORK = Decimal("0.000005")


def test_buy_worked_example() -> None:
    # 0.1 SOL at 0.0002 USD/token with SOL at 150 USD, 1% protocol fee:
    #   tokens = 0.1 x 150 / 0.0002 = 75000; price = 0.0002 / 150 = 0.000001333... SOL
    #   protocol = 0.1 x 100 / 10^4 = 0.001; debit = 0.1 + 0.000005 + 0.001 = 0.101005
    fill = buy_fill(
        Decimal("0.1"),
        Decimal("0.0002"),
        Decimal(150),
        network_fee_sol=NETWORK,
        protocol_fee_bps=100,
    )
    assert fill == BuyFill(
        size_sol=Decimal("0.10000000"),
        token_amount=Decimal("75000.000000000000000000"),
        price_sol=Decimal("0.000001333333333333"),
        network_fee_sol=Decimal("0.00000500"),
        protocol_fee_sol=Decimal("0.00100000"),
        debit_sol=Decimal("0.10100500"),
        value_usd=Decimal("15.00000000"),
    )
    assert fill.rejection is None


def test_sell_worked_example() -> None:
    # 75000 tokens at 0.0003 USD with SOL at 150 USD: gross = 75000 x 0.0003 / 150 = 0.15 SOL,
    # protocol 1% = 0.0015, network 0.000005, credit = 0.15 - 0.0015 - 0.000005 = 0.148495.
    fill = sell_fill(
        Decimal(75000),
        Decimal("0.0003"),
        Decimal(150),
        network_fee_sol=NETWORK,
        protocol_fee_bps=100,
    )
    assert fill == SellFill(
        token_amount=Decimal(75000),
        gross_sol=Decimal("0.15"),
        price_sol=Decimal("0.000002"),
        network_fee_sol=NETWORK,
        protocol_fee_sol=Decimal("0.0015"),
        credit_sol=Decimal("0.148495"),
        value_usd=Decimal("22.5"),
    )
    assert fill.rejection is None


def test_gross_sol_rounds_down_to_lamport_hundredths() -> None:
    # 1 token at 1 USD with SOL at 3 USD: 0.3333... SOL, rounded down to 8 places.
    fill = sell_fill(
        Decimal(1), Decimal(1), Decimal(3), network_fee_sol=Decimal(0), protocol_fee_bps=0
    )
    assert fill.gross_sol == Decimal("0.33333333")


def test_a_sale_never_costs_sol() -> None:
    # gross 0.000003 SOL cannot pay a 0.000005 network fee: the fee recorded is cut to 0.000003.
    fill = sell_fill(
        Decimal(3), Decimal("0.000001"), Decimal(1), network_fee_sol=NETWORK, protocol_fee_bps=0
    )
    assert fill.gross_sol == Decimal("0.000003")
    assert fill.network_fee_sol == Decimal("0.000003")
    assert fill.credit_sol == 0
    assert fill.rejection is None


def test_a_worthless_sale_is_still_a_sale() -> None:
    fill = sell_fill(
        Decimal(1), Decimal("0.0000001"), Decimal(150), network_fee_sol=NETWORK, protocol_fee_bps=50
    )
    amounts = (fill.gross_sol, fill.network_fee_sol, fill.protocol_fee_sol, fill.credit_sol)
    assert all(amount == 0 for amount in amounts)
    assert fill.rejection is None


def test_buy_that_gets_no_tokens_is_rejected() -> None:
    fill = buy_fill(
        Decimal("0.1"), Decimal("1e30"), Decimal(150), network_fee_sol=NETWORK, protocol_fee_bps=0
    )
    assert fill.token_amount == 0
    assert fill.rejection == "the token amount rounds to 0 at 18 decimal places"


def test_buy_below_the_smallest_price_is_rejected() -> None:
    fill = buy_fill(
        Decimal("0.1"), Decimal("1e-20"), Decimal(150), network_fee_sol=NETWORK, protocol_fee_bps=0
    )
    assert fill.rejection == "the token price rounds to 0 SOL at 18 decimal places"


def test_buy_of_too_many_tokens_is_rejected() -> None:
    fill = buy_fill(
        Decimal(2), Decimal("1e-10"), Decimal(150), network_fee_sol=NETWORK, protocol_fee_bps=0
    )
    assert fill.rejection == ("the token amount 3000000000000 is too large for numeric(30,18)")


def test_sale_of_nothing_is_rejected() -> None:
    fill = sell_fill(
        Decimal("1e-19"), Decimal(1), Decimal(150), network_fee_sol=NETWORK, protocol_fee_bps=0
    )
    assert fill.rejection == "the token amount rounds to 0 at 18 decimal places"


@pytest.mark.parametrize(
    ("size", "token_usd", "sol_usd", "network"),
    [("0", "1", "1", "0"), ("1", "0", "1", "0"), ("1", "1", "-1", "0"), ("1", "1", "1", "-0.1")],
)
def test_broken_preconditions_raise(size: str, token_usd: str, sol_usd: str, network: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        buy_fill(
            Decimal(size),
            Decimal(token_usd),
            Decimal(sol_usd),
            network_fee_sol=Decimal(network),
            protocol_fee_bps=0,
        )


def test_protocol_fee_bps_range() -> None:
    assert protocol_fee(Decimal(1), 25) == Decimal("0.0025")
    assert protocol_fee(Decimal("0.00000001"), 25) == 0
    with pytest.raises(ValueError, match=r"0\.\.10000"):
        protocol_fee(Decimal(1), 10001)


def test_token_price_in_sol() -> None:
    assert token_price_sol(Decimal(3), Decimal(150)) == Decimal("0.02")


sizes = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=10)
usd_prices = st.decimals(min_value=Decimal("1e-12"), max_value=Decimal(10_000), places=14)
sol_prices = st.decimals(min_value=Decimal(1), max_value=Decimal(1000), places=6)
fees = st.decimals(min_value=Decimal(0), max_value=Decimal("0.01"), places=9)
bps = st.integers(min_value=0, max_value=10_000)


@given(size=sizes, token_usd=usd_prices, sol_usd=sol_prices, network=fees, fee_bps=bps)
# the smallest size, the whole size as protocol fee, a price that rounds to 1e-18 SOL
@example(
    size=Decimal("0.00000001"),
    token_usd=Decimal(1),
    sol_usd=Decimal(1),
    network=Decimal(0),
    fee_bps=0,
)
@example(
    size=Decimal(1000), token_usd=Decimal(10_000), sol_usd=Decimal(1), network=Decimal("0.01"),
    fee_bps=10_000,
)  # fmt: skip
@example(
    size=Decimal(1),
    token_usd=Decimal("1e-12"),
    sol_usd=Decimal(1000),
    network=Decimal(0),
    fee_bps=1,
)
def test_buy_debit_is_size_plus_fees_exactly(
    size: Decimal, token_usd: Decimal, sol_usd: Decimal, network: Decimal, fee_bps: int
) -> None:
    fill = buy_fill(size, token_usd, sol_usd, network_fee_sol=network, protocol_fee_bps=fee_bps)
    assert fill.debit_sol == fill.size_sol + fill.network_fee_sol + fill.protocol_fee_sol
    for value in (fill.size_sol, fill.network_fee_sol, fill.protocol_fee_sol, fill.debit_sol):
        assert isinstance(value, Decimal)
        assert value.as_tuple().exponent == -8
    assert fill.token_amount.as_tuple().exponent == -18
    assert fill.price_sol.as_tuple().exponent == -18
    with localcontext() as ctx:
        ctx.prec = 100
        assert fill.token_amount * token_usd <= fill.size_sol * sol_usd  # never more than paid for
    assert fill.size_sol <= size


@given(amount=sizes, token_usd=usd_prices, sol_usd=sol_prices, network=fees, fee_bps=bps)
# fees larger than the sale (the network fee is cut to what is left), and all protocol fee
@example(
    amount=Decimal(4), token_usd=Decimal("0.000001"), sol_usd=Decimal(1),
    network=Decimal("0.000005"), fee_bps=2500,
)  # fmt: skip
@example(
    amount=Decimal(1000), token_usd=Decimal(10_000), sol_usd=Decimal(1), network=Decimal("0.01"),
    fee_bps=10_000,
)  # fmt: skip
def test_sale_credit_is_gross_minus_fees_exactly_and_never_negative(
    amount: Decimal, token_usd: Decimal, sol_usd: Decimal, network: Decimal, fee_bps: int
) -> None:
    fill = sell_fill(amount, token_usd, sol_usd, network_fee_sol=network, protocol_fee_bps=fee_bps)
    assert fill.credit_sol == fill.gross_sol - fill.network_fee_sol - fill.protocol_fee_sol
    assert fill.credit_sol >= 0
    assert 0 <= fill.network_fee_sol <= network
    for value in (fill.gross_sol, fill.network_fee_sol, fill.protocol_fee_sol, fill.credit_sol):
        assert value.as_tuple().exponent == -8
    with localcontext() as ctx:
        ctx.prec = 100
        assert fill.gross_sol * sol_usd <= fill.token_amount * token_usd  # never more than sold


# --- the column limits: 10^12 is the first magnitude numeric(30,18) / numeric(20,8) refuse ---


def _sale(amount: str, token_usd: str, sol_usd: str) -> SellFill:
    return sell_fill(
        Decimal(amount),
        Decimal(token_usd),
        Decimal(sol_usd),
        network_fee_sol=Decimal(0),
        protocol_fee_bps=0,
    )


TOO_LARGE = "a price or SOL amount of the trade is too large for its numeric column"


@pytest.mark.parametrize(
    ("amount", "token_usd", "sol_usd", "rejection"),
    [
        # tokens: 10^12 - 1e-18 fits, 10^12 does not
        ("999999999999.999999999999999999", "0.000000000001", "1", None),
        (
            "1000000000000",
            "0.000000000001",
            "1",
            "the token amount 1000000000000 is too large for numeric(30,18)",
        ),
        # gross SOL (and the price): 1 token at 10^12 - 1e-8 USD with SOL at 1 USD fits
        ("1", "999999999999.99999999", "1", None),
        ("1", "1000000000000", "1", TOO_LARGE),
        # USD value only: 1 token for 5 x 10^11 SOL at 2 USD is worth exactly 10^12 USD
        ("1", "999999999999.99999998", "2", None),
        ("1", "1000000000000", "2", TOO_LARGE),
    ],
)
def test_a_fill_fits_the_columns_up_to_just_below_10_to_the_12(
    amount: str, token_usd: str, sol_usd: str, rejection: str | None
) -> None:
    assert _sale(amount, token_usd, sol_usd).rejection == rejection


def test_a_sale_of_zero_tokens_is_a_rejected_fill_not_an_error() -> None:
    fill = _sale("0", "1", "150")
    assert fill.token_amount == 0
    assert fill.rejection == "the token amount rounds to 0 at 18 decimal places"


def test_a_negative_sale_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"^cannot sell a negative token amount -1\.5$"):
        _sale("-1.5", "1", "150")


def test_the_network_fee_is_cut_to_what_the_protocol_fee_leaves() -> None:
    # gross 4 x 0.000001 / 1 = 0.000004 SOL; 25% protocol fee 0.000001; the 0.000005 network
    # fee is cut to the 0.000003 left, so the sale credits exactly 0.
    fill = sell_fill(
        Decimal(4), Decimal("0.000001"), Decimal(1), network_fee_sol=NETWORK, protocol_fee_bps=2500
    )
    assert (fill.gross_sol, fill.protocol_fee_sol, fill.network_fee_sol, fill.credit_sol) == (
        Decimal("0.000004"),
        Decimal("0.000001"),
        Decimal("0.000003"),
        Decimal(0),
    )


def test_a_protocol_fee_of_10000_bps_takes_everything() -> None:
    assert protocol_fee(Decimal("1.5"), 10000) == Decimal("1.5")


@pytest.mark.parametrize(
    ("token_usd", "sol_usd", "name"),
    [
        ("NaN", "150", "token_price_usd"),
        ("1", "NaN", "sol_price_usd"),
        ("0", "150", "token_price_usd"),
        ("1", "0", "sol_price_usd"),
    ],
)
def test_every_fill_names_a_price_that_is_not_positive_and_finite(
    token_usd: str, sol_usd: str, name: str
) -> None:
    message = rf"^{name} must be a positive finite number, got "
    with pytest.raises(ValueError, match=message):
        token_price_sol(Decimal(token_usd), Decimal(sol_usd))
    with pytest.raises(ValueError, match=message):
        sell_fill(
            Decimal(1),
            Decimal(token_usd),
            Decimal(sol_usd),
            network_fee_sol=NETWORK,
            protocol_fee_bps=0,
        )
    with pytest.raises(ValueError, match=message):
        buy_fill(
            Decimal(1),
            Decimal(token_usd),
            Decimal(sol_usd),
            network_fee_sol=NETWORK,
            protocol_fee_bps=0,
        )
