"""The ledger rules of `worker.domain.ledger` and the agent row's view as a subscriber: the
rows a buy or a sale writes, and how balance moves are merged before a store writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from worker.domain.fills import BuyFill, SellFill
from worker.domain.ledger import BalanceDelta, SwapOwner, SwapRow, buy_rows, merge_deltas, sale_rows
from worker.domain.models import SOL_MINT, SOL_SYMBOL, Subscriber
from worker.domain.records import AgentRow

AGENT = UUID(int=1)
USER = UUID(int=2)
POSITION = UUID(int=3)
TX = UUID(int=4)
TOKEN = "Tok1111111111111111111111111111111111111111"
AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOLDING = SwapOwner(AGENT, "sim_wallet", TOKEN, "TOK", 42, POSITION)

BUY = BuyFill(
    size_sol=Decimal("0.5"),
    token_amount=Decimal("1234.5"),
    price_sol=Decimal("0.000405"),
    network_fee_sol=Decimal("0.000005"),
    protocol_fee_sol=Decimal("0.0025"),
    debit_sol=Decimal("0.502505"),
    value_usd=Decimal("75.25"),
)
SALE = SellFill(
    token_amount=Decimal("600"),
    gross_sol=Decimal("0.3"),
    price_sol=Decimal("0.0005"),
    network_fee_sol=Decimal("0.000005"),
    protocol_fee_sol=Decimal("0.0015"),
    credit_sol=Decimal("0.29848"),
    value_usd=Decimal("45.1"),
)


def test_a_buy_swaps_sol_for_the_token_and_debits_fees_too() -> None:
    swap, deltas = buy_rows(TX, HOLDING, BUY, AT)
    assert swap == SwapRow(
        id=TX, agent_id=AGENT, wallet_address="sim_wallet", time=AT, signal_id=42,
        value_usd=Decimal("75.25"),
        input_mint=SOL_MINT, input_symbol=SOL_SYMBOL, input_amount=Decimal("0.5"),
        input_price=Decimal(1),
        output_mint=TOKEN, output_symbol="TOK", output_amount=Decimal("1234.5"),
        output_price=Decimal("0.000405"),
        network_fee_sol=Decimal("0.000005"), protocol_fee_sol=Decimal("0.0025"),
        position_id=POSITION, is_dca=False, is_take_profit=False,
    )  # fmt: skip
    assert deltas == [
        BalanceDelta(AGENT, "sim_wallet", SOL_MINT, SOL_SYMBOL, Decimal("-0.502505")),
        BalanceDelta(AGENT, "sim_wallet", TOKEN, "TOK", Decimal("1234.5")),
    ]


def test_a_dca_buy_is_marked_as_one() -> None:
    swap, _ = buy_rows(TX, HOLDING, BUY, AT, is_dca=True)
    assert swap.is_dca
    assert not swap.is_take_profit


def test_a_sale_swaps_the_token_for_gross_sol_and_credits_the_net() -> None:
    swap, deltas = sale_rows(TX, HOLDING, SALE, AT, is_take_profit=False)
    assert swap == SwapRow(
        id=TX, agent_id=AGENT, wallet_address="sim_wallet", time=AT, signal_id=42,
        value_usd=Decimal("45.1"),
        input_mint=TOKEN, input_symbol="TOK", input_amount=Decimal("600"),
        input_price=Decimal("0.0005"),
        output_mint=SOL_MINT, output_symbol=SOL_SYMBOL, output_amount=Decimal("0.3"),
        output_price=Decimal(1),
        network_fee_sol=Decimal("0.000005"), protocol_fee_sol=Decimal("0.0015"),
        position_id=POSITION, is_dca=False, is_take_profit=False,
    )  # fmt: skip
    assert deltas == [
        BalanceDelta(AGENT, "sim_wallet", TOKEN, "TOK", Decimal("-600")),
        BalanceDelta(AGENT, "sim_wallet", SOL_MINT, SOL_SYMBOL, Decimal("0.29848")),
    ]


def test_a_take_profit_sale_is_marked_as_one() -> None:
    swap, _ = sale_rows(TX, HOLDING, SALE, AT, is_take_profit=True)
    assert swap.is_take_profit
    assert not swap.is_dca


def test_the_fees_of_a_swap_add_up_to_what_the_wallet_paid_beyond_the_size() -> None:
    swap, deltas = buy_rows(TX, HOLDING, BUY, AT)
    assert -deltas[0].delta == swap.input_amount + swap.network_fee_sol + swap.protocol_fee_sol


def _delta(wallet: str, token: str, amount: str, symbol: str = "X") -> BalanceDelta:
    return BalanceDelta(AGENT, wallet, token, symbol, Decimal(amount))


def test_merge_sums_each_balance_once_and_splits_debits_from_credits() -> None:
    debits, credits = merge_deltas(
        [
            _delta("w2", SOL_MINT, "-1.5"),
            _delta("w1", TOKEN, "10"),
            _delta("w2", SOL_MINT, "0.25"),
            _delta("w1", SOL_MINT, "2"),
            _delta("w1", TOKEN, "5", symbol="TOK"),
        ]
    )
    assert debits == [_delta("w2", SOL_MINT, "-1.25")]
    # Sorted by (wallet, token); the last symbol seen wins for a merged pair.
    assert credits == [_delta("w1", SOL_MINT, "2"), _delta("w1", TOKEN, "15", symbol="TOK")]


def test_merge_drops_a_balance_that_nets_to_zero() -> None:
    assert merge_deltas([_delta("w", TOKEN, "3"), _delta("w", TOKEN, "-3")]) == ([], [])
    assert merge_deltas([]) == ([], [])


def test_merge_orders_debits_by_wallet_then_token() -> None:
    debits, credits = merge_deltas(
        [_delta("b", TOKEN, "-1"), _delta("a", TOKEN, "-2"), _delta("a", SOL_MINT, "-3")]
    )
    assert [(d.wallet_address, d.token_address) for d in debits] == [
        ("a", SOL_MINT),
        ("a", TOKEN),
        ("b", TOKEN),
    ]
    assert credits == []


def test_an_agent_row_as_subscriber_of_a_signal_knows_whether_it_holds_the_token() -> None:
    row = AgentRow(
        user_id=USER,
        agent_id=AGENT,
        trading_mode="simulation",
        automated_trading_simulation=True,
        automated_trading_live=False,
        trading_config_text=None,
        wallet_address="sim_wallet",
        sol_balance=Decimal("3.5"),
        open_positions=2,
        held_tokens=frozenset({TOKEN}),
    )
    assert row.subscriber(TOKEN) == Subscriber(
        agent_id=AGENT,
        trading_mode="simulation",
        automated_trading_simulation=True,
        automated_trading_live=False,
        wallet_address="sim_wallet",
        sol_balance=Decimal("3.5"),
        open_positions=2,
        holds_token=True,
    )
    assert not row.subscriber("Other111111111111111111111111111111111111111").holds_token


def test_a_trail_update_only_raises_the_stop_and_peak_and_only_lowers_the_low() -> None:
    from worker.domain.records import TrailUpdate

    up = TrailUpdate(UUID(int=9), Decimal(2), Decimal(-10), Decimal("0.5"), AT)
    assert up.onto(Decimal(-20), Decimal(1), Decimal(1)) == (
        Decimal(-10),
        Decimal(2),
        Decimal("0.5"),
    )
    assert up.onto(Decimal(5), Decimal(3), Decimal("0.4")) == (
        Decimal(5),
        Decimal(3),
        Decimal("0.4"),
    )
    # NULLs are ignored, as GREATEST and LEAST ignore them; a missing low takes the update's.
    assert up.onto(None, None, None) == (Decimal(-10), Decimal(2), Decimal("0.5"))
    bare = TrailUpdate(UUID(int=9), None, None, Decimal(1), AT)
    assert bare.onto(Decimal(-5), Decimal(4), Decimal(2)) == (Decimal(-5), Decimal(4), Decimal(1))
    assert bare.onto(None, None, None) == (None, None, Decimal(1))
