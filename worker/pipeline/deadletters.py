"""The dead-letter producer: every record that cannot be processed reaches `DLQ_TOPIC`.

A dead letter is the record unchanged (key, value, headers) plus the headers `error`,
`original-topic`, `original-partition` and `original-offset`. A record that cannot be
dead-lettered as it is (its dead letter would exceed what the DLQ topic or the producer
accepts, which a record at the input topic's own limit does once the headers are added)
still gets one, smaller, and the worker moves on:

1. whole, when it fits `max_bytes` (the DLQ topic's `max.message.bytes`, read at start-up,
   bounded by the producer's `max_request_size`);
2. else with its value cut to its first `TRUNCATED_BYTES` bytes and its own headers dropped
   when they are large, with the headers `payload: truncated`, `original-size` (the value's
   bytes) and `original-headers-dropped` (how many) saying so;
3. else (the broker still refuses it) with no value at all (`payload: omitted`).

A dead letter the broker refuses for what it carries rather than for its size (a topic
whose `message.timestamp.*.max.ms` refuses the record's old timestamp, a compacted DLQ that
wants a key) is sent once more *restamped*: the broker's time instead of the record's (kept
in the header `original-timestamp`) and an empty key where it had none. A refusal of that
too is raised, and stops the worker without storing an offset past the record (nothing is
lost); refusals that say something about the broker (a leader moving, a timeout, a lost
connection) are raised for the caller to retry (`worker.retry.server_trouble`).

Each step down is counted (`signal_worker_dead_letters_truncated_total`) and logged. The
broker acknowledges every dead letter before the caller lets an offset move past its record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.structs import ConsumerRecord

from worker.metrics import Metrics

log = structlog.get_logger(__name__)

# What a record costs beyond its key, value and header bytes (lengths, varints, CRC, the
# batch header of a batch of one): generously counted, so an estimate never falls short.
RECORD_OVERHEAD_BYTES = 1024
# How much of an oversized value its dead letter keeps.
TRUNCATED_BYTES = 16 * 1024
# Original headers beyond this many bytes are dropped from a cut-down dead letter.
MAX_KEPT_HEADER_BYTES = 8 * 1024
# The reason header is capped: it names the problem, it does not echo the input.
MAX_REASON_BYTES = 4000
DLQ_HEADERS = frozenset(
    {
        "error",
        "original-topic",
        "original-partition",
        "original-offset",
        "payload",
        "original-size",
        "original-headers-dropped",
        "original-timestamp",
    }
)
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be processed, and why (`kind` is the metric label)."""

    record: ConsumerRecord[bytes, bytes]
    reason: str
    kind: str


class Form(Enum):
    """How much of the record a dead letter carries."""

    WHOLE = "whole"
    TRUNCATED = "truncated"
    OMITTED = "omitted"


@dataclass(frozen=True, slots=True)
class Letter:
    """The record to produce for a dead letter in one `Form`."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    form: Form
    timestamp_ms: int | None = None

    @property
    def size(self) -> int:
        """An upper estimate of its size on the wire, in bytes."""
        headers = sum(len(k.encode()) + len(v) for k, v in self.headers)
        return len(self.key or b"") + len(self.value or b"") + headers + RECORD_OVERHEAD_BYTES


def letter(dead: DeadLetter, form: Form) -> Letter:
    """The dead letter of `dead` in `form` (pure: what is produced is decided here)."""
    r = dead.record
    own = [(k, v) for k, v in (r.headers or ()) if k not in DLQ_HEADERS]
    headers = [
        ("error", dead.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        ("original-topic", r.topic.encode()),
        ("original-partition", str(r.partition).encode()),
        ("original-offset", str(r.offset).encode()),
    ]
    # aiokafka's send() refuses a record with neither key nor value, which other clients
    # can write: its dead letter gets an empty key instead.
    key = r.key
    value: bytes | None = r.value
    if form is not Form.WHOLE:
        own_bytes = sum(len(k.encode()) + len(v) for k, v in own)
        if own_bytes > MAX_KEPT_HEADER_BYTES or form is Form.OMITTED:
            headers.append(("original-headers-dropped", str(len(own)).encode()))
            own = []
        headers.append(("payload", form.value.encode()))
        headers.append(("original-size", str(len(r.value or b"")).encode()))
        value = None if form is Form.OMITTED or r.value is None else r.value[:TRUNCATED_BYTES]
        if key is not None and len(key) > TRUNCATED_BYTES:
            key = key[:TRUNCATED_BYTES]
    if key is None and value is None:
        key = b""
    return Letter(key, value, [*own, *headers], form, r.timestamp)


def refused_for_content(result: object) -> bool:
    """True when the broker refused a letter for what it carries (not its size, not the
    broker's own trouble): an error response aiokafka does not mark retriable."""
    return (
        isinstance(result, BrokerResponseError)
        and not isinstance(result, _TOO_LARGE)
        and not getattr(result, "retriable", False)
        and "Authorization" not in type(result).__name__  # an ACL: the operator's to fix
    )


def is_restamped(one: Letter) -> bool:
    """True for a letter `restamped` already."""
    return any(k == "original-timestamp" for k, _ in one.headers)


def restamped(one: Letter) -> Letter:
    """`one` stamped by the broker (its own time kept in `original-timestamp`), with an
    empty key where it had none."""
    original = str(one.timestamp_ms if one.timestamp_ms is not None else "").encode()
    return replace(
        one,
        key=b"" if one.key is None else one.key,
        headers=[*one.headers, ("original-timestamp", original)],
        timestamp_ms=None,
    )


def first_fitting(dead: DeadLetter, max_bytes: int) -> Letter:
    """The most complete form of `dead` whose estimated size fits `max_bytes`."""
    for form in (Form.WHOLE, Form.TRUNCATED):
        candidate = letter(dead, form)
        if candidate.size <= max_bytes:
            return candidate
    return letter(dead, Form.OMITTED)


class DeadLetters:
    """Produces dead letters to the DLQ topic and waits for the broker's acknowledgements."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, metrics: Metrics, *, max_bytes: int
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._max_bytes = max_bytes

    async def send(self, dead: Sequence[DeadLetter]) -> None:
        """Produce every dead letter (cut down or restamped where it must be) and wait for
        the acks.

        Raises what the producer raises for anything else (connection loss: the caller
        retries the whole batch; a redelivered dead letter is a duplicate in the DLQ, never a
        loss)."""
        pending = [(d, first_fitting(d, self._max_bytes)) for d in dead]
        while pending:
            results = await asyncio.gather(
                *(self._produce(one) for _, one in pending), return_exceptions=True
            )
            retry: list[tuple[DeadLetter, Letter]] = []
            for (d, one), result in zip(pending, results, strict=True):
                if isinstance(result, _TOO_LARGE) and one.form is not Form.OMITTED:
                    smaller = Form.TRUNCATED if one.form is Form.WHOLE else Form.OMITTED
                    retry.append((d, letter(d, smaller)))
                elif refused_for_content(result) and not is_restamped(one):
                    log.warning(
                        "dead_letter_restamped",
                        refusal=type(result).__name__,
                        topic=d.record.topic,
                        partition=d.record.partition,
                        offset=d.record.offset,
                    )
                    retry.append((d, restamped(one)))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self._sent(d, one)
            pending = retry

    async def _produce(self, one: Letter) -> Any:  # noqa: ANN401 - aiokafka is untyped
        future = await self._producer.send(
            self._topic,
            value=one.value,
            key=one.key,
            headers=one.headers,
            timestamp_ms=one.timestamp_ms,
        )
        return await future

    def _sent(self, d: DeadLetter, one: Letter) -> None:
        r = d.record
        self._metrics.dead_letters.labels(d.kind).inc()
        coordinates = {"topic": r.topic, "partition": r.partition, "offset": r.offset}
        if one.form is not Form.WHOLE:
            self._metrics.dead_letters_truncated.labels(one.form.value).inc()
            log.warning(
                "dead_letter_cut_down",
                payload=one.form.value,
                original_size=len(r.value or b""),
                max_bytes=self._max_bytes,
                **coordinates,
            )
        log.warning("record_dead_lettered", reason=d.reason, kind=d.kind, **coordinates)
