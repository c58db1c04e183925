"""The events relay's pure parts: each event's body (its stored payload with its id first)
and the size of its record batches."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.pipeline.relay import EVENT_BATCH_BYTES, event_batch_bytes, with_event_id

EVENT_ID = "6f1c2a9e-3b8d-5e4f-a1b2-c3d4e5f60718"
# What PostgreSQL prints for a jsonb payload of the triggers (`payload::text`).
STORED = (
    '{"sol": 1.500000000000000000, "type": "buy", "user_id": "u-1", '
    '"event_at": "2026-12-07T10:00:00+00:00"}'
)


def test_the_event_id_comes_first_and_the_payload_is_kept_as_it_was_written() -> None:
    body = with_event_id(STORED, EVENT_ID)
    assert body.startswith(f'{{"event_id": "{EVENT_ID}", "sol": 1.500000000000000000')
    assert json.loads(body) == {"event_id": EVENT_ID, **json.loads(STORED)}
    # The amount keeps the digits it was stored with (no float on the way).
    assert "1.500000000000000000" in body


@pytest.mark.parametrize("payload", ["{}", "{ }"])
def test_an_empty_payload_becomes_an_object_with_the_id_only(payload: str) -> None:
    assert json.loads(with_event_id(payload, EVENT_ID)) == {"event_id": EVENT_ID}


@given(
    st.dictionaries(
        st.text(min_size=1).filter(lambda k: k != "event_id"),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text()),
        max_size=8,
    )
)
def test_any_object_gets_its_id_and_keeps_everything_else(payload: dict[str, object]) -> None:
    for text in (json.dumps(payload), json.dumps(payload, separators=(",", ":"))):
        assert json.loads(with_event_id(text, EVENT_ID)) == {"event_id": EVENT_ID, **payload}


@pytest.mark.parametrize(
    ("topic_limit", "expected"),
    [
        (None, 16_384),  # not known: aiokafka's default, which any topic takes
        (1_048_588, EVENT_BATCH_BYTES),  # Kafka's default 1 MiB: the relay's own size
        (8 * 1024 * 1024, EVENT_BATCH_BYTES),  # never more than the relay's size
        (200_000, 200_000 - 4096),  # a smaller limit: all of it but a record's framing
        (32 * 1024, 32 * 1024 - 4096),  # the least an events topic may have
    ],
)
def test_the_record_batches_fit_the_events_topic(topic_limit: int | None, expected: int) -> None:
    assert event_batch_bytes(topic_limit) == expected
