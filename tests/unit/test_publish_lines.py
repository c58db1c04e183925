"""`publish`'s checks of one line (issue 23, item 5): the content key and the line that
carries it, and the time check `--dry-run` shares with the worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from worker.commands.publish import SIGNALS, Options, content_key
from worker.errors import InvalidMessage
from worker.messages import decode_signal

USER = "0b7d8c39-5a8e-4cf4-9c3e-8f1d2a6b7c01"
TOKEN = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
AHEAD = timedelta(seconds=60)
KEYED = Options(key_from_content=True)


def _line(**fields: object) -> bytes:
    base = {"user_id": USER, "token_address": TOKEN, "signal_type": "t", "signal_strength": 3}
    return json.dumps({**base, **fields}).encode()


def test_the_content_key_is_the_payloads_and_the_rest_of_the_line_is_kept_exactly() -> None:
    raw = _line()[:-1] + b', "price_usd": 0.123456789012345678}'
    checked = SIGNALS.check(raw, NOW, AHEAD, KEYED)
    assert checked.value.endswith(raw[1:])  # the decimal as it was written
    message = decode_signal(checked.value)
    assert message.price_usd == Decimal("0.123456789012345678")
    assert checked.idempotency_key == message.idempotency_key
    assert checked.idempotency_key == content_key(decode_signal(raw))
    assert checked.idempotency_key is not None
    assert checked.idempotency_key.startswith("content-")


def test_the_same_payload_however_spelled_has_one_key_and_another_payload_another() -> None:
    one = SIGNALS.check(_line(price_usd="0.5"), NOW, AHEAD, KEYED).idempotency_key
    same = SIGNALS.check(_line(price_usd=0.5, extra="ignored"), NOW, AHEAD, KEYED)
    other = SIGNALS.check(_line(price_usd="0.6"), NOW, AHEAD, KEYED).idempotency_key
    assert same.idempotency_key == one
    assert other != one


def test_a_null_key_is_replaced_and_a_given_key_is_kept() -> None:
    checked = SIGNALS.check(_line(idempotency_key=None, price_usd="0.5"), NOW, AHEAD, KEYED)
    assert json.loads(checked.value)["idempotency_key"] == checked.idempotency_key
    assert (
        checked.idempotency_key
        == SIGNALS.check(_line(price_usd="0.5"), NOW, AHEAD, KEYED).idempotency_key
    )
    given = SIGNALS.check(_line(idempotency_key="mine"), NOW, AHEAD, KEYED)
    assert given.idempotency_key == "mine"
    assert given.value == _line(idempotency_key="mine")


def test_without_the_option_a_line_without_a_key_is_sent_as_it_is() -> None:
    checked = SIGNALS.check(_line(), NOW, AHEAD, Options())
    assert checked.value == _line()
    assert checked.idempotency_key is None  # the record's coordinates will be its key


def test_a_created_at_ahead_of_now_is_refused_as_the_worker_refuses_it() -> None:
    SIGNALS.check(_line(created_at="2026-11-26T12:01:00Z"), NOW, AHEAD, Options())
    with pytest.raises(InvalidMessage, match="PRICE_MAX_FUTURE_S"):
        SIGNALS.check(_line(created_at="2026-11-26T12:01:01Z"), NOW, AHEAD, Options())
