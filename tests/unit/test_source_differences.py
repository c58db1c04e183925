"""Where the worker departs from the source's behaviour on purpose, pinned, and the README's
list of differences (`## Trading rules, and where this worker differs from its source on
purpose`) naming each of them with its reason."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.unit.test_eligibility import make_agent, make_signal
from tests.unit.test_prices import BOUGHT, _handle, _position, _store
from worker.domain.config import resolve_config
from worker.domain.eligibility import decide
from worker.domain.exits import evaluate_stop_loss, evaluate_take_profit
from worker.domain.models import ExecutionStatus, PositionState

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULTS = resolve_config(None)


def test_the_stop_loss_runs_below_the_sources_1e_15_sol_floor() -> None:
    # The source skipped the stop loss below 1e-15 SOL (its float division); the worker's
    # arithmetic is exact, so a position bought at 1e-16 SOL is stopped out at -40%.
    price = Decimal("1e-16")
    position = PositionState(
        purchase_price=price,
        purchase_amount=Decimal(10) ** 15,
        total_invested_sol=Decimal("0.1"),
        created_at=BOUGHT,
        current_stop_loss_percentage=Decimal(-32),
        peak_price=price,
    )
    outcome = evaluate_stop_loss(position, price * Decimal("0.6"), DEFAULTS)
    assert outcome.is_triggered
    assert outcome.stop_price == price * Decimal("0.68")


def test_a_sol_balance_above_a_million_is_sol_not_lamports() -> None:
    # The source read 2,000,000 as lamports (0.002 SOL, below the 0.5 minimum) and refused
    # the buy; here it is 2,000,000 SOL: the large tier buys (1.5 to 2.0 SOL).
    decision = decide(make_signal(), make_agent(sol_balance=Decimal(2_000_000)), DEFAULTS,
                      seed=b"seed")  # fmt: skip
    assert decision.status is ExecutionStatus.SUCCESS
    assert decision.size_sol is not None and Decimal("1.5") <= decision.size_sol <= 2


def test_a_take_profit_batch_leaving_dust_sells_it_all() -> None:
    # 1000 tokens, all but 5e-10 already sold: a last level selling its share leaves less
    # than 1e-9 tokens and no moon bag, so the whole remainder goes.
    cfg = resolve_config({"takeProfit": {"enabled": True, "mode": "custom", "moonBag": {
        "enabled": False}, "levels": [{"targetPercent": 50, "sellPercent": 100}]}})  # fmt: skip
    held = Decimal(1000) + Decimal("5e-10")
    position = PositionState(purchase_price=Decimal("0.001"), purchase_amount=Decimal(1000),
                             total_invested_sol=Decimal(1), created_at=BOUGHT,
                             remaining_amount=held)  # fmt: skip
    outcome = evaluate_take_profit(position, Decimal("0.002"), cfg)
    assert outcome is not None
    assert (outcome.sell_amount, outcome.remaining_amount) == (held, Decimal(0))
    assert outcome.is_full_exit


async def test_dca_after_a_take_profit_sale_buys_at_the_first_tick_that_triggers_it() -> None:
    # The source's DCA pre-check read a balance cache the take-profit sale had cleared (an
    # empty entry is 0 SOL to it), so a DCA due after the sale was skipped; here the tick
    # after the sale (-25%) buys.
    store = _store()
    config = {"takeProfit": {"enabled": True}, "dca": {"enabled": True},
              "stopLoss": {"enabled": False}, "staleTrade": {"enabled": False}}  # fmt: skip
    p = _position(store, config)
    sold = await _handle(store, "1.6", BOUGHT + timedelta(seconds=1))  # +60%: level 1
    assert sold.partial_sales == 1
    bought = await _handle(store, "0.75", BOUGHT + timedelta(seconds=2))  # -25%: DCA level 1
    assert bought.dca_buys == 1
    assert store.positions[p.id].state.dca_count == 1


def _differences() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Trading rules, and where this worker differs from its source")
    end = text.index("\n## ", start + 1)
    return text[start:end]


@pytest.mark.parametrize(
    "declared",
    [
        r"Take profit after a config change reads on to the end of the current levels",
        r"take-profit batch leaving dust sells it.*less than 1e-9\s+tokens",
        r"stop loss runs at any purchase price.*skipped it below 1e-15 SOL",
        r"SOL balance is read as SOL.*above 1e6 as\s+lamports",
        r"DCA reads the stored SOL balance.*cache",
    ],
)
def test_the_readme_declares_each_difference_with_its_reason(declared: str) -> None:
    assert re.search(declared, _differences(), flags=re.DOTALL | re.IGNORECASE), declared


@pytest.mark.parametrize(
    "declared",
    [
        r"fractional\s+`dca.maxDCACount` counts as its ceiling",
        r"`purchaseLimits.maxPurchasePerToken` above 10\^12 SOL.*clamped to 10\^12",
        r"custom stop-loss level's `change`",
        r"last valid config",
    ],
)
def test_the_readme_declares_each_config_reading(declared: str) -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("An agent's trading rules live in `agents.trading_config`")
    section = text[start : text.index("\n## ", start)]
    assert re.search(declared, section, flags=re.DOTALL), declared
