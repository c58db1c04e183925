"""A ledger reads its input strictly (issue 20, items 10 and 6): what could be read two ways
is refused with a reason, what has one meaning in several spellings is normalised, and a
decimal that passes always fits its column after rounding."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from tests.helpers.books import TOKEN_A as TOKEN
from worker.errors import InvalidMessage
from worker.messages import decode_price, decode_signal
from worker.pipeline.batching import decode

USER = "6f1c0f3e-8a47-4d0c-9a51-2d7c1e0b9f11"
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
SIGNAL = {
    "user_id": USER,
    "token_address": TOKEN,
    "signal_type": "Velocity (Dex Boost Detection)",
    "signal_strength": 3,
}
TICK = {"token_address": TOKEN, "price_usd": "1"}
NOT_A_DECIMAL = "must be a decimal written as a JSON number"
NOT_RFC_3339 = "must be an RFC 3339 timestamp with seconds and an offset"
UNIX_TIME = "not a number (Unix time is ambiguous: seconds or milliseconds)"
INVISIBLE = "must hold a visible character"


def _signal(**fields: Any) -> bytes:
    return json.dumps({**SIGNAL, **fields}).encode()


def _tick(**fields: Any) -> bytes:
    return json.dumps({**TICK, **fields}).encode()


def _refused(raw: bytes, *, kind: str) -> str:
    with pytest.raises(InvalidMessage) as caught:
        (decode_signal if kind == "signals" else decode_price)(raw)
    return str(caught.value)


# --- refused: each lenient reading of issue 20 item 10, and the rounding of item 6 ---------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # Digits of another script, read as 12 before.
        (_tick(price_usd="١٢"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="\uff11\uff12"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="1_000"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd=" 1 "), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="1\n"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="1 000"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="+1"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd=".5"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="5."), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="0x10"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="NaN"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd="Infinity"), f"price_usd: {NOT_A_DECIMAL}"),
        (_tick(price_usd=True), "price_usd: must be a decimal: a JSON number or a string"),
        # Rounds up to 1e12 at 18 places: numeric(30,18) cannot hold it.
        (
            _tick(price_usd="999999999999.9999999999999999995"),
            "price_usd: must be less than 1000000000000 to fit numeric(30,18): "
            "999999999999.9999999999999999995 rounds to 1000000000000.000000000000000000",
        ),
        # A plain text of this number would not fit in memory (a MemoryError before).
        (
            b'{"token_address": "%s", "price_usd": 1e-999999999999999999}' % TOKEN.encode(),
            "price_usd: must be at least 0.000000000000000001: 1.000000e-999999999999999999 "
            "rounds to 0",
        ),
        # Unix time: seconds or milliseconds cannot be told apart.
        (_tick(ts=1767268800), f"ts: must be an RFC 3339 timestamp string such as "
                               f"2026-11-26T12:00:00Z, {UNIX_TIME}"),
        (_tick(ts=1767268800.5), f"ts: must be an RFC 3339 timestamp string such as "
                                 f"2026-11-26T12:00:00Z, {UNIX_TIME}"),
        (_tick(ts="1767268800"), f"ts: {NOT_RFC_3339}"),
        (_tick(ts="2026-01-01T12:00:00+0100"), f"ts: {NOT_RFC_3339}"),
        (_tick(ts="2026-01-01T12:00Z"), f"ts: {NOT_RFC_3339}"),
        (_tick(ts="2026-01-01"), f"ts: {NOT_RFC_3339}"),
        (_tick(ts="20260101T120000Z"), f"ts: {NOT_RFC_3339}"),
        (_tick(ts="٢٠٢٦-01-01T12:00:00Z"), f"ts: {NOT_RFC_3339}"),
        # Which of two values counts differs between JSON readers: neither does.
        (
            b'{"token_address": "%s", "price_usd": "1", "price_usd": "2"}' % TOKEN.encode(),
            "the key 'price_usd' appears twice in one object",
        ),
        (
            b'{"token_address": "%s", "price_usd": "1", "x": {"a": 1, "a": 2}}' % TOKEN.encode(),
            "the key 'a' appears twice in one object",
        ),
        # An exponent no Decimal holds (an InvalidOperation, an `unexpected` dead letter before).
        (
            b'{"token_address": "%s", "price_usd": 1e99999999999999999999}' % TOKEN.encode(),
            "a number's exponent is too large",
        ),
    ],
)  # fmt: skip
def test_a_lenient_price_tick_is_refused(raw: bytes, reason: str) -> None:
    assert reason in _refused(raw, kind="ticks")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_signal(price_usd="١٢"), f"price_usd: {NOT_A_DECIMAL}"),
        (_signal(price_usd="1_000"), f"price_usd: {NOT_A_DECIMAL}"),
        (_signal(price_usd=" 1 "), f"price_usd: {NOT_A_DECIMAL}"),
        (_signal(market_cap_usd="1_000"), f"market_cap_usd: {NOT_A_DECIMAL}"),
        (_signal(liquidity_usd="\u0665"), f"liquidity_usd: {NOT_A_DECIMAL}"),
        (
            _signal(price_usd="999999999999.9999999999999999999"),
            "price_usd: must be less than 1000000000000 to fit numeric(30,18): "
            "999999999999.9999999999999999999 rounds to 1000000000000",
        ),
        (
            _signal(market_cap_usd="9999999999999999999999.999999995"),
            "market_cap_usd: must be less than 10000000000000000000000 to fit numeric(30,8): "
            "9999999999999999999999.999999995 rounds to 10000000000000000000000",
        ),
        (
            _signal(liquidity_usd="9999999999999999999999.999999995"),
            "liquidity_usd: must be less than 10000000000000000000000 to fit numeric(30,8)",
        ),
        (_signal(created_at=1767268800), "created_at: must be an RFC 3339 timestamp string"),
        (_signal(created_at=1767268800000), "created_at: must be an RFC 3339 timestamp string"),
        (_signal(created_at="2026-01-01T12:00:00"), f"created_at: {NOT_RFC_3339}"),
        (_signal(signal_type="\u200b\u200c\u200d\u2060\ufeff"), f"signal_type: {INVISIBLE}"),
        (_signal(signal_type=" \u200b\u00a0\u3000 "), f"signal_type: {INVISIBLE}"),
        (_signal(signal_type="\u0301\u034f"), f"signal_type: {INVISIBLE}"),
        (_signal(idempotency_key="\u200b"), f"idempotency_key: {INVISIBLE}"),
        (
            b'{"user_id": "%s", "token_address": "%s", "signal_type": "a", "signal_strength": 3,'
            b' "signal_strength": 5}' % (USER.encode(), TOKEN.encode()),
            "the key 'signal_strength' appears twice in one object",
        ),
        # NFC can be longer than what was sent: the stored text's length is what counts.
        (_signal(idempotency_key="\u0958" * 101),
         "idempotency_key: String should have at most 200 characters"),
    ],
)  # fmt: skip
def test_a_lenient_signal_is_refused(raw: bytes, reason: str) -> None:
    assert reason in _refused(raw, kind="signals")


# --- accepted: the strict forms, at their boundaries -----------------------------------------


@pytest.mark.parametrize(
    ("price", "stored"),
    [
        ("0.5", Decimal("0.5")),
        ("-0.5", None),  # the grammar allows a sign; the bound refuses it
        ("1.5e-7", Decimal("1.5E-7")),
        ("1E2", Decimal(100)),
        (12, Decimal(12)),
        ("999999999999.9999999999999999994", Decimal("999999999999.999999999999999999")),
        ("999999999999.999999999999999999", Decimal("999999999999.999999999999999999")),
    ],
)
def test_decimals_in_the_json_number_grammar_are_read_and_rounded_to_the_column(
    price: str | int, stored: Decimal | None
) -> None:
    if stored is None:
        assert "price_usd: must be greater than 0" in _refused(_tick(price_usd=price), kind="ticks")
        return
    assert decode_price(_tick(price_usd=price)).price_usd == stored
    assert decode_signal(_signal(price_usd=price)).price_usd == stored


@pytest.mark.parametrize(
    "ts",
    ["2026-01-01T12:00:00Z", "2026-01-01t12:00:00z", "2026-01-01 12:00:00Z",
     "2026-01-01T13:00:00+01:00", "2026-01-01T12:00:00.000-00:00"],
)  # fmt: skip
def test_rfc_3339_timestamps_are_read(ts: str) -> None:
    assert decode_price(_tick(ts=ts)).ts == NOW
    assert decode_signal(_signal(created_at=ts)).created_at == NOW


# --- normalised: one meaning, one spelling ---------------------------------------------------


def test_nfc_and_nfd_spellings_of_an_idempotency_key_are_one_signal() -> None:
    nfc, nfd = "café-42", unicodedata.normalize("NFD", "café-42")
    assert nfc != nfd
    first = decode_signal(_signal(idempotency_key=nfc, signal_type="Élan"))
    second = decode_signal(_signal(idempotency_key=nfd, signal_type="E\u0301lan"))
    assert first.idempotency_key == second.idempotency_key == nfc
    assert first.signal_type == second.signal_type == "Élan"
    assert first.digest() == second.digest()  # a redelivery, not a conflicting payload
    signals = [s.to_domain(coordinates="signals:0:1", received_at=NOW) for s in (first, second)]
    assert signals[0].idempotency_key == signals[1].idempotency_key


def test_optional_text_with_nothing_visible_is_absent() -> None:
    signal = decode_signal(_signal(symbol="\u200b", source="\ufeff ", activation_reason="\u2060"))
    assert (signal.symbol, signal.source, signal.activation_reason) == (None, None, None)
    # Joiners inside visible text are kept as sent (emoji sequences, Persian).
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert decode_signal(_signal(symbol=persian)).symbol == persian


# --- the worker's path: an ordinary `invalid` dead letter ------------------------------------


def _record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    ms = int(NOW.timestamp() * 1000)
    return ConsumerRecord("prices", 0, offset, ms, 0, None, value, None, 0, len(value), ())


def test_refused_ticks_are_invalid_dead_letters_and_the_others_go_on() -> None:
    records = [
        _record(_tick(price_usd="١٢"), 0),
        _record(_tick(price_usd="2"), 1),
        _record(b'{"token_address": "%s", "price_usd": "1", "price_usd": "2"}' % TOKEN.encode(), 2),
        _record(_tick(price_usd="999999999999.9999999999999999999"), 3),
    ]
    items, dead = decode(records, kind="ticks", now=NOW, max_ahead=timedelta(seconds=60))
    assert [i is not None for i in items] == [False, True, False, False]
    assert [d.kind for d in dead] == ["invalid"] * 3
    assert [d.record.offset for d in dead] == [0, 2, 3]
    assert "'١٢'" in dead[0].reason
    assert dead[1].reason == (
        "not JSON this worker accepts: the key 'price_usd' appears twice in one object"
    )
    assert "rounds to 1000000000000" in dead[2].reason
