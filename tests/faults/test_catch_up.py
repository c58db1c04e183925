"""Scenario 17 (issue 27, item 3): a worker stopped mid-stream for longer than the lateness
bound, then restarted; then a record that really is late.

The stream's first half is consumed live; the worker is stopped (SIGTERM) for several times
`LATENESS_MS` while the second half is published; restarted, it reads the gap as a backlog,
in event-time order: nothing is lost and nothing counts as late (the records were readable
in time; only the worker was away). The ledger equals that of the whole stream consumed as
one backlog. Then, with the worker caught up, a tick stamped seconds in the past arrives:
it is late by the documented rule (`worker/pipeline/timeline.py`): decided at the time its
partition was last said to bring nothing earlier, logged `record_late`, counted, and its
stored decision time says so (`token_price_history.event_at`), so `replay --verify` still
says identical.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from tests.helpers.db import connected, database_name, drop_database
from tests.helpers.ledger import Report, seeded
from tests.helpers.services import Services
from tests.helpers.streams import (
    CONFIGS,
    USERS,
    Run,
    base_database,
    differences,
    record_counts,
    recorded_stream,
    soon_ms,
    stamp,
)
from tests.helpers.workers import WorkerProcess, log_events, wait_for

pytestmark = pytest.mark.timeout(600)

LATENESS_MS = 2000
DOWN_S = 6  # three times the bound


async def test_a_worker_down_longer_than_the_bound_loses_nothing_and_a_late_tick_is_placed(
    services: Services, report: Report
) -> None:
    seed, rng = seeded("catch-up")
    base_url, users = await base_database(services)
    template = database_name(base_url)
    records = recorded_stream(rng, users, start_ms=soon_ms(8), span_s=75, signals_n=24)
    half = len(records) // 2
    counts = record_counts(records)
    try:
        async with Run(services, template, "17 stopped mid-stream") as run:
            worker = WorkerProcess(run.env(lateness_ms=LATENESS_MS)).start()
            await worker.wait_started()
            await run.publish(records[:half], live=True)
            assert worker.terminate() == 0, worker.tail()
            late_before = len(log_events(worker, "record_late"))
            stopped = time.monotonic()
            await run.publish(records[half:], live=True)
            await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - stopped)))
            worker = WorkerProcess(run.env(lateness_ms=LATENESS_MS)).start()
            await worker.wait_started()
            await run.until_processed(counts, worker)
            late_after_gap = len(log_events(worker, "record_late"))
            caught_up = await run.ledger()

            # Now a tick stamped 3 s ago (beyond the 2 s bound) arrives: late. Its token is
            # the one whose last tick is the oldest, and its stamp newer than that (a tick
            # not newer than the stored price changes nothing, late or not).
            last: dict[str, int] = {}
            for r in records:
                if r.topic == "prices":
                    last[r.value["token_address"]] = max(
                        last.get(r.value["token_address"], 0), r.at_ms
                    )
            token = min(last, key=lambda t: last[t])
            await asyncio.sleep(max(0.0, (last[token] + 4000) / 1000 - time.time()))
            stamped = datetime.now(UTC) - timedelta(seconds=3)
            assert run.topics is not None
            producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
            await producer.start()
            try:
                value = {"token_address": token, "price_usd": "123.5", "ts": stamp(
                    int(stamped.timestamp() * 1000))}  # fmt: skip
                await producer.send_and_wait(
                    run.topics.prices, json.dumps(value).encode(), key=token.encode()
                )
            finally:
                await producer.stop()
            counts_late = {**counts, "prices": counts["prices"] + 1}
            await run.until_processed(counts_late, worker)

            async def logged() -> bool:
                return bool(log_events(worker, "record_late"))

            await wait_for(logged, timeout_s=10, what="the late tick logged")
            late = log_events(worker, "record_late")
            async with connected(run.url) as conn:
                stored = await conn.fetchrow(
                    "SELECT price_ts, event_at FROM token_price_history "
                    "WHERE token_address = $1 AND price_usd = 123.5",
                    token,
                )
            assert worker.terminate() == 0, worker.tail()
            verdict = await run.verify()
        # The same records as one backlog, consumed after (the live run comes first: its
        # records are published at their own times).
        async with Run(services, template, "17 reference, one backlog") as reference:
            await reference.publish(records)
            worker = WorkerProcess(reference.env(lateness_ms=LATENESS_MS)).start()
            await worker.wait_started()
            await reference.until_processed(counts, worker)
            assert worker.terminate() == 0, worker.tail()
            expected = await reference.ledger()

    finally:
        await drop_database(services, base_url)

    report(
        "17 stopped longer than the bound",
        records=f"{counts['signals']} signals x {len(CONFIGS)} agents x {USERS} users, "
        f"{counts['prices']} ticks, then 1 tick stamped 3 s ago",
        faults=f"worker stopped {DOWN_S} s (LATENESS_MS {LATENESS_MS}) mid-stream",
        differing_from_one_backlog=len(differences(expected, caught_up)),
        late=f"{late_before} before the gap, {late_after_gap} after it, then {len(late)}",
        late_tick=f"stamped {stamped.isoformat()}, decided at {late[0]['decided_at']}"
        if late
        else "not seen",
        verify=verdict,
        seed=seed,
    )
    assert (late_before, late_after_gap) == (0, 0)
    assert differences(expected, caught_up) == []
    assert len(late) == 1, late
    assert stored is not None, "the late tick moved the price and is in the history"
    assert stored["price_ts"] == stamped.replace(microsecond=stamped.microsecond // 1000 * 1000)
    # Decided at the time its partition was said to bring nothing earlier: after its stamp,
    # within the bound's reach of the moment it arrived.
    decided = stored["event_at"]
    assert decided > stored["price_ts"]
    assert decided == datetime.fromisoformat(late[0]["decided_at"])
    assert verdict.startswith("identical")
