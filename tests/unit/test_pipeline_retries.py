"""The pipeline's retries of server trouble: `/readyz` clears after a blip, and a stop
signal or a rebalance during any retry (a lane's, the dead letters', the fan-out counts')
abandons the work (`StopRequested`), never fails the worker. The consumer and the dead
letter sender are small fakes: these paths need no broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.db.store import PgStore
from worker.metrics import Metrics
from worker.pipeline.batching import Chunk, where
from worker.pipeline.consumer import Pipeline
from worker.pipeline.failures import StopRequested
from worker.pipeline.telemetry import Troubles
from worker.settings import Settings

TP = TopicPartition("signals", 0)


class Consumer:
    """What the pipeline asks of its consumer on these paths (pauses kept, as aiokafka
    keeps them)."""

    def __init__(self) -> None:
        self._paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, _tp: TopicPartition) -> int | None:
        return None

    def last_stable_offset(self, _tp: TopicPartition) -> int | None:
        return None

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0} if topic == TP.topic else set()

    async def position(self, _tp: TopicPartition) -> int:
        return 6

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def last_poll_timestamp(self, _tp: TopicPartition) -> int:
        return 1_700_000_001_000

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)


class DeadLetters:
    """Fails `failures` times with a broker connection error, then takes the letters."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Any] = []
        self.tried = asyncio.Event()

    async def send(self, dead: list[Any]) -> None:
        self.tried.set()
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        self.sent.extend(dead)


def _pipeline(letters: DeadLetters) -> Pipeline:
    settings = Settings(signals_topic="signals", prices_topic="prices", retry_backoff_max_s=0.01)
    pipeline = Pipeline(settings, object(), Consumer(), letters, Metrics(), stores=PgStore)  # type: ignore[arg-type]
    pipeline.offsets.open(TP)
    return pipeline


def _not_json(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("signals", 0, offset, 1_700_000_000_000, 0, None, b"{", None, 0, 1, ())


async def test_a_blip_while_dead_lettering_is_retried_and_readyz_clears_after() -> None:
    letters = DeadLetters(failures=3)
    pipeline = _pipeline(letters)
    released = await pipeline._order({TP: [_not_json(5)]})
    assert len(letters.sent) == 1
    # The record's place in the order, so that its offset is stored in its turn.
    assert [(e.source, e.offset) for e in released] == [(TP, 5)]
    assert pipeline.troubles.reason() is None


@pytest.mark.parametrize("by", ["stop", "rebalance"])
async def test_a_stop_or_rebalance_while_dead_letters_wait_abandons_the_fetch(by: str) -> None:
    letters = DeadLetters(failures=10**9)  # the broker stays away
    pipeline = _pipeline(letters)
    stop = asyncio.Event()
    pipeline._stop = stop
    work = asyncio.create_task(pipeline._order({TP: [_not_json(5)]}))
    await letters.tried.wait()
    await asyncio.sleep(0.05)  # in its backoff sleep now (the next try comes after it)
    assert "dead letters of 1 record(s)" in (pipeline.troubles.reason() or "")
    if by == "stop":
        pipeline._interrupt.set()  # what the watcher of the stop event does
    else:
        await_revoke = asyncio.create_task(pipeline.offsets.on_partitions_revoked(set()))
    with pytest.raises(StopRequested):
        await asyncio.wait_for(work, timeout=30)  # the bound of a hung test
    if by == "rebalance":
        await await_revoke
    assert pipeline.troubles.reason() is None
    assert letters.sent == []


def test_troubles_say_what_waits_and_why_and_count_it() -> None:
    metrics = Metrics()
    troubles = Troubles(metrics)
    troubles.retrying("lane-0", KafkaConnectionError("away"), "signals:0@5-9")
    troubles.retrying("lane-0", KafkaConnectionError("away"), "signals:0@5-9")
    reason = troubles.reason() or ""
    assert "retrying 1 batch(es)" in reason
    assert "kafka (KafkaConnectionError: away)" in reason
    assert "signals:0@5-9" in reason
    gauge = metrics.registry.get_sample_value("signal_worker_retrying", {"cause": "kafka"})
    assert gauge == 1
    troubles.cleared("lane-0")
    assert troubles.reason() is None
    assert metrics.registry.get_sample_value("signal_worker_retrying", {"cause": "kafka"}) == 0


def test_where_names_each_partition_and_its_offsets() -> None:
    chunk = Chunk(
        records=[_not_json(5), _not_json(6)],
        next_offsets={TP: 7, TopicPartition("prices", 2): 12},
    )
    assert where(chunk) == "prices:2@11-11, signals:0@5-6"
