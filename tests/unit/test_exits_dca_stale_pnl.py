"""DCA, stale trades, lowest price, opening a position and the P/L of a full exit."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.helpers.positions import AVG, T0
from tests.helpers.positions import make_position as position
from worker.domain.config import resolve_config
from worker.domain.exits import (
    DcaOutcome,
    ExitPnl,
    apply_dca,
    apply_take_profit,
    evaluate_dca,
    evaluate_take_profit,
    full_exit_pnl,
    gain_pct,
    is_stale,
    lowest_price,
    open_position,
)
from worker.domain.fills import buy_fill, sell_fill, token_price_sol
from worker.domain.models import PositionState
from worker.domain.money import MATH_CONTEXT

NOW = T0 + timedelta(hours=2)

# Moderate DCA: two levels, each at -20 % from the (current) average buying 75 % more.
DCA = resolve_config({"dca": {"enabled": True}})


def make_position(**changes: Any) -> PositionState:
    """The shared position, bought for exactly 1 SOL (round P/L figures)."""
    return position(**{"total_invested_sol": Decimal("1.00000000"), **changes})


# --- DCA ---------------------------------------------------------------------------------


def test_dca_triggers_at_the_drop_and_buys_a_share_of_the_holding() -> None:
    # -20 %: price 0.0008 SOL; buy 0.0008 x 1000 tokens x 75 % = 0.6 SOL.
    outcome = evaluate_dca(make_position(), Decimal("0.0008"), NOW, DCA)
    assert outcome is not None
    assert outcome == DcaOutcome(
        level_index=0, level=outcome.level, gain_pct=Decimal("-20.0000"), buy_sol=Decimal("0.6")
    )
    assert (outcome.level.drop_percent, outcome.level.buy_percent) == (Decimal(-20), Decimal(75))


def test_dca_waits_until_the_drop_is_reached() -> None:
    assert evaluate_dca(make_position(), Decimal("0.00081"), NOW, DCA) is None


def test_dca_buys_a_share_of_the_remaining_amount() -> None:
    # 500 tokens left after take profit: 0.0008 x 500 x 75 % = 0.3 SOL.
    outcome = evaluate_dca(
        make_position(remaining_amount=Decimal(500)), Decimal("0.0008"), NOW, DCA
    )
    assert outcome is not None
    assert outcome.buy_sol == Decimal("0.3")


def test_dca_stops_after_the_template_levels() -> None:
    # Moderate has 2 levels, so a third DCA never happens although maxDCACount is 3.
    assert evaluate_dca(make_position(dca_count=2), Decimal("0.0001"), NOW, DCA) is None


def test_dca_stops_at_max_dca_count() -> None:
    cfg = resolve_config({"dca": {"enabled": True, "mode": "aggressive", "maxDCACount": 1}})
    assert evaluate_dca(make_position(dca_count=1), Decimal("0.0001"), NOW, cfg) is None
    assert evaluate_dca(make_position(dca_count=0), Decimal("0.0009"), NOW, cfg) is not None


@pytest.mark.parametrize(
    ("since_last", "fires"),
    [(timedelta(seconds=29, microseconds=999999), False), (timedelta(seconds=30), True)],
)
def test_dca_respects_the_cooldown(since_last: timedelta, fires: bool) -> None:
    position = make_position(dca_count=1, last_dca_time=NOW - since_last)
    assert (evaluate_dca(position, Decimal("0.0008"), NOW, DCA) is not None) is fires


def test_dca_skips_a_position_that_is_only_its_moon_bag() -> None:
    position = make_position(
        remaining_amount=Decimal("100.0000001"),
        moon_bag_activated=True,
        moon_bag_amount=Decimal(100),
    )
    assert evaluate_dca(position, Decimal("0.0005"), NOW, DCA) is None


def test_dca_buys_when_the_holding_is_exactly_the_bag_only_margin_above_the_bag() -> None:
    # 1e-6 tokens above the bag is not "within 1e-6": the holding still buys.
    position = make_position(
        remaining_amount=Decimal("100.000001"),
        moon_bag_activated=True,
        moon_bag_amount=Decimal(100),
    )
    outcome = evaluate_dca(position, Decimal("0.0008"), NOW, DCA)
    assert outcome is not None
    assert outcome.buy_sol == Decimal("0.06")  # 0.0008 x 100.000001 x 75% = 0.0600000006


def test_dca_buys_for_an_active_bag_with_more_tokens_than_the_bag() -> None:
    position = make_position(
        remaining_amount=Decimal(300), moon_bag_activated=True, moon_bag_amount=Decimal(100)
    )
    outcome = evaluate_dca(position, Decimal("0.0008"), NOW, DCA)
    assert outcome is not None
    assert outcome.buy_sol == Decimal("0.18")  # 0.0008 x 300 x 75%


def test_dca_ignores_a_stored_bag_amount_while_the_bag_is_not_active() -> None:
    position = make_position(remaining_amount=Decimal(100), moon_bag_amount=Decimal(100))
    outcome = evaluate_dca(position, Decimal("0.0008"), NOW, DCA)
    assert outcome is not None
    assert outcome.buy_sol == Decimal("0.06")


def test_a_dca_of_less_than_1e8_sol_is_skipped_not_bought() -> None:
    # One token at 1e-9 SOL, -20%: 8e-10 x 1 x 75% = 6e-10 SOL rounds to 0 at 8 places.
    position = make_position(purchase_price=Decimal("1e-9"), purchase_amount=Decimal(1))
    assert evaluate_dca(position, Decimal("8e-10"), NOW, DCA) is None


def test_dca_disabled_does_nothing() -> None:
    assert evaluate_dca(make_position(), Decimal("0.0001"), NOW, resolve_config(None)) is None


def test_dca_custom_levels_in_order() -> None:
    cfg = resolve_config(
        {
            "dca": {
                "enabled": True,
                "mode": "custom",
                "levels": [
                    {"dropPercent": -10, "buyPercent": 50},
                    {"dropPercent": -30, "buyPercent": 200},
                ],
            }
        }
    )
    second = evaluate_dca(make_position(dca_count=1), Decimal("0.0007"), NOW, cfg)
    assert second is not None
    assert second.level_index == 1
    assert second.buy_sol == Decimal("1.4")  # 0.0007 x 1000 x 200 %
    assert evaluate_dca(make_position(dca_count=1), Decimal("0.00071"), NOW, cfg) is None


def test_apply_dca_averages_in_the_buy_with_its_fees() -> None:
    # 0.6 SOL at 0.08 USD/token with SOL at 100 USD: 750 tokens, debit 0.6 + 0.000005.
    fill = buy_fill(
        Decimal("0.6"),
        Decimal("0.08"),
        Decimal(100),
        network_fee_sol=Decimal("0.000005"),
        protocol_fee_bps=0,
    )
    assert fill.token_amount == Decimal(750)
    position = make_position(
        take_profit_levels_hit=1,
        peak_price=Decimal("0.0012"),
        current_stop_loss_percentage=Decimal(-32),
    )
    after = apply_dca(position, fill, now=NOW, cfg=DCA)
    # invested 1 + 0.600005 = 1.600005 over 1750 tokens = 0.000914288571428571... SOL/token.
    assert after.total_invested_sol == Decimal("1.600005")
    assert after.purchase_amount == Decimal(1750)
    assert after.purchase_price == Decimal("0.000914288571428571")
    assert after.remaining_amount is None
    assert after.dca_count == 1
    assert after.last_dca_time == NOW
    assert (after.tp_batch_start_level, after.total_take_profit_levels) == (1, 5)
    assert after.peak_price == Decimal("0.0012")
    assert after.current_stop_loss_percentage == Decimal(-32)


def test_apply_dca_grows_a_set_remaining_amount() -> None:
    fill = buy_fill(
        Decimal("0.3"),
        Decimal("0.08"),
        Decimal(100),
        network_fee_sol=Decimal(0),
        protocol_fee_bps=0,
    )
    after = apply_dca(make_position(remaining_amount=Decimal(500)), fill, now=NOW, cfg=DCA)
    assert after.remaining_amount == Decimal(875)
    assert after.purchase_amount == Decimal(1375)


# --- stale trades ----------------------------------------------------------------------------

# Defaults: enabled, held >= 60 minutes, gain within [1 %, 10 %].
DEFAULTS = resolve_config(None)


@pytest.mark.parametrize(
    ("held", "price", "stale"),
    [
        (timedelta(minutes=61), "0.00105", True),  # +5 %
        (timedelta(minutes=60), "0.00101", True),  # exactly 60 minutes and +1 %: inclusive
        (timedelta(minutes=61), "0.0011", True),  # +10 % inclusive
        (timedelta(minutes=59, seconds=59), "0.00105", False),  # too young
        (timedelta(minutes=61), "0.001005", False),  # +0.5 %
        (timedelta(minutes=61), "0.0011001", False),  # +10.01 %
        (timedelta(minutes=61), "0.0009", False),  # a loss
    ],
)
def test_stale_trade_window(held: timedelta, price: str, stale: bool) -> None:
    assert is_stale(make_position(), Decimal(price), T0 + held, DEFAULTS) is stale


def test_stale_trade_may_close_losses_when_configured() -> None:
    cfg = resolve_config({"staleTrade": {"minProfitPercent": -15, "maxProfitPercent": -5}})
    assert is_stale(make_position(), Decimal("0.0009"), NOW, cfg)


def test_stale_trade_disabled() -> None:
    cfg = resolve_config({"staleTrade": {"enabled": False}})
    assert not is_stale(make_position(), Decimal("0.00105"), NOW, cfg)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^datetimes must be timezone-aware \(UTC\)$"):
        is_stale(make_position(), Decimal("0.00105"), datetime(2025, 1, 2), DEFAULTS)  # noqa: DTZ001


# --- small helpers ---------------------------------------------------------------------------


def test_lowest_price() -> None:
    assert lowest_price(make_position(), Decimal("0.002")) == Decimal("0.002")
    low = make_position(lowest_price=Decimal("0.0009"))
    assert lowest_price(low, Decimal("0.002")) == Decimal("0.0009")
    assert lowest_price(low, Decimal("0.0008")) == Decimal("0.0008")


def test_gain_pct() -> None:
    assert gain_pct(make_position(), Decimal("0.0015")) == Decimal("50.0000")


def test_open_position_from_a_buy() -> None:
    fill = buy_fill(
        Decimal("0.1"),
        Decimal("0.0002"),
        Decimal(150),
        network_fee_sol=Decimal("0.000005"),
        protocol_fee_bps=100,
    )
    position = open_position(fill, created_at=T0, cfg=DEFAULTS)
    assert position == PositionState(
        purchase_price=Decimal("0.000001333333333333"),
        purchase_amount=Decimal(75000),
        total_invested_sol=Decimal("0.101005"),
        created_at=T0,
        current_stop_loss_percentage=Decimal("-32.00"),
        peak_price=Decimal("0.000001333333333333"),
        lowest_price=Decimal("0.000001333333333333"),
    )
    no_stop = open_position(
        fill, created_at=T0, cfg=resolve_config({"stopLoss": {"enabled": False}})
    )
    assert no_stop.current_stop_loss_percentage is None
    assert no_stop.peak_price is None


# --- P/L of a full exit ----------------------------------------------------------------------


def test_full_exit_pnl_counts_every_sol_the_position_returned() -> None:
    # Cost 1.00001 SOL; take profit returned 0.5, the closing sale 0.8: 1.3 back,
    # P/L 0.29999 SOL = 29.9987 % of the cost; at 150 USD/SOL 44.9985 USD; 1.3/1000 SOL per token.
    position = make_position(
        total_invested_sol=Decimal("1.00001"), take_profit_proceeds_sol=Decimal("0.5")
    )
    assert full_exit_pnl(position, Decimal("0.8"), Decimal(150)) == ExitPnl(
        amount=Decimal(1000),
        purchase_price=AVG,
        sale_price=Decimal("0.0013"),
        returned_sol=Decimal("1.3"),
        profit_loss_sol=Decimal("0.29999"),
        profit_loss_usd=Decimal("44.9985"),
        change_percent=Decimal("29.9987"),
    )


def test_full_exit_pnl_of_a_loss() -> None:
    # Stop loss at -32 %: 1 SOL in, 0.679995 SOL back.
    pnl = full_exit_pnl(make_position(), Decimal("0.679995"), Decimal(100))
    assert pnl.profit_loss_sol == Decimal("-0.320005")
    assert pnl.profit_loss_usd == Decimal("-32.0005")
    assert pnl.change_percent == Decimal("-32.0005")


def test_full_exit_pnl_of_a_position_that_cost_nothing_has_no_change_percent() -> None:
    pnl = full_exit_pnl(make_position(total_invested_sol=Decimal(0)), Decimal("0.5"), Decimal(100))
    assert pnl.profit_loss_sol == Decimal("0.5")
    assert pnl.change_percent == 0


def test_change_percent_is_clamped_to_its_column() -> None:
    pnl = full_exit_pnl(
        make_position(total_invested_sol=Decimal("0.00000001")), Decimal(1000), Decimal(1)
    )
    assert pnl.change_percent == Decimal("999999.9999")


sol = st.decimals(min_value=Decimal(0), max_value=Decimal(10_000), places=8)


@given(invested=sol.filter(lambda v: v > 0), proceeds=sol, credit=sol)
# a change beyond numeric(10,4) (clamped), nothing back, everything back
@example(invested=Decimal("0.00000001"), proceeds=Decimal(10_000), credit=Decimal(10_000))
@example(invested=Decimal(10_000), proceeds=Decimal(0), credit=Decimal(0))
@example(invested=Decimal(1), proceeds=Decimal("0.5"), credit=Decimal("0.5"))
def test_pnl_is_what_came_back_minus_what_it_cost(
    invested: Decimal, proceeds: Decimal, credit: Decimal
) -> None:
    position = make_position(total_invested_sol=invested, take_profit_proceeds_sol=proceeds)
    pnl = full_exit_pnl(position, credit, Decimal("123.45"))
    assert pnl.profit_loss_sol == proceeds + credit - invested
    assert pnl.returned_sol == proceeds + credit
    assert pnl.profit_loss_sol == pnl.profit_loss_sol.quantize(Decimal("1e-8"))
    assert pnl.change_percent.as_tuple().exponent == -4
    assert pnl.profit_loss_usd.as_tuple().exponent == -8


TAKE_PROFIT = resolve_config({"takeProfit": {"enabled": True, "mode": "aggressive"}})


@given(
    size=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(5), places=8),
    token_usd=st.decimals(min_value=Decimal("1e-8"), max_value=Decimal(10), places=12),
    sol_usd=st.decimals(min_value=Decimal(20), max_value=Decimal(500), places=4),
    moves=st.lists(st.integers(min_value=50, max_value=400), max_size=6),
    fee_bps=st.integers(min_value=0, max_value=200),
)
# every aggressive level then the close; no level at all; a sale at the buy price
@example(
    size=Decimal("0.5"), token_usd=Decimal("0.001"), sol_usd=Decimal(100),
    moves=[125, 150, 200, 250, 400], fee_bps=100,
)  # fmt: skip
@example(size=Decimal("0.01"), token_usd=Decimal(10), sol_usd=Decimal(20), moves=[], fee_bps=0)
@example(size=Decimal(5), token_usd=Decimal("1e-8"), sol_usd=Decimal(500), moves=[100], fee_bps=200)
def test_a_position_returns_what_its_pnl_says(
    size: Decimal, token_usd: Decimal, sol_usd: Decimal, moves: list[int], fee_bps: int
) -> None:
    """Buy, take profit along a price path, close: P/L equals the wallet's SOL change."""
    with localcontext(MATH_CONTEXT):  # 30-digit token amounts: sum them without rounding
        _run_lifecycle(size, token_usd, sol_usd, moves, fee_bps)


def _run_lifecycle(
    size: Decimal, token_usd: Decimal, sol_usd: Decimal, moves: list[int], fee_bps: int
) -> None:
    network = Decimal("0.000005")
    fill = buy_fill(size, token_usd, sol_usd, network_fee_sol=network, protocol_fee_bps=fee_bps)
    if fill.rejection is not None:
        return
    position = open_position(fill, created_at=T0, cfg=TAKE_PROFIT)
    sol_change = -fill.debit_sol
    tokens_sold = Decimal(0)
    price_usd = token_usd
    closing_credit: Decimal | None = None
    for percent in moves:
        price_usd = token_usd * percent / 100
        outcome = evaluate_take_profit(position, token_price_sol(price_usd, sol_usd), TAKE_PROFIT)
        if outcome is None:
            continue
        sale = sell_fill(
            outcome.sell_amount,
            price_usd,
            sol_usd,
            network_fee_sol=network,
            protocol_fee_bps=fee_bps,
        )
        assert sale.rejection is None
        sol_change += sale.credit_sol
        tokens_sold += sale.token_amount
        if outcome.is_full_exit:
            closing_credit = sale.credit_sol
            break
        position = apply_take_profit(position, outcome, sale.credit_sol)
    if closing_credit is None:
        sale = sell_fill(
            position.held_amount,
            price_usd,
            sol_usd,
            network_fee_sol=network,
            protocol_fee_bps=fee_bps,
        )
        sol_change += sale.credit_sol
        tokens_sold += sale.token_amount
        closing_credit = sale.credit_sol
    pnl = full_exit_pnl(position, closing_credit, sol_usd)
    assert pnl.profit_loss_sol == sol_change
    assert tokens_sold == fill.token_amount
