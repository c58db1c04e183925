"""The per-tick plan: order of stop loss, take profit, stale trade, DCA and lowest price."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.helpers.ticks import FEES, NOW, SOL_USD, plan_at, position
from worker.domain.config import resolve_config
from worker.domain.models import CloseReason, PositionState, PriceTick
from worker.domain.money import to_price
from worker.domain.ticks import is_quiet, quiet_band, quiet_trail
from worker.messages import decode_price


def plan(
    pos: PositionState,
    usd: str,
    config: dict[str, Any] | None = None,
    balance: Decimal = Decimal(10),
) -> Any:
    return plan_at(pos, Decimal(usd), config, balance=balance)


def test_a_quiet_tick_only_moves_the_lowest_price() -> None:
    result = plan(position(), "0.9")
    assert not result.moves_money
    assert result.final is not None
    assert result.final.lowest_price == Decimal("0.009")
    assert result.final.current_stop_loss_percentage == Decimal(-32)


def test_the_stop_loss_sells_everything_and_ends_the_tick() -> None:
    # 200 tokens at 0.0067 SOL: 1.34 SOL gross, 1.339995 net; P/L against 2.000005.
    result = plan(position(), "0.67", {"dca": {"enabled": True}})
    assert result.final is None
    [sale] = result.sales
    assert sale.close_reason is CloseReason.STOP_LOSS
    assert sale.fill.token_amount == 200
    assert sale.fill.credit_sol == Decimal("1.339995")
    assert sale.pnl is not None
    assert sale.pnl.profit_loss_sol == Decimal("1.339995") - Decimal("2.000005")
    assert result.dca is None  # the tick ended with the sale


def test_take_profit_then_stale_close_in_one_tick() -> None:
    # +60% sells 25% (50 tokens at 0.016 = 0.8 SOL gross); the position is old enough
    # and, at 60% gain, inside a 1..100% stale window: the other 150 tokens go too.
    config = {
        "takeProfit": {"enabled": True},
        "stopLoss": {"enabled": False},
        "staleTrade": {
            "enabled": True,
            "minHoldTimeMinutes": 1,
            "minProfitPercent": 1,
            "maxProfitPercent": 100,
        },
    }
    result = plan(position(), "1.6", config)
    assert [s.fill.token_amount for s in result.sales] == [50, 150]
    assert [s.close_reason for s in result.sales] == [None, CloseReason.STALE_TRADE]
    returned = Decimal("0.8") - FEES.network_fee_sol + Decimal("2.4") - FEES.network_fee_sol
    assert result.sales[-1].pnl is not None
    assert result.sales[-1].pnl.profit_loss_sol == returned - Decimal("2.000005")


def test_dca_is_skipped_when_the_balance_cannot_pay_it() -> None:
    # -20% on the moderate template buys 0.008 x 200 x 75% = 1.2 SOL.
    config = {"dca": {"enabled": True}, "stopLoss": {"enabled": False}}
    poor = plan(position(), "0.8", config, balance=Decimal("1.2"))
    assert poor.dca is None and poor.dca_skipped_reason is not None
    rich = plan(position(), "0.8", config, balance=Decimal("1.200005"))
    assert rich.dca is not None and rich.dca.debit_sol == Decimal("1.200005")
    assert rich.final is not None and rich.final.dca_count == 1


@given(
    st.lists(
        st.decimals(min_value=Decimal("0.05"), max_value=Decimal(20), places=4),
        min_size=1,
        max_size=30,
    )
)
# Up to +86% (the exponential boost's first whole point: stop +71.90%), a level sold at
# +50%, back down to the raised stop: every step of the ratchet and the closing sale.
@example([Decimal("1.5"), Decimal("1.86"), Decimal("1.7"), Decimal("1.719")])
# Straight to the default stop (-32%), then nothing more to sell.
@example([Decimal("0.68"), Decimal("0.5")])
# Every level at once (+400%, the bag keeps 10%), then a fall.
@example([Decimal(5), Decimal("0.05")])
def test_a_price_path_never_loosens_the_stop_and_never_sells_more_than_held(
    path: list[Decimal],
) -> None:
    config = {"takeProfit": {"enabled": True}, "stopLoss": {"mode": "exponential"}}
    state: PositionState | None = position()
    sold = Decimal(0)
    for price in path:
        assert state is not None
        before = state.current_stop_loss_percentage
        result = plan(state, str(price), config)
        sold += sum((s.fill.token_amount for s in result.sales), Decimal(0))
        assert sold <= 200
        if result.final is None:
            break
        after = result.final.current_stop_loss_percentage
        assert before is not None and after is not None and after >= before
        state = result.final


_MODES = st.sampled_from(["fixed", "exponential", "zones", "custom"])


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(_MODES)
    stop: dict[str, Any] = {"enabled": draw(st.booleans()), "mode": mode}
    if mode == "custom":
        stop["trailingLevels"] = [{"change": 60, "stopLoss": 40}, {"change": 15, "stopLoss": 5}]
    return {
        "stopLoss": stop,
        "takeProfit": {"enabled": draw(st.booleans())},
        "dca": {"enabled": draw(st.booleans())},
        "staleTrade": {"enabled": draw(st.booleans()), "minHoldTimeMinutes": 1},
    }


def _only(**sections: dict[str, Any]) -> dict[str, Any]:
    """A config of the property test below: stale trades after 1 minute, the rest as given."""
    off = {"enabled": False}
    return {
        "stopLoss": off,
        "takeProfit": off,
        "dca": off,
        "staleTrade": {"enabled": True, "minHoldTimeMinutes": 1},
    } | sections


_ON = {"enabled": True}


# Ranges around the purchase price (0.01 SOL), where most ticks of real positions fall.
@given(
    _configs(),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.013"), places=6),
    st.decimals(min_value=Decimal(-32), max_value=Decimal(20), places=2),
    st.decimals(min_value=Decimal("0.005"), max_value=Decimal("0.015"), places=6),
    st.integers(min_value=0, max_value=600),
)
# The boundaries (tests/unit/test_quiet_shortcut.py has them all, one step inside too):
# the stale window's ends (+1%, +10%) exactly 60 s old,
@example(_only(), Decimal("0.01"), Decimal(-32), Decimal("0.0101"), 60)
@example(_only(), Decimal("0.01"), Decimal(-32), Decimal("0.011"), 60)
# a fixed and a custom stop's trailing start, the stop itself,
@example(_only(stopLoss=_ON), Decimal("0.012"), Decimal(-32), Decimal("0.0119"), 0)
@example(
    _only(stopLoss={"mode": "custom", "trailingLevels": [{"change": 60, "stopLoss": 40},
                                                          {"change": 15, "stopLoss": 5}]}),
    Decimal("0.0115"), Decimal(-32), Decimal("0.011"), 0,
)  # fmt: skip
@example(_only(stopLoss=_ON), Decimal("0.01"), Decimal(-32), Decimal("0.0068"), 0)
# the first take-profit level (+50%) and the first DCA drop (-20%).
@example(_only(takeProfit=_ON), Decimal("0.01"), Decimal(-32), Decimal("0.015"), 0)
@example(_only(dca=_ON), Decimal("0.01"), Decimal(-32), Decimal("0.008"), 0)
def test_a_quiet_tick_is_one_the_full_plan_neither_trades_nor_moves_the_stop_on(
    config: dict[str, Any], peak: Decimal, stop_pct: Decimal, price: Decimal, age_s: int
) -> None:
    cfg = resolve_config(config)
    pos = position(
        peak_price=peak,
        current_stop_loss_percentage=stop_pct,
        created_at=NOW - timedelta(seconds=age_s),
    )
    band = quiet_band(cfg)
    if not is_quiet(pos, price, NOW, band):
        return
    result = plan_at(pos, price * SOL_USD, cfg)
    assert not result.moves_money
    assert result.final is not None
    trailed_peak, trailed_low = quiet_trail(pos, to_price(price), band)
    assert result.final.current_stop_loss_percentage == pos.current_stop_loss_percentage
    assert result.final.peak_price == trailed_peak
    assert result.final.lowest_price == trailed_low


def test_the_positions_query_names_the_sol_mint_it_inlines() -> None:
    from worker.db.positions import SELECT_AND_LOCK
    from worker.domain.models import SOL_MINT

    assert f"'{SOL_MINT}'" in SELECT_AND_LOCK


def test_a_tick_message_becomes_a_domain_tick_observed_at_its_ts_else_at_its_record_time() -> None:
    mint = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
    received = NOW + timedelta(seconds=5)
    stamped = decode_price(f'{{"token_address": "{mint}", "price_usd": "0.52", '
                           '"ts": "2026-11-26T12:00:00Z"}'.encode())  # fmt: skip
    bare = decode_price(f'{{"token_address": " {mint} ", "price_usd": 0.5}}'.encode())
    assert stamped.to_domain(received_at=received) == PriceTick(mint, Decimal("0.52"), NOW)
    assert bare.to_domain(received_at=received) == PriceTick(mint, Decimal("0.5"), received)
