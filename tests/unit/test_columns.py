"""The numeric columns' table (`worker.domain.columns`) and the row checks built on it
(`worker.domain.storable`): what PostgreSQL would refuse, said before the write."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from tests.integration.schema_catalogue import EXPECTED_COLUMNS
from worker.domain.columns import AMOUNT, COLUMNS, PCT, SL_PCT, SOL, Numeric, misfit
from worker.domain.exits import ExitPnl
from worker.domain.fills import COLUMN_LIMIT, BuyFill, buy_fill
from worker.domain.ledger import SwapRow
from worker.domain.models import PositionState
from worker.domain.storable import (
    balance_misfit,
    exit_misfit,
    position_misfit,
    price_misfit,
    snapshot_misfit,
    swap_misfit,
    trade_misfit,
)

BIG = Decimal(10) ** 12
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_table_is_every_numeric_column_of_the_schema_with_its_type() -> None:
    # EXPECTED_COLUMNS is what tests/integration/test_schema.py holds the migrations to.
    expected = {
        (table, column): re.sub(r"\?$", "", kind)
        for table, columns in EXPECTED_COLUMNS.items()
        for column, kind in columns.items()
        if kind.startswith("numeric")
    }
    ours = {(t, c): str(n) for t, columns in COLUMNS.items() for c, n in columns.items()}
    assert ours == expected


@pytest.mark.parametrize(
    ("column", "value", "fits"),
    [
        (AMOUNT, Decimal("999999999999.999999999999999999"), True),
        (AMOUNT, Decimal("999999999999.9999999999999999994"), True),  # rounds down
        (AMOUNT, Decimal("999999999999.9999999999999999995"), False),  # half up: 10^12
        (AMOUNT, Decimal("-999999999999.9999999999999999995"), False),  # away from zero
        (AMOUNT, Decimal("-999999999999.999999999999999999"), True),
        (AMOUNT, BIG, False),
        (AMOUNT, Decimal("1e40"), False),  # too long to round in 60 digits
        (AMOUNT, Decimal("1e47"), False),  # refused before rounding: 66 digits at 18 places
        (AMOUNT, Decimal("1e-40"), True),  # rounds to 0
        (AMOUNT, Decimal(0), True),
        (AMOUNT, Decimal("NaN"), False),
        (AMOUNT, Decimal("Infinity"), False),
        (SOL, Decimal("999999999999.99999999"), True),
        (SOL, Decimal("999999999999.999999995"), False),
        (SOL, Decimal("-1.2e12"), False),
        (PCT, Decimal("999999.9999"), True),
        (PCT, Decimal("999999.99995"), False),
        (SL_PCT, Decimal("999.99"), True),
        (SL_PCT, Decimal("999.995"), False),
        (SL_PCT, Decimal("-100"), True),
    ],
)
def test_a_value_fits_when_postgresql_would_store_it(
    column: Numeric, value: Decimal, fits: bool
) -> None:
    assert column.fits(value) is fits


def test_a_column_type_reads_as_in_the_schema() -> None:
    assert str(Numeric(30, 18)) == "numeric(30,18)"
    assert Numeric(5, 2).limit == Decimal(1000)
    assert AMOUNT.limit == SOL.limit == COLUMN_LIMIT == BIG


def test_misfit_names_the_first_value_no_column_holds() -> None:
    assert misfit("agent_positions", purchase_price=Decimal(1), peak_price=None) is None
    assert misfit(
        "agent_historical_swaps",
        amount=Decimal(1),
        profit_loss_usd=Decimal("-1.2e12"),
        change_percent=Decimal("1e7"),
    ) == (
        "agent_historical_swaps.profit_loss_usd would be -1200000000000, which numeric(20,8) "
        "cannot hold"
    )
    with pytest.raises(KeyError):
        misfit("agent_positions", no_such_column=Decimal(1))


def _swap(**overrides: Any) -> SwapRow:
    fields = {
        "value_usd": Decimal(1),
        "input_amount": Decimal(1),
        "input_price": Decimal(1),
        "output_amount": Decimal(1),
        "output_price": Decimal(1),
        "network_fee_sol": Decimal("0.000005"),
        "protocol_fee_sol": Decimal(0),
        **overrides,
    }
    base = SwapRow(
        id=UUID(int=1), agent_id=UUID(int=2), wallet_address="w", time=NOW, signal_id=None,
        value_usd=Decimal(1), input_mint="a", input_symbol="A", input_amount=Decimal(1),
        input_price=Decimal(1), output_mint="b", output_symbol="B", output_amount=Decimal(1),
        output_price=Decimal(1), network_fee_sol=Decimal(0), protocol_fee_sol=Decimal(0),
    )  # fmt: skip
    return replace(base, **fields)


@pytest.mark.parametrize(
    ("field", "column"),
    [
        ("value_usd", "transaction_value_usd"),
        ("input_amount", "input_amount"),
        ("input_price", "input_price"),
        ("output_amount", "output_amount"),
        ("output_price", "output_price"),
        ("network_fee_sol", "fees"),  # their sum is checked first
        ("protocol_fee_sol", "fees"),
    ],
)
def test_a_swap_names_its_column_that_cannot_hold_a_value(field: str, column: str) -> None:
    problem = swap_misfit(_swap(**{field: BIG}))
    assert problem is not None
    assert problem.startswith(f"agent_transactions.{column} would be ")


def test_a_swap_whose_fees_fit_apart_but_not_summed_is_refused() -> None:
    half = Decimal("600000000000")
    assert swap_misfit(_swap(network_fee_sol=half)) is None
    assert swap_misfit(_swap(network_fee_sol=half, protocol_fee_sol=half)) == (
        "agent_transactions.fees would be 1200000000000, which numeric(20,8) cannot hold"
    )


def _state(**overrides: Any) -> PositionState:
    fields: dict[str, Any] = {
        "purchase_price": Decimal("0.01"),
        "purchase_amount": Decimal(200),
        "total_invested_sol": Decimal(2),
        **overrides,
    }
    return PositionState(created_at=NOW, **fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("purchase_price", BIG),
        ("purchase_amount", BIG),
        ("current_stop_loss_percentage", Decimal(1000)),
        ("peak_price", BIG),
        ("lowest_price", BIG),
        ("total_invested_sol", BIG),
        ("remaining_amount", BIG),
        ("moon_bag_amount", BIG),
        ("realized_profit_sol", -BIG),
        ("take_profit_proceeds_sol", BIG),
    ],
)
def test_a_position_names_its_column_that_cannot_hold_a_value(field: str, value: Decimal) -> None:
    assert position_misfit(_state()) is None
    problem = position_misfit(_state(**{field: value}))
    assert problem is not None
    assert problem.startswith(f"agent_positions.{field} would be ")


PNL = ExitPnl(
    amount=Decimal(200),
    purchase_price=Decimal("0.01"),
    sale_price=Decimal("0.005"),
    returned_sol=Decimal(1),
    profit_loss_sol=Decimal(-1),
    profit_loss_usd=Decimal(-100),
    change_percent=Decimal(-50),
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", BIG),
        ("purchase_price", BIG),
        ("sale_price", BIG),
        ("change_percent", Decimal(10) ** 6),
        ("profit_loss_usd", Decimal("-1.2e12")),
        ("profit_loss_sol", -BIG),
    ],
)
def test_an_exit_names_its_column_that_cannot_hold_a_value(field: str, value: Decimal) -> None:
    assert exit_misfit(PNL) is None
    problem = exit_misfit(replace(PNL, **{field: value}))
    assert problem is not None
    assert problem.startswith(f"agent_historical_swaps.{field} would be ")


def test_balances_prices_and_snapshots_are_held_to_their_columns() -> None:
    assert balance_misfit(Decimal("999999999999.999999999999999999")) is None
    assert balance_misfit(BIG) == (
        "agent_balances.balance would be 1000000000000, which numeric(30,18) cannot hold"
    )
    assert price_misfit(Decimal("0.5")) is None
    assert price_misfit(Decimal("999999999999.9999999999999999999")) == (
        "token_prices.price_usd would be 999999999999.9999999999999999999, which "
        "numeric(30,18) cannot hold"
    )
    one = Decimal(1)
    assert snapshot_misfit(one, one, one, one) is None
    for i, name in enumerate(
        ["portfolio_balance_sol", "sol_balance", "positions_value_sol", "unrealized_pnl_sol"]
    ):
        values = [one] * 4
        values[i] = BIG
        problem = snapshot_misfit(*values)
        assert problem is not None
        assert problem.startswith(f"agent_balance_snapshots.{name} would be ")


def test_a_trade_is_refused_for_its_first_value_no_column_holds() -> None:
    good, bad = _swap(), _swap(value_usd=BIG)
    assert trade_misfit([good], state=_state(), exit_pnl=PNL, sol_balance=Decimal(5)) is None
    assert trade_misfit([]) is None
    swap_problem = trade_misfit([good, bad], state=_state(total_invested_sol=BIG))
    assert swap_problem is not None
    assert swap_problem.startswith("agent_transactions.transaction_value_usd")
    state_problem = trade_misfit([good], state=_state(total_invested_sol=BIG), exit_pnl=PNL)
    assert state_problem is not None
    assert state_problem.startswith("agent_positions.total_invested_sol")
    exit_problem = trade_misfit(
        [good], exit_pnl=replace(PNL, profit_loss_usd=-BIG), sol_balance=BIG
    )
    assert exit_problem is not None
    assert exit_problem.startswith("agent_historical_swaps.profit_loss_usd")
    balance_problem = trade_misfit([good], state=_state(), sol_balance=BIG)
    assert balance_problem is not None
    assert balance_problem.startswith("agent_balances.balance")


def test_a_fill_is_unstorable_only_when_a_number_is_too_large() -> None:
    fee = Decimal("0.000005")
    fits = buy_fill(Decimal(1), Decimal(1), Decimal(100), network_fee_sol=fee, protocol_fee_bps=0)
    assert (fits.rejection, fits.is_unstorable) == (None, False)
    # Worth 10^12 USD: the transaction value is beyond numeric(20,8).
    worth = buy_fill(Decimal(1), Decimal(1), BIG, network_fee_sol=fee, protocol_fee_bps=0)
    assert worth.rejection is not None
    assert worth.is_unstorable
    # 10^12 tokens, and a price that rounds to 0 SOL: rejected, the first for its size.
    many = buy_fill(Decimal(10), Decimal("1e-9"), Decimal(100), network_fee_sol=fee,
                    protocol_fee_bps=0)  # fmt: skip
    assert many.rejection is not None
    assert many.is_unstorable
    dust = buy_fill(Decimal(1), Decimal("1e-30"), Decimal(100), network_fee_sol=fee,
                    protocol_fee_bps=0)  # fmt: skip
    assert dust.rejection is not None
    assert not dust.is_unstorable


def test_a_fill_with_any_number_at_the_column_limit_is_unstorable() -> None:
    one = Decimal(1)
    for at_limit in ("price_sol", "debit_sol", "value_usd"):
        fields = {"size_sol": one, "token_amount": one, "price_sol": one,
                  "network_fee_sol": Decimal(0), "protocol_fee_sol": Decimal(0),
                  "debit_sol": one, "value_usd": one, at_limit: COLUMN_LIMIT}  # fmt: skip
        assert BuyFill(**fields).is_unstorable, at_limit


@pytest.mark.parametrize("fee", ["network_fee_sol", "protocol_fee_sol"])
def test_each_fee_is_held_to_its_own_column_beside_their_sum(fee: str) -> None:
    """A fee beyond its column is refused even when the other (say, a rebate) brings the
    sum back within `fees`."""
    other = "protocol_fee_sol" if fee == "network_fee_sol" else "network_fee_sol"
    problem = swap_misfit(_swap(**{fee: BIG, other: -Decimal(1)}))
    assert problem is not None
    assert problem.startswith(f"agent_transactions.{fee} would be ")
