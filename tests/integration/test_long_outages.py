"""The worker's side loops outlast an outage longer than STARTUP_TIMEOUT_S.

The events relay and `notify` reconnect with `connect`, which gives up after
STARTUP_TIMEOUT_S with `ServiceUnavailable`. Their loops caught only the services' own
errors, so a PostgreSQL outage longer than that ended them: the relay stopped publishing
for the rest of the worker's life, `notify` exited 1. A server's trouble is waited out.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, wait_for
from worker.domain.notify import Webhook
from worker.metrics import Metrics
from worker.pipeline.kafka import make_producer
from worker.pipeline.notify import Notifier, NotifyOptions
from worker.pipeline.relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Long enough for several give-ups of `connect` (STARTUP_TIMEOUT_S=1) and the backoffs.
OUTAGE_S = 5.0


def _unreachable_database() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # nothing listens there once this closes
    return f"postgresql://postgres@127.0.0.1:{port}/signals"


async def test_the_relay_waits_out_a_database_outage_longer_than_startup_timeout(
    services: Services, topics: Topics
) -> None:
    settings = make_settings(services, _unreachable_database(), topics, startup_timeout_s=1)
    producer = make_producer(settings.kafka)  # Kafka is up: only PostgreSQL is away
    await producer.start()
    try:
        await _relay_waits_it_out(Relay(settings, producer, Metrics()))
    finally:
        await producer.stop()


async def _relay_waits_it_out(relay: Relay) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))

    async def said_so() -> bool:
        assert not task.done(), task  # ended by the outage: its exception shows here
        return relay.state.trouble is not None

    await wait_for(said_so, timeout_s=20, what="the relay to report the outage")
    assert "cannot reach PostgreSQL" in (relay.state.trouble or "")
    assert relay.reason() is not None  # /readyz says why the events are behind
    await asyncio.sleep(OUTAGE_S)
    assert not task.done(), task
    stop.set()
    await asyncio.wait_for(task, 10)  # ends when told, without an exception


async def test_notify_waits_out_a_database_outage_longer_than_startup_timeout(
    services: Services, topics: Topics
) -> None:
    settings = make_settings(services, _unreachable_database(), topics, startup_timeout_s=1)
    options = NotifyOptions(
        webhook=Webhook("http://127.0.0.1:9/hook", "slack"),
        topic=f"{topics.signals}.events",
        events=frozenset({"buy"}),
        users=frozenset(),
        rate=1.0,
    )
    stop = asyncio.Event()
    async with httpx.AsyncClient() as client:
        task = asyncio.create_task(Notifier(settings, options, client).run(stop))
        await asyncio.sleep(OUTAGE_S)  # STARTUP_TIMEOUT_S (1 s) several times over
        assert not task.done(), task
        stop.set()
        await asyncio.wait_for(task, 10)
