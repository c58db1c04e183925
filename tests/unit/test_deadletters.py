"""Dead letters: every record gets one, whole when it fits, cut down when it does not.

`letter` and `first_fitting` are pure; `DeadLetters.send` is run against a producer fake
that refuses records above a size, as a broker does with MessageSizeTooLargeError.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from worker.metrics import Metrics
from worker.pipeline.deadletters import (
    MAX_KEPT_HEADER_BYTES,
    TRUNCATED_BYTES,
    DeadLetter,
    DeadLetters,
    Form,
    first_fitting,
    letter,
)


def _record(
    value: bytes | None,
    key: bytes | None = b"user-1",
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="trading-signals",
        partition=4,
        offset=1234,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=tuple(headers or ()),
    )


def _dead(value: bytes | None, **kwargs: Any) -> DeadLetter:
    return DeadLetter(_record(value, **kwargs), "invalid signal: no", "invalid")


def _headers(one: Any) -> dict[str, bytes]:
    return dict(one.headers)


def test_a_record_that_fits_is_sent_whole_with_the_reason_and_coordinates() -> None:
    one = first_fitting(_dead(b'{"x": 1}', headers=[("trace", b"t-1")]), 1_000_000)
    assert one.form is Form.WHOLE
    assert (one.key, one.value, one.timestamp_ms) == (b"user-1", b'{"x": 1}', 1_700_000_000_000)
    assert one.headers == [
        ("trace", b"t-1"),
        ("error", b"invalid signal: no"),
        ("original-topic", b"trading-signals"),
        ("original-partition", b"4"),
        ("original-offset", b"1234"),
    ]


def test_forged_dead_letter_headers_of_the_record_are_replaced_not_repeated() -> None:
    forged = [("error", b"forged"), ("payload", b"whole"), ("original-offset", b"-1")]
    one = letter(_dead(b"{}", headers=forged), Form.WHOLE)
    assert [k for k, _ in one.headers].count("error") == 1
    assert _headers(one)["original-offset"] == b"1234"
    assert "payload" not in _headers(one)


def test_a_record_too_large_is_cut_to_its_first_bytes_with_headers_saying_so() -> None:
    value = b"v" * 1_048_500
    one = first_fitting(_dead(value), 1_048_588)
    assert one.form is Form.TRUNCATED
    assert one.value == value[:TRUNCATED_BYTES]
    headers = _headers(one)
    assert headers["payload"] == b"truncated"
    assert headers["original-size"] == b"1048500"
    assert headers["original-offset"] == b"1234"
    assert one.size <= 1_048_588


def test_large_headers_of_the_record_are_dropped_from_a_cut_down_dead_letter() -> None:
    big = [("blob", b"h" * (MAX_KEPT_HEADER_BYTES + 1))]
    one = letter(_dead(b"v" * 2_000_000, headers=big), Form.TRUNCATED)
    headers = _headers(one)
    assert "blob" not in headers
    assert headers["original-headers-dropped"] == b"1"
    small = letter(_dead(b"v" * 2_000_000, headers=[("trace", b"t")]), Form.TRUNCATED)
    assert _headers(small)["trace"] == b"t"


def test_omitted_carries_no_value_and_a_record_without_key_or_value_gets_an_empty_key() -> None:
    one = letter(_dead(b"v" * 10, key=None), Form.OMITTED)
    assert (one.key, one.value) == (b"", None)
    assert _headers(one)["payload"] == b"omitted"
    bare = letter(_dead(None, key=None), Form.WHOLE)
    assert (bare.key, bare.value) == (b"", None)


def test_when_nothing_fits_the_value_is_omitted() -> None:
    one = first_fitting(_dead(b"v" * 100_000), TRUNCATED_BYTES // 2)
    assert one.form is Form.OMITTED


class _Broker:
    """A producer whose broker refuses records above `limit` bytes (value + headers), or
    fails every send with `error`."""

    def __init__(self, limit: int, error: Exception | None = None) -> None:
        self.limit = limit
        self.error = error
        self.accepted: list[dict[str, Any]] = []

    async def send(self, topic: str, **record: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        size = len(record["value"] or b"") + sum(len(v) for _, v in record["headers"])
        if self.error is not None:
            future.set_exception(self.error)
        elif size > self.limit:
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.accepted.append({"topic": topic, **record})
            future.set_result(None)
        return future


async def test_a_refusal_by_the_broker_steps_down_until_it_is_accepted() -> None:
    broker = _Broker(limit=TRUNCATED_BYTES // 2)
    metrics = Metrics()
    # We believe 10 MB fit; the broker takes far less: whole, truncated, then omitted.
    letters = DeadLetters(broker, "dlq", metrics, max_bytes=10_000_000)
    await letters.send([_dead(b"v" * 100_000), _dead(b"small")])
    assert [_headers_of(r).get("payload") for r in broker.accepted] == [None, b"omitted"]
    assert broker.accepted[1]["value"] is None
    assert metrics.dead_letters.labels("invalid")._value.get() == 2
    assert metrics.dead_letters_truncated.labels("omitted")._value.get() == 1


def _headers_of(record: dict[str, Any]) -> dict[str, bytes]:
    return dict(record["headers"])


async def test_other_producer_errors_are_raised_for_the_batch_to_be_retried() -> None:
    broker = _Broker(limit=10**9, error=KafkaConnectionError())
    letters = DeadLetters(broker, "dlq", Metrics(), max_bytes=10**6)
    with pytest.raises(KafkaConnectionError):
        await letters.send([_dead(b"{}")])
