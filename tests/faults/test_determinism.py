"""Scenarios 16 and 17 (issues 22 and 27): the ledger is a function of the records.

One recorded stream (`tests.helpers.streams`: several users, every stop-loss mode, take profit
with and without a moon bag, DCA with cooldowns, stale closes, equal timestamps, SOL/USD moves
on another partition, prices exactly on the boundaries, holds and cooldowns ending exactly on
a tick, records out of order within the lateness bound; a valid and an invalid config edit
in force from the middle of the stream) is consumed several ways, each into a clone of one
database on fresh topics:

- 16a live: published in real time while a worker runs;
- 16b a backlog (published while no worker runs, then consumed) with
  `KAFKA_FETCH_MAX_RECORDS` 500;
- 16c the same backlog with `KAFKA_FETCH_MAX_RECORDS` 1;
- 16d the same backlog by a worker killed (SIGKILL) twice mid-way and restarted;
- 16e the same backlog by three workers, one killed (SIGKILL) a third of the way through
  (its partitions move to the others) and a fourth started (they move again).

Their ledgers (every execution, swap, balance and position, keyed by natural keys) must be
identical row for row, and `replay --verify` over each must say identical.

Before (the signal hold, the processing clock): a backlog applied every tick before every
signal, so positions opened from it were bought at the last price of the whole gap and none
of the gap's exits fired; fetch sizes and kill points changed which ticks a signal saw.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from tests.helpers.db import (
    connected,
    create_database,
    database_name,
    drop_database,
)
from tests.helpers.kafka import Topics
from tests.helpers.ledger import Report, seeded
from tests.helpers.services import Services
from tests.helpers.streams import (
    CONFIGS,
    USERS,
    Run,
    base_database,
    command_records,
    differences,
    edit_mid_stream,
    ledger_rows,
    merged,
    record_counts,
    recorded_stream,
    soon_ms,
)
from tests.helpers.workers import WorkerProcess, log_events, wait_for, worker_env

pytestmark = pytest.mark.timeout(900)

LATENESS_MS = 2000


async def _consume(run: Run, counts: dict[str, int], **env: Any) -> WorkerProcess:
    worker = WorkerProcess(run.env(**env)).start()
    await worker.wait_started()
    await run.until_processed(counts, worker)
    run.late += len(log_events(worker, "record_late"))
    assert worker.terminate() == 0, worker.tail()
    return worker


async def _results(url: str) -> list[tuple[Any, ...]]:
    """Every command's result, in a form two runs can compare."""
    async with connected(url) as conn:
        rows = await conn.fetch(
            "SELECT user_id, idempotency_key, status, reason, changes::text, event_at "
            "FROM command_results ORDER BY user_id, idempotency_key"
        )
    return [tuple(r) for r in rows]


async def _executions(url: str) -> int:
    async with connected(url) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM signal_executions"))


async def _kill_when(
    run: Run, worker: WorkerProcess, reached: Callable[[], Awaitable[bool]]
) -> None:
    await wait_for(reached, timeout_s=300, what=f"{run.name}: the kill point")
    worker.kill()


async def test_one_stream_consumed_live_as_a_backlog_and_with_kills_gives_one_ledger(
    services: Services, report: Report
) -> None:
    seed, rng = seeded("determinism")
    base_url, users = await base_database(services)
    template = database_name(base_url)
    # Live first: the stream's times start a few seconds from now.
    start_ms = soon_ms(8)
    records = recorded_stream(rng, users, start_ms=start_ms, late_ms=300)
    # And the users' commands (issue 23): applied in the same one order, whatever the way.
    records = merged(records, await command_records(base_url, users, start_ms))
    # A valid and an invalid config edit in force from the middle of the stream.
    await edit_mid_stream(base_url, users, datetime.fromtimestamp(start_ms / 1000 + 50, UTC))
    counts = record_counts(records)
    expected_executions = counts["signals"] * len(CONFIGS)
    ledgers: dict[str, list[Any]] = {}
    verdicts: dict[str, str] = {}
    results: dict[str, list[tuple[Any, ...]]] = {}
    late: dict[str, int] = {}
    try:
        async with Run(services, template, "16a live", lateness_ms=LATENESS_MS) as run:
            worker = WorkerProcess(run.env()).start()
            await worker.wait_started()
            await run.publish(records, live=True)
            await run.until_processed(counts, worker)
            late[run.name] = len(log_events(worker, "record_late"))
            assert worker.terminate() == 0, worker.tail()
            ledgers[run.name], verdicts[run.name] = await run.ledger(), await run.verify()
            results[run.name] = await _results(run.url)

        for name, env in (
            ("16b backlog, fetch 500", {"kafka_fetch_max_records": 500}),
            ("16c backlog, fetch 1", {"kafka_fetch_max_records": 1}),
        ):
            async with Run(services, template, name, lateness_ms=LATENESS_MS) as run:
                await run.publish(records)
                await _consume(run, counts, **env)
                late[name] = run.late
                ledgers[name], verdicts[name] = await run.ledger(), await run.verify()
                results[name] = await _results(run.url)

        async with Run(
            services, template, "16d backlog, 2 SIGKILLs", lateness_ms=LATENESS_MS
        ) as run:
            await run.publish(records)
            for share in (3, 3 / 2):
                worker = WorkerProcess(run.env(kafka_fetch_max_records=7)).start()
                await worker.wait_started()

                async def reached(share: float = share) -> bool:
                    return await _executions(run.url) >= expected_executions / share

                await _kill_when(run, worker, reached)
            await _consume(run, counts, kafka_fetch_max_records=7)
            late[run.name] = run.late
            ledgers[run.name], verdicts[run.name] = await run.ledger(), await run.verify()
            results[run.name] = await _results(run.url)

        async with Run(
            services,
            template,
            "16e backlog, 3 workers, SIGKILL, rebalance",
            lateness_ms=LATENESS_MS,
        ) as run:
            await run.publish(records)
            workers = [WorkerProcess(run.env(kafka_fetch_max_records=50)).start() for _ in range(3)]
            for w in workers:
                await w.wait_started()

            async def third() -> bool:
                return await _executions(run.url) >= expected_executions / 3

            await _kill_when(run, workers[0], third)  # its partitions move to the others
            workers.append(WorkerProcess(run.env(kafka_fetch_max_records=50)).start())
            await workers[-1].wait_started()  # and some come back: another rebalance
            await run.until_processed(counts, workers[1])
            for w in workers[1:]:
                run.late += len(log_events(w, "record_late"))
                assert w.terminate() == 0, w.tail()
            late[run.name] = run.late
            ledgers[run.name], verdicts[run.name] = await run.ledger(), await run.verify()
            results[run.name] = await _results(run.url)
    finally:
        await drop_database(services, base_url)

    reference_name = "16b backlog, fetch 500"
    reference = ledgers[reference_name]
    diffs = {name: differences(reference, rows) for name, rows in ledgers.items()}
    tables = {
        t: sum(1 for r in reference if r.table == t)
        for t in ("executions", "transactions", "balances", "positions")
    }
    report(
        "16 one stream, five ways",
        records=f"{counts['signals']} signals x {len(CONFIGS)} agents x {USERS} users' "
        f"{len(CONFIGS)} configs, {counts['prices']} ticks, {counts['commands']} commands "
        "over 130 s",
        faults="live; backlog fetch 500; backlog fetch 1; backlog with 2 SIGKILLs; "
        "3 workers with a SIGKILL and 2 rebalances",
        ledger=", ".join(f"{n} {t}" for t, n in tables.items()),
        differing={name: len(d) for name, d in diffs.items()},
        late=late,
        verify=verdicts,
        commands={n: Counter(r[2] for r in rows) for n, rows in results.items()},
        seed=seed,
    )
    assert tables["executions"] == counts["signals"] * len(CONFIGS)
    assert tables["positions"] > 0 and tables["transactions"] > tables["positions"]
    # The invalid edit took effect from the middle of the stream: that agent's buys failed.
    failed = [r for r in reference if r.table == "executions" and r.values["status"] == "failed"]
    assert any("config" in str(r.values["error"]) for r in failed), failed[:3]
    for name, lines in diffs.items():
        assert lines == [], f"{name} differs from the backlog (fetch 500):\n" + "\n".join(lines)
    assert late == dict.fromkeys(ledgers, 0), late
    # The commands too: each applied (or refused) the same way, at the same time, every way.
    assert len(results[reference_name]) == counts["commands"]
    assert any(r[2] == "applied" for r in results[reference_name])
    for name, rows in results.items():
        assert rows == results[reference_name], f"{name}: command results differ"


def test_the_stream_hits_what_order_decides() -> None:
    """The generator's own check: equal timestamps across topics and partitions, records out
    of order within the bound, and exact boundaries are in it."""
    _, rng = seeded("determinism-shape")
    users = [uuid.uuid4() for _ in range(USERS)]
    records = recorded_stream(rng, users, start_ms=1_800_000_000_000)
    by_ms: dict[int, set[str]] = {}
    for r in records:
        by_ms.setdefault(r.at_ms, set()).add(r.topic)
    assert any(len(kinds) == 2 for kinds in by_ms.values()), "a signal at a tick's millisecond"
    shuffled = sum(1 for a, b in itertools.pairwise(records) if b.at_ms < a.at_ms)
    assert shuffled > 0, "records published out of event-time order"
    assert max(a.at_ms - b.at_ms for a, b in itertools.pairwise(records)) < 300


async def test_with_order_markers_every_reader_of_the_topics_gets_the_live_ledger(
    services: Services, report: Report
) -> None:
    """16f: the same kind of stream, live, by a worker writing order markers
    (`ORDER_MARKERS`); then another group reads those topics (markers and all) from the
    start: the two ledgers are identical row for row, and `replay --verify` says so of the
    live one. A copy of the stream without the markers (a backlog on other topics) is
    measured against it: where a record came after a marker though stamped before it and
    within `LATENESS_MS`, the log decided, so the copy may differ there (reported)."""
    seed, rng = seeded("determinism-markers")
    base_url, users = await base_database(services)
    template = database_name(base_url)
    start_ms = soon_ms(8)
    records = recorded_stream(rng, users, start_ms=start_ms, late_ms=300)
    records = merged(records, await command_records(base_url, users, start_ms))
    counts = record_counts(records)
    late: dict[str, int] = {}
    try:
        async with Run(
            services, template, "16f live, markers", lateness_ms=LATENESS_MS, order_markers=True
        ) as run:
            assert run.topics is not None
            worker = WorkerProcess(run.env()).start()
            await worker.wait_started()
            await run.publish(records, live=True)
            await _until_at_ends(services, run.url, run.topics, worker)
            late[run.name] = len(log_events(worker, "record_late"))
            _, metrics = await worker.get("/metrics")
            assert worker.terminate() == 0, worker.tail()
            live, verdict = await run.ledger(), await run.verify()

            again_url = await create_database(services, template)
            try:
                topics = replace(run.topics, group=run.topics.group + "-again")
                env = worker_env(
                    services,
                    again_url,
                    topics,
                    lateness_ms=LATENESS_MS,
                    kafka_fetch_max_records=500,
                )
                again_worker = WorkerProcess(env).start()
                await again_worker.wait_started()
                await _until_at_ends(services, again_url, topics, again_worker)
                late["16f again"] = len(log_events(again_worker, "record_late"))
                assert again_worker.terminate() == 0, again_worker.tail()
                async with connected(again_url) as conn:
                    again = await ledger_rows(conn)
            finally:
                await drop_database(services, again_url)

        async with Run(services, template, "16f copy", lateness_ms=LATENESS_MS) as run:
            await run.publish(records)
            await _consume(run, counts, kafka_fetch_max_records=500)
            copy = await run.ledger()
    finally:
        await drop_database(services, base_url)

    markers = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("signal_worker_order_markers_total{")
    )
    diff = differences(live, again)
    from_copy = differences(live, copy, limit=10_000)
    report(
        "16f markers: live, and the same topics read again",
        records=f"{counts['signals']} signals, {counts['prices']} ticks, "
        f"{counts['commands']} commands over 130 s; {markers:.0f} markers written",
        faults="live with ORDER_MARKERS; another group reading its topics from the start",
        ledger=f"{len(live)} rows",
        differing=len(diff),
        differing_from_a_copy_without_markers=len(from_copy),
        late=late,
        verify=verdict,
        seed=seed,
    )
    assert markers > 0
    assert "identical" in verdict, verdict
    assert diff == [], "the same topics read again differ:\n" + "\n".join(diff)
    assert late == {"16f live, markers": 0, "16f again": 0}, late


async def _until_at_ends(
    services: Services, url: str, topics: Topics, worker: WorkerProcess
) -> None:
    """Wait until `topics.group` has stored every partition of the input topics as done up
    to its end (read again each time: markers may still be written at the tail)."""
    names = [topics.signals, topics.prices, topics.commands]
    consumer = AIOKafkaConsumer(*names, bootstrap_servers=services.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in consumer.partitions_for_topic(name) or ()
        ]

        async def done() -> bool:
            assert worker.is_alive(), worker.tail()
            ends = await consumer.end_offsets(partitions)
            async with connected(url) as conn:
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM consumer_offsets "
                    "WHERE consumer_group = $1",
                    topics.group,
                )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            return all(stored.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items())

        await wait_for(done, timeout_s=300, what=f"{topics.group}: every partition at its end")
    finally:
        await consumer.stop()
