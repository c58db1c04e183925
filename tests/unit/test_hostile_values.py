"""Values the world sends that must be refused, bounded or reported, not trusted.

Each test is one item of the hostile-input review (issue 11), at its exact boundary.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from tests.helpers.books import TOKEN_A as TOKEN
from tests.memory import add_agent
from worker.domain.config import resolve_config
from worker.domain.fills import Fees
from worker.domain.models import SOL_MINT, PositionState
from worker.domain.ticks import plan_tick
from worker.errors import InvalidMessage
from worker.handlers.signals import SignalOutcome, handle_signals
from worker.messages import PriceTickV1, check_tick_time, decode_price, decode_signal
from worker.pipeline.batching import Fanouts, decode
from worker.replay.memory import MemoryStore
from worker.settings import TradingSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
USER = "6f1c0f3e-8a47-4d0c-9a51-2d7c1e0b9f11"


def _signal_json(**fields: Any) -> bytes:
    message: dict[str, Any] = {
        "user_id": USER,
        "token_address": TOKEN,
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 3,
        **fields,
    }
    return json.dumps(message).encode()


# --- the SOL mint is the quote currency ---------------------------------------------------


def test_a_signal_for_the_sol_mint_is_invalid_but_a_sol_price_tick_is_fine() -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_signal(_signal_json(token_address=SOL_MINT, price_usd="0.5"))
    assert str(caught.value) == (
        "invalid signal: token_address: is the SOL mint: SOL is the quote currency, "
        "not a tradable token"
    )
    tick = decode_price(json.dumps({"token_address": SOL_MINT, "price_usd": "150"}).encode())
    assert tick.token_address == SOL_MINT


# --- validation as strict as the columns --------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"price_usd": "0.0000000000000000004"},
         "price_usd: must be at least 0.000000000000000001: 0.0000000000000000004 rounds to 0 "
         "in numeric(30,18) (18 places)"),
        ({"market_cap_usd": "0.000000004"},
         "market_cap_usd: must be at least 0.00000001: 0.000000004 rounds to 0 in "
         "numeric(30,8) (8 places)"),
        ({"created_at": "0001-01-01T00:00:00+14:00"},
         "created_at: must lie between 1970-01-01 and 9999-12-30"),
        ({"symbol": "BO\u0000NK"}, "symbol: must not contain NUL characters (\\u0000)"),
        ({"activation_reason": "a\ud800b"},
         "activation_reason: Input should be a valid string, unable to parse raw data as a "
         "unicode string"),
    ],
)  # fmt: skip
def test_values_the_database_would_refuse_are_invalid_messages(
    fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_signal(_signal_json(**fields))
    assert str(caught.value) == f"invalid signal: {reason}"


def test_a_price_with_more_places_than_the_column_is_rounded_as_the_column_rounds() -> None:
    # Half away from zero, as PostgreSQL's numeric: what is used is what is stored.
    signal = decode_signal(_signal_json(price_usd="0.0000000000000000015"))
    assert signal.price_usd == Decimal("0.000000000000000002")
    signal = decode_signal(_signal_json(price_usd="0.0000000000000000005"))
    assert signal.price_usd == Decimal("0.000000000000000001")


def test_a_huge_integer_is_refused_in_the_users_terms() -> None:
    raw = _signal_json()[:-1] + b', "holder_count": ' + b"9" * 5000 + b"}"
    with pytest.raises(InvalidMessage) as caught:
        decode_signal(raw)
    assert str(caught.value) == (
        "not JSON this worker accepts: a number with 5000 digits is too long (at most 40 digits)"
    )


# --- ticks from the future ------------------------------------------------------------------


def _tick(ts: datetime | None) -> PriceTickV1:
    return PriceTickV1(token_address=TOKEN, price_usd=Decimal(1), ts=ts)


def test_a_tick_at_most_the_allowed_time_ahead_is_accepted_one_more_microsecond_is_not() -> None:
    ahead = timedelta(seconds=60)
    check_tick_time(_tick(NOW + ahead), received_at=NOW, now=NOW, ahead=ahead)
    check_tick_time(_tick(None), received_at=NOW, now=NOW, ahead=ahead)
    with pytest.raises(InvalidMessage, match="more than 60s ahead"):
        check_tick_time(
            _tick(NOW + ahead + timedelta(microseconds=1)), received_at=NOW, now=NOW, ahead=ahead
        )


def test_the_earlier_of_record_time_and_clock_bounds_a_tick() -> None:
    ahead = timedelta(seconds=60)
    # A producer whose clock runs 50 minutes ahead stamps both: the worker's clock decides.
    producer = NOW + timedelta(minutes=50)
    with pytest.raises(InvalidMessage):
        check_tick_time(_tick(producer), received_at=producer, now=NOW, ahead=ahead)
    # A record replayed long after it was written: its own timestamp decides.
    old = NOW - timedelta(days=3)
    check_tick_time(_tick(old + timedelta(seconds=30)), received_at=old, now=NOW, ahead=ahead)
    with pytest.raises(InvalidMessage):
        check_tick_time(_tick(old + timedelta(hours=1)), received_at=old, now=NOW, ahead=ahead)
    with pytest.raises(InvalidMessage):
        check_tick_time(
            _tick(datetime(9999, 12, 30, tzinfo=UTC)), received_at=NOW, now=NOW, ahead=ahead
        )


# --- bounded memory -------------------------------------------------------------------------


def test_fanout_memory_keeps_only_the_most_recent_users() -> None:
    fanouts = Fanouts(maxsize=3)
    users = [uuid.uuid4() for _ in range(5)]
    for i, user in enumerate(users):
        fanouts[user] = i + 1
    assert len(fanouts) == 3
    assert users[0] not in fanouts
    assert fanouts.get(users[0], 100) == 100
    assert fanouts.get(users[2], 100) == 3
    fanouts[uuid.uuid4()] = 9  # users[2] was used last: users[3] goes
    assert users[2] in fanouts
    assert users[3] not in fanouts


# --- take-profit dust -----------------------------------------------------------------------


def test_a_take_profit_sale_that_credits_no_sol_is_not_made() -> None:
    """3e-18 tokens left at 0.01 SOL each are worth 3e-20 SOL: 0 at 8 places. A take-profit
    level that would sell them makes no sale (no zero-value swap) and is not marked hit."""
    cfg = resolve_config(
        {
            "takeProfit": {"enabled": True, "mode": "custom", "levels": [
                {"targetPercent": 50, "sellPercent": 100}], "moonBag": {"enabled": False}},
            "stopLoss": {"enabled": False},
            "staleTrade": {"enabled": False},
        }
    )  # fmt: skip
    dust = PositionState(
        purchase_price=Decimal("0.01"),
        purchase_amount=Decimal("3E-18"),
        total_invested_sol=Decimal("0.00000001"),
        created_at=NOW,
    )
    plan = plan_tick(
        dust,
        token_usd=Decimal(2),  # 0.02 SOL per token: +100%, past the 50% target
        sol_usd=Decimal(100),
        now=NOW,
        cfg=cfg,
        sol_balance=Decimal(1),
        fees=Fees(Decimal("0.000005"), Decimal(0)),
    )
    assert plan.sales == []
    assert plan.final is not None
    assert plan.final.take_profit_levels_hit == 0
    # A sale worth something is still made.
    plan = plan_tick(
        PositionState(
            purchase_price=Decimal("0.01"),
            purchase_amount=Decimal(10),
            total_invested_sol=Decimal("0.1"),
            created_at=NOW,
        ),
        token_usd=Decimal(2),
        sol_usd=Decimal(100),
        now=NOW,
        cfg=cfg,
        sol_balance=Decimal(1),
        fees=Fees(Decimal("0.000005"), Decimal(0)),
    )
    assert [s.fill.token_amount for s in plan.sales] == [Decimal(10)]


# --- a key reused with another payload -------------------------------------------------------


async def test_a_key_reused_with_another_payload_is_the_same_signal_and_names_both_records() -> (
    None
):
    store = MemoryStore(prices={SOL_MINT: (Decimal(100), NOW)})
    add_agent(store, uuid.UUID(USER))
    first = decode_signal(_signal_json(idempotency_key="k", price_usd="1"))
    again = decode_signal(_signal_json(idempotency_key="k", price_usd="1"))
    other = decode_signal(_signal_json(idempotency_key="k", price_usd="2"))
    trading = TradingSettings(fees=Fees(Decimal("0.000005"), Decimal(0)))

    async def handle(message: Any, record: str) -> SignalOutcome:
        [result] = await handle_signals(
            store, [message.to_domain(coordinates=record, received_at=NOW)], trading=trading,
        )  # fmt: skip
        assert isinstance(result, SignalOutcome)
        return result

    assert (await handle(first, "signals:0:5")).conflicts_with is None
    redelivery = await handle(again, "signals:0:9")  # the same payload again: no conflict
    assert (redelivery.is_new_signal, redelivery.conflicts_with) == (False, None)
    conflict = await handle(other, "signals:1:7")
    assert (conflict.is_new_signal, conflict.conflicts_with) == (False, "signals:0:5")
    assert conflict.outcomes == []  # nothing executed twice
    assert len(store.executions) == 1


# --- decoding never stops the worker ------------------------------------------------------


def test_prices_and_metrics_up_to_their_columns_decode_exactly() -> None:
    # 1e10 to 18 places needs 29 digits: more than Python's default decimal context.
    tick = decode_price(json.dumps({"token_address": TOKEN, "price_usd": 10_000_000_000}).encode())
    assert tick.price_usd == Decimal(10_000_000_000)
    top = "999999999999.999999999999999999"
    assert decode_price(
        json.dumps({"token_address": TOKEN, "price_usd": top}).encode()
    ).price_usd == Decimal(top)
    signal = decode_signal(_signal_json(market_cap_usd="9999999999999999999999.99999999",
                                        liquidity_usd=1e21))  # fmt: skip
    assert signal.market_cap_usd == Decimal("9999999999999999999999.99999999")
    with pytest.raises(InvalidMessage, match=r"less than 1000000000000 to fit numeric\(30,18\)"):
        decode_price(json.dumps({"token_address": TOKEN, "price_usd": 1e12}).encode())


def test_a_tick_without_ts_is_held_to_the_clock_by_its_record_timestamp() -> None:
    ahead = timedelta(seconds=60)
    check_tick_time(_tick(None), received_at=NOW + ahead, now=NOW, ahead=ahead)
    with pytest.raises(InvalidMessage, match="no ts and its record's timestamp"):
        check_tick_time(_tick(None), received_at=NOW + timedelta(minutes=50), now=NOW, ahead=ahead)


def _tick_record(value: bytes, timestamp_ms: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("prices", 0, 7, timestamp_ms, 0, None, value, None, 0, len(value), ())


def test_a_record_whose_timestamp_is_no_time_is_dead_lettered() -> None:
    value = json.dumps({"token_address": TOKEN, "price_usd": "1"}).encode()
    items, dead = decode([_tick_record(value, 2**62)], kind="ticks", now=NOW,
                         max_ahead=timedelta(seconds=60))  # fmt: skip
    assert items == [None]
    assert [(d.kind, d.reason) for d in dead] == [
        ("invalid", f"the record's timestamp {2**62} is not a time")
    ]


def test_a_decoding_bug_one_record_triggers_dead_letters_that_record_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.pipeline.batching

    def broken(raw: bytes | None) -> PriceTickV1:
        if raw == b"poison":
            raise ArithmeticError("a bug the record found")
        return decode_price(raw)

    monkeypatch.setattr(worker.pipeline.batching, "decode_price", broken)
    ok = json.dumps({"token_address": TOKEN, "price_usd": "1"}).encode()
    ms = int(NOW.timestamp() * 1000)
    items, dead = decode([_tick_record(b"poison", ms), _tick_record(ok, ms)], kind="ticks",
                         now=NOW, max_ahead=timedelta(seconds=60))  # fmt: skip
    assert items[0] is None and items[1] is not None
    assert [(d.kind, d.reason) for d in dead] == [
        ("unexpected", "unexpected error: ArithmeticError: a bug the record found")
    ]
