"""Order markers: the worker's "nothing earlier from here on" written into the log itself.

Why: a user's signal is applied only once no price still unread can come before it in event
time (`worker.pipeline.timeline`). A price partition with nothing new to read can promise
that only by the worker's clock, `LATENESS_MS` after the signal's time (a tick in transit
may still come), so at rest every signal waited that long (250 ms by default), and a record
readable later than that was decided by when one worker happened to read it.

A marker makes that promise a record of the partition: when the earliest record waiting is
a user's and every partition that holds it back can take a marker (a price partition, or
the commands partition of its users' number, read to its end by this worker or reported by
its owner as behind it: `Timeline.wanted_markers`), the worker appends to each a marker
stamped with the latest waiting user record's decision time not after its clock, `T`.
Reading it back, it places the marker in the order at `T` like any record of its partition,
so everything the partition brings after it is decided after `T`; the signal goes as soon as
its markers are read back (a produce and a fetch, a few ms). A tick stamped before a marker
and written after it is decided just after the marker, by every worker and every consumer
group that reads the partition, in live and in a backlog alike (as long as it reads the
marker within `LATENESS_MS` of its time, like any record): where it stands in the log
decides, not when it was read; such records are counted
(`signal_worker_order_marker_moved_records_total`). Markers do nothing else: each moves its
partition's stored offset on, in the small transaction of the records of its topic released
with it.

A marker is a record with the header `signal-worker: order-marker` and a JSON value
`{"marker": "order", "at": <RFC 3339 time>, "group": <consumer group>}`, honoured in the
prices and commands topics (where workers write them). Other consumers of the topics must
skip records with that header; versions of this worker before markers do not (they
dead-letter them as invalid ticks or commands): turn markers on once every reader is
upgraded. A marker's time may lie at most `MAX_AHEAD_OF_RECORD` after its record's timestamp
(its writer stamps the record after choosing it) and `PRICE_MAX_FUTURE_S` ahead of the
clock; one that fails, or is not a marker's JSON, goes to the dead-letter topic with the
reason and is not honoured.

Writing markers never holds anything up: at most one per partition is in flight and one
every `ORDER_MARKER_INTERVAL_MS`, a marker is written only when it moves its partition's
time on and the last one has taken effect (or `LATENESS_MS` went by), and a failed write is
logged and counted (the clock still lets the records go after `LATENESS_MS`). With records
waiting all the time (under load, prices idle) that is up to one marker per idle partition
and interval, by each worker.

**What it changes, and why it is off by default** (`ORDER_MARKERS=true` turns it on).
Without markers, a record readable within `LATENESS_MS` of its time is decided at its time,
so any copy of the input (the same records written again into other topics, in another
interleaving within the bound) gives the same ledger; the price is `LATENESS_MS` of waiting
at rest. With markers, a tick written after a marker is decided after it even when it was
stamped before it and only a few ms late: the ledger is a function of the topics as they
are, markers included (every worker, consumer group, restart, rebalance and backlog reading
them agrees, and `replay --verify` too), not of a copy written without them. The worker
also needs write access to its input topics, and other consumers of them must skip the
markers. Those are an operator's choices, so the default keeps the first guarantee; markers
from other workers are honoured either way (a log is decided by what it holds).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.errors import InvalidMessage
from worker.metrics import Metrics
from worker.retry import describe

log = structlog.get_logger(__name__)

HEADER = "signal-worker"
HEADER_VALUE = b"order-marker"
# A marker's value is small; anything much larger is not one of ours.
MAX_MARKER_BYTES = 1024
# A failed write is logged at most this often (it is counted every time).
FAILURE_REPORT_S = 10.0
# At most one marker a partition this often by default (`ORDER_MARKER_INTERVAL_MS`): with
# records waiting in numbers, each round would otherwise write one as soon as the last is
# acknowledged.
DEFAULT_INTERVAL_S = 0.02
# A marker that has not taken effect after this long (its partition's owner not reading it,
# or records before it still waiting) may be followed by another (`LATENESS_MS` by default).
DEFAULT_PENDING_S = 0.25
# A marker's time lies at most this far after its record's timestamp: its writer stamps
# the record after choosing the time, on the same clock.
MAX_AHEAD_OF_RECORD = timedelta(seconds=1)


def is_marker(record: ConsumerRecord[bytes, bytes]) -> bool:
    """True when `record` carries the marker header (whatever its value)."""
    headers = record.headers
    if not headers:
        return False
    return any(key == HEADER and value == HEADER_VALUE for key, value in headers)


def encode_marker(at: datetime, group: str) -> bytes:
    """A marker's value: `at` in RFC 3339 (microseconds, UTC) and the writer's group."""
    stamp = at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return json.dumps({"marker": "order", "at": stamp, "group": group}).encode()


@dataclass(frozen=True, slots=True)
class OrderMarker:
    """A marker record, read: the time it carries (`batching.decode` makes one of each
    marker honoured; it is placed in the order and applied as nothing)."""

    at: datetime


def marker_time(
    record: ConsumerRecord[bytes, bytes], *, received_at: datetime, now: datetime, ahead: timedelta
) -> datetime:
    """The time a marker record carries; `InvalidMessage` (the reason) for one that is not
    a well-formed marker or whose time lies more than `ahead` after its record's timestamp
    or the worker's clock (whichever is earlier), as for a tick's `ts`: honoured, it would
    hold back every tick of its partition until then."""
    value = record.value
    if value is None or len(value) > MAX_MARKER_BYTES:
        raise InvalidMessage(
            f"invalid order marker: its value must be a JSON object of at most "
            f"{MAX_MARKER_BYTES} bytes"
        )
    try:
        body = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMessage("invalid order marker: its value is not JSON") from exc
    if not isinstance(body, dict) or body.get("marker") != "order":
        raise InvalidMessage('invalid order marker: its value must hold "marker": "order"')
    stamp = body.get("at")
    if not isinstance(stamp, str) or len(stamp) > 64:
        raise InvalidMessage('invalid order marker: "at" must be an RFC 3339 time')
    try:
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise InvalidMessage(f'invalid order marker: "at" {stamp!r} has no time zone')
        at = at.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidMessage(f'invalid order marker: "at" {stamp!r} is not a time') from exc
    if at - received_at > MAX_AHEAD_OF_RECORD:  # a difference: no date overflows
        raise InvalidMessage(
            f"invalid order marker: at {at.isoformat()} is more than "
            f"{MAX_AHEAD_OF_RECORD.total_seconds():g}s after its record's timestamp "
            f"({received_at.isoformat()}): a marker is stamped when written"
        )
    if at > now + ahead:
        raise InvalidMessage(
            f"invalid order marker: at {at.isoformat()} is more than "
            f"{ahead.total_seconds():g}s ahead of the worker's clock (PRICE_MAX_FUTURE_S)"
        )
    return at


class Markers:
    """Writes the markers the order asks for, in the background, one in flight per
    partition and at most one every `interval_s`, each only when it moves its partition's
    time on and the last one took effect."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        group: str,
        metrics: Metrics,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        pending_s: float = DEFAULT_PENDING_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._group = group
        self._metrics = metrics
        self._clock = clock  # monotonic seconds (a test's own clock)
        self._interval_s = interval_s
        self._pending_s = max(pending_s, interval_s)
        self._sent: dict[TopicPartition, datetime] = {}  # the latest time written, by partition
        self._flying: dict[TopicPartition, asyncio.Task[None]] = {}
        self._written: dict[TopicPartition, float] = {}  # when the last one was started
        self._failure_reported = 0.0
        # When a marker the last `want` held back for the interval may be written (monotonic
        # s; None: none held back): the loop's next fetch waits no longer than that.
        self.retry_at: float | None = None

    def want(self, wanted: Mapping[TopicPartition, tuple[datetime, datetime | None]]) -> int:
        """Write a marker at `at` to each partition of `wanted` (`tp: (at, its time now)`)
        that has none in flight, none started within the interval, no marker written at
        that time or later, and whose last marker has taken effect (its time passed it:
        a partition whose owner does not read it yet, or whose records before it still
        wait, gets no other one until `pending_s` went by); returns how many started."""
        started = 0
        clock = self._clock()
        self.retry_at = None
        for tp, (at, floor) in wanted.items():
            since = clock - self._written.get(tp, float("-inf"))
            if tp in self._flying:
                continue  # its acknowledgement, then its record read back, wake the loop
            if since < self._interval_s:
                due = clock - since + self._interval_s
                self.retry_at = due if self.retry_at is None else min(self.retry_at, due)
                continue
            sent = self._sent.get(tp)
            if sent is not None and sent >= at:
                continue
            if sent is not None and (floor is None or floor <= sent) and since < self._pending_s:
                continue  # the last one has not shown yet: another would not either
            self._sent[tp] = at
            self._written[tp] = clock
            name = f"marker {tp.topic}:{tp.partition}"
            self._flying[tp] = asyncio.create_task(self._write(tp, at), name=name)
            started += 1
        return started

    async def _write(self, tp: TopicPartition, at: datetime) -> None:
        try:
            await self._producer.send_and_wait(
                tp.topic,
                encode_marker(at, self._group),
                partition=tp.partition,
                headers=[(HEADER, HEADER_VALUE)],
            )
            self._metrics.order_markers.labels(tp.topic).inc()
        except asyncio.CancelledError:
            self._sent.pop(tp, None)
            raise
        except Exception as exc:  # noqa: BLE001 - a marker only speeds things up: the clock goes on
            self._sent.pop(tp, None)
            self._metrics.order_marker_failures.inc()
            if self._clock() - self._failure_reported >= FAILURE_REPORT_S:
                self._failure_reported = self._clock()
                log.warning(
                    "order_marker_failed",
                    topic=tp.topic,
                    partition=tp.partition,
                    error=describe(exc),
                    hint="records waiting for this partition go after LATENESS_MS instead; "
                    "the worker needs write access to its input topics for markers "
                    "(ORDER_MARKERS=false turns them off)",
                )
        finally:
            self._flying.pop(tp, None)

    async def close(self) -> None:
        """Wait briefly for the markers in flight, then cancel what is left."""
        flying = list(self._flying.values())
        if not flying:
            return
        _, pending = await asyncio.wait(flying, timeout=2.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
