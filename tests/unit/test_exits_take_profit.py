"""Take profit: levels, batches, the moon bag, caps, full exits and realized P/L."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from tests.helpers.positions import AVG, make_position
from worker.domain.config import AgentTradingConfig, resolve_config
from worker.domain.exits import (
    TakeProfitOutcome,
    apply_take_profit,
    evaluate_take_profit,
    pending_take_profit_levels,
    price_at_gain,
    take_profit_pnl,
)
from worker.domain.models import PositionState

# Moderate (the default): targets 50/150/300/400 % selling 25/25/25/15 % of the purchase
# amount, moon bag of 10 % once the gain reaches 300 % or the last level.
MODERATE = resolve_config({"takeProfit": {"enabled": True}})
# Two levels of half each, and no moon bag.
HALVES = resolve_config(
    {
        "takeProfit": {
            "enabled": True,
            "mode": "custom",
            "levels": [
                {"targetPercent": 50, "sellPercent": 50},
                {"targetPercent": 100, "sellPercent": 50},
            ],
            "moonBag": {"enabled": False},
        }
    }
)


def at_gain(percent: int | str) -> Decimal:
    """The SOL price that is `percent` % above the 0.001 average."""
    return AVG * (1 + Decimal(percent) / 100)


def evaluate(
    position: PositionState, gain: int | str, cfg: AgentTradingConfig = MODERATE
) -> TakeProfitOutcome:
    outcome = evaluate_take_profit(position, at_gain(gain), cfg)
    assert outcome is not None
    return outcome


def test_first_level_sells_a_quarter_of_the_purchase() -> None:
    # +60 %: only the 50 % level is reached; 25 % of 1000 = 250 tokens, 750 remain.
    outcome = evaluate(make_position(), 60)
    assert [level.target_percent for level in outcome.levels] == [50]
    assert outcome.sell_amount == Decimal(250)
    assert outcome.remaining_amount == Decimal(750)
    assert outcome.levels_hit == 1
    assert not outcome.moon_bag_activated
    assert outcome.moon_bag_amount is None
    assert not outcome.is_full_exit
    assert outcome.gain_pct == Decimal(60)


def test_below_the_next_level_nothing_happens() -> None:
    assert evaluate_take_profit(make_position(), at_gain(49), MODERATE) is None
    assert (
        evaluate_take_profit(make_position(take_profit_levels_hit=1), at_gain(149), MODERATE)
        is None
    )


def test_a_jump_fires_every_level_reached_and_keeps_the_moon_bag() -> None:
    # +400 % from nothing sold: 25+25+25+15 = 90 % = 900 tokens; the bag (10 % = 100) activates
    # (gain >= 300 and the last level), leaving 1000 - 100 = 900 to sell: all 900 go.
    outcome = evaluate(make_position(), 400)
    assert [level.target_percent for level in outcome.levels] == [50, 150, 300, 400]
    assert outcome.sell_amount == Decimal(900)
    assert outcome.remaining_amount == Decimal(100)
    assert outcome.levels_hit == 4
    assert outcome.is_moon_bag_activation
    assert outcome.moon_bag_activated
    assert outcome.moon_bag_amount == Decimal(100)
    assert not outcome.is_full_exit


def test_the_bag_trigger_reserves_tokens_before_the_last_level() -> None:
    # After level 1 (750 left), +300 % fires 150 and 300: 50 % = 500 tokens. The bag activates
    # at the 300 % trigger (100 tokens); 750 - 100 = 650 available, so 500 are sold.
    outcome = evaluate(make_position(remaining_amount=Decimal(750), take_profit_levels_hit=1), 300)
    assert outcome.sell_amount == Decimal(500)
    assert outcome.remaining_amount == Decimal(250)
    assert outcome.levels_hit == 3
    assert outcome.is_moon_bag_activation


def test_the_last_level_sells_down_to_the_bag() -> None:
    # 250 left with a 100-token bag active: the 400 % level wants 15 % = 150 = 250 - 100.
    position = make_position(
        remaining_amount=Decimal(250),
        take_profit_levels_hit=3,
        moon_bag_activated=True,
        moon_bag_amount=Decimal(100),
    )
    outcome = evaluate(position, 400)
    assert outcome.sell_amount == Decimal(150)
    assert outcome.remaining_amount == Decimal(100)
    assert outcome.levels_hit == 4
    assert not outcome.is_moon_bag_activation
    assert outcome.moon_bag_amount == Decimal(100)
    assert not outcome.is_full_exit


def test_exhausted_levels_do_nothing() -> None:
    position = make_position(remaining_amount=Decimal(100), take_profit_levels_hit=4)
    assert evaluate_take_profit(position, at_gain(1000), MODERATE) is None


def test_nothing_to_sell_but_the_bag_does_nothing_and_stores_no_bag() -> None:
    # 100 left, level 4 reached, the bag (100) would activate: nothing is available to sell.
    position = make_position(remaining_amount=Decimal(100), take_profit_levels_hit=3)
    assert evaluate_take_profit(position, at_gain(400), MODERATE) is None


def test_the_sale_is_capped_at_what_is_held() -> None:
    # Only 200 held (e.g. after a manual partial sale): the 250 wanted is cut to 200.
    outcome = evaluate(make_position(remaining_amount=Decimal(200)), 60)
    assert outcome.sell_amount == Decimal(200)
    assert outcome.remaining_amount == 0
    assert outcome.is_full_exit


def test_levels_restart_from_the_batch_after_a_dca() -> None:
    # After a DCA at 2 levels hit: batch start 2, total 2 + 4 = 6; +60 % on the new average
    # fires config level 0 (50 %) again, of the (new) purchase amount.
    position = make_position(
        purchase_amount=Decimal(2000),
        remaining_amount=Decimal(1500),
        take_profit_levels_hit=2,
        tp_batch_start_level=2,
        total_take_profit_levels=6,
    )
    outcome = evaluate(position, 60)
    assert [level.target_percent for level in outcome.levels] == [50]
    assert outcome.sell_amount == Decimal(500)
    assert outcome.levels_hit == 3


# Three levels of a quarter each, no moon bag: the config after an edit that added two.
THREE_QUARTERS = resolve_config(
    {
        "takeProfit": {
            "enabled": True,
            "mode": "custom",
            "levels": [
                {"targetPercent": 50, "sellPercent": 25},
                {"targetPercent": 100, "sellPercent": 25},
                {"targetPercent": 200, "sellPercent": 25},
            ],
            "moonBag": {"enabled": False},
        }
    }
)


def test_levels_added_since_the_total_was_fixed_are_sold_as_the_source_sells_them() -> None:
    # Total fixed at 1 (the last DCA, with one level), none hit; the config now has three
    # levels; +250 %: Nexgent reads on to the end of the current levels and sells all three
    # (75 % of the purchase amount), not only total - hit = 1 of them (25 %).
    position = make_position(take_profit_levels_hit=0, total_take_profit_levels=1)
    outcome = evaluate(position, 250, THREE_QUARTERS)
    assert [level.target_percent for level in outcome.levels] == [50, 100, 200]
    assert outcome.sell_amount == Decimal(750)
    assert (outcome.levels_hit, outcome.remaining_amount) == (3, Decimal(250))
    # levels_hit (3) is past the total (1): take profit has ended for this batch.
    after = apply_take_profit(position, outcome, Decimal(1))
    assert pending_take_profit_levels(after, THREE_QUARTERS) == []
    assert evaluate_take_profit(after, at_gain(10_000), THREE_QUARTERS) is None


def test_a_batch_reads_on_past_the_stored_total_and_activates_the_bag() -> None:
    position = make_position(take_profit_levels_hit=1, total_take_profit_levels=2)
    outcome = evaluate(position, 1000)
    assert [level.target_percent for level in outcome.levels] == [150, 300, 400]
    assert outcome.is_moon_bag_activation  # the last level of the total is reached


def test_full_exit_without_a_moon_bag() -> None:
    outcome = evaluate(make_position(), 120, HALVES)
    assert outcome.sell_amount == Decimal(1000)
    assert outcome.remaining_amount == 0
    assert outcome.is_full_exit
    assert not outcome.moon_bag_activated


def test_dust_left_by_rounding_is_sold_with_the_last_level() -> None:
    position = make_position(purchase_amount=Decimal("1.000000000000000001"))
    first = evaluate(position, 60, HALVES)
    assert first.sell_amount == Decimal("0.5")  # 0.5000000000000000005 rounded down
    after = dataclasses.replace(
        position, remaining_amount=first.remaining_amount, take_profit_levels_hit=first.levels_hit
    )
    last = evaluate(after, 110, HALVES)
    assert last.sell_amount == Decimal("0.500000000000000001")  # 1e-18 of dust swept along
    assert last.is_full_exit


def test_a_last_level_leaving_exactly_the_dust_threshold_keeps_it() -> None:
    # 500 + 1e-9 held, the level sells 50% of 1000 = 500: 1e-9 is left, not less than
    # the 1e-9 threshold, so it is kept (no full exit).
    position = make_position(remaining_amount=Decimal("500.000000001"), take_profit_levels_hit=1)
    outcome = evaluate(position, 100, HALVES)
    assert outcome.sell_amount == Decimal(500)
    assert outcome.remaining_amount == Decimal("1e-9")
    assert not outcome.is_full_exit


def test_a_last_level_leaving_less_than_the_dust_threshold_sells_it() -> None:
    position = make_position(
        remaining_amount=Decimal("500.000000000999999999"), take_profit_levels_hit=1
    )
    outcome = evaluate(position, 100, HALVES)
    assert outcome.sell_amount == Decimal("500.000000000999999999")
    assert outcome.is_full_exit


def test_reaching_the_last_level_activates_the_bag_below_its_trigger() -> None:
    # Moderate levels with the bag's trigger at 1000%: at +400% the fourth level fires and
    # is the last, so the bag (10% of 1000 = 100 tokens) activates although 400 < 1000.
    cfg = resolve_config(
        {"takeProfit": {"enabled": True, "moonBag": {"enabled": True, "triggerPercent": 1000}}}
    )
    position = make_position(remaining_amount=Decimal(250), take_profit_levels_hit=3)
    outcome = evaluate(position, 400, cfg)
    assert outcome.is_moon_bag_activation
    assert outcome.moon_bag_activated
    assert outcome.moon_bag_amount == Decimal(100)
    assert outcome.sell_amount == Decimal(150)
    assert outcome.remaining_amount == Decimal(100)


def test_a_stored_bag_amount_reserves_nothing_until_the_bag_is_active() -> None:
    # A row with a bag amount but no active bag (and the bag off in the config): +60% sells
    # 25% of 1000 = 250 of the 300 held; the 100 stored are neither reserved nor reported.
    cfg = resolve_config({"takeProfit": {"enabled": True, "moonBag": {"enabled": False}}})
    position = make_position(remaining_amount=Decimal(300), moon_bag_amount=Decimal(100))
    outcome = evaluate(position, 60, cfg)
    assert outcome.sell_amount == Decimal(250)
    assert outcome.moon_bag_amount is None
    assert not outcome.moon_bag_activated


def test_preset_modes_use_their_template_levels() -> None:
    aggressive = resolve_config({"takeProfit": {"enabled": True, "mode": "aggressive"}})
    outcome = evaluate(make_position(), 30, aggressive)
    assert [level.target_percent for level in outcome.levels] == [25]
    assert evaluate_take_profit(make_position(), at_gain(30), MODERATE) is None


def test_disabled_take_profit_does_nothing() -> None:
    assert evaluate_take_profit(make_position(), at_gain(1000), resolve_config(None)) is None


def test_partial_sale_pnl_is_proportional_to_the_cost() -> None:
    # Sold 250 of 1000 tokens that cost 1.00001 SOL: cost share 0.2500025; credit 0.3745.
    assert take_profit_pnl(make_position(), Decimal(250), Decimal("0.3745")) == Decimal("0.1244975")


def test_apply_take_profit_updates_the_position() -> None:
    position = make_position()
    outcome = evaluate(position, 400)
    after = apply_take_profit(position, outcome, Decimal("4.5"))
    assert after.remaining_amount == Decimal(100)
    assert after.take_profit_levels_hit == 4
    assert after.moon_bag_activated
    assert after.moon_bag_amount == Decimal(100)
    # 900 of 1000 sold: cost share 0.900009; 4.5 - 0.900009 = 3.599991.
    assert after.realized_profit_sol == Decimal("3.599991")
    assert after.take_profit_proceeds_sol == Decimal("4.5")
    assert after.purchase_price == position.purchase_price
    assert after.total_invested_sol == position.total_invested_sol


amounts = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**9), places=18)
gains = st.integers(min_value=-90, max_value=2000)
bag_configs = st.sampled_from(
    [
        MODERATE,
        resolve_config({"takeProfit": {"enabled": True, "mode": "aggressive"}}),
        resolve_config(
            {
                "takeProfit": {
                    "enabled": True,
                    "mode": "conservative",
                    "moonBag": {"retainPercent": 50},
                }
            }
        ),
        resolve_config({"takeProfit": {"enabled": True, "moonBag": {"enabled": False}}}),
    ]
)


@given(
    amount=amounts,
    held_share=st.integers(min_value=0, max_value=100),
    hit=st.integers(min_value=0, max_value=4),
    bag_share=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
    gain=gains,
    cfg=bag_configs,
)
# a jump over every level (the bag activates and is kept)
@example(amount=Decimal(1000), held_share=100, hit=0, bag_share=None, gain=400, cfg=MODERATE)
# the last level with the bag active, and without a bag (sells the rest)
@example(amount=Decimal(1000), held_share=25, hit=3, bag_share=10, gain=400, cfg=MODERATE)
@example(
    amount=Decimal("1.000000000000000001"),
    held_share=25,
    hit=3,
    bag_share=None,
    gain=2000,
    cfg=resolve_config({"takeProfit": {"enabled": True, "moonBag": {"enabled": False}}}),
)
# only the bag left: nothing to sell
@example(amount=Decimal(1000), held_share=10, hit=3, bag_share=10, gain=2000, cfg=MODERATE)
def test_sales_never_exceed_what_is_held_minus_the_bag(
    amount: Decimal,
    held_share: int,
    hit: int,
    bag_share: int | None,
    gain: int,
    cfg: AgentTradingConfig,
) -> None:
    held = (amount * held_share / 100).quantize(Decimal("1e-18"))
    bag = None if bag_share is None else (amount * bag_share / 100).quantize(Decimal("1e-18"))
    position = make_position(
        purchase_amount=amount,
        remaining_amount=held,
        take_profit_levels_hit=hit,
        moon_bag_activated=bag is not None,
        moon_bag_amount=bag,
    )
    outcome = evaluate_take_profit(position, at_gain(gain), cfg)
    if outcome is None:
        return
    reserve = (
        outcome.moon_bag_amount if outcome.moon_bag_activated and outcome.moon_bag_amount else 0
    )
    assert 0 < outcome.sell_amount <= held - reserve
    assert outcome.remaining_amount == held - outcome.sell_amount
    assert outcome.remaining_amount >= reserve
    assert outcome.levels_hit == hit + len(outcome.levels)
    assert outcome.sell_amount == outcome.sell_amount.quantize(Decimal("1e-18"))
    assert outcome.is_full_exit == (outcome.remaining_amount == 0)


@given(
    hit=st.integers(0, 5),
    batch_start=st.integers(0, 3),
    total=st.one_of(st.none(), st.integers(0, 6)),
)
@example(hit=0, batch_start=0, total=None)
@example(hit=1, batch_start=0, total=None)
@example(hit=4, batch_start=0, total=None)
@example(hit=2, batch_start=2, total=6)
def test_the_next_pending_level_is_the_first_that_a_rise_sells_at(
    hit: int, batch_start: int, total: int | None
) -> None:
    # What `positions list` shows as the next take-profit level is where a sale starts:
    # nothing just below its target, a sale at it; no level left, no sale at any price.
    pos = make_position(
        take_profit_levels_hit=hit, tp_batch_start_level=batch_start,
        total_take_profit_levels=total,
    )  # fmt: skip
    pending = pending_take_profit_levels(pos, MODERATE)
    if not pending:
        assert evaluate_take_profit(pos, at_gain(10_000), MODERATE) is None
        return
    target = pending[0].target_percent
    below = price_at_gain(pos, target - Decimal("0.0001"))
    assert evaluate_take_profit(pos, below, MODERATE) is None
    sold = evaluate_take_profit(pos, price_at_gain(pos, target), MODERATE)
    assert sold is not None and sold.levels == (pending[0],)


def test_no_level_is_pending_with_take_profit_off() -> None:
    assert pending_take_profit_levels(make_position(), AgentTradingConfig()) == []
    assert len(pending_take_profit_levels(make_position(), MODERATE)) == 4
