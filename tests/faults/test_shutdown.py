"""Scenario 7: SIGTERM during a burst drains and exits 0; the next worker starts right there.

The signals carry no idempotency key, so each is keyed by its Kafka coordinates
(`topic:partition:offset`, contract section 3): the rows say exactly which records were
processed, and they must be each partition's offsets from 0 up to the stored offset.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import asyncpg
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.db import stored_offsets
from tests.helpers.kafka import Topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    log_events,
    terminate_within,
    wait_for_count,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

USERS, AGENTS, PER_USER = 10, 3, 300  # a burst of 3,000 signals x 3 agents
DRAIN_BOUND_S = 10


async def _processed(conn: asyncpg.Connection, topic: str) -> dict[int, list[int]]:
    """Offsets of the records that have a signal row and executions, by partition."""
    rows = await conn.fetch(
        "SELECT s.idempotency_key, count(e.id) AS n FROM trading_signals s "
        "LEFT JOIN signal_executions e ON e.signal_id = s.id GROUP BY s.id"
    )
    out: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        name, partition, offset = r["idempotency_key"].rsplit(":", 2)
        assert name == topic
        assert r["n"] == AGENTS, f"signal {r['idempotency_key']} has {r['n']} executions"
        out[int(partition)].append(int(offset))
    return {p: sorted(offsets) for p, offsets in out.items()}


async def test_sigterm_under_load_drains_and_the_next_worker_resumes_exactly(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("shutdown")
    tokens = [mint(rng) for _ in range(30)]
    book = await make_book(db_conn, USERS, AGENTS)
    burst = book.signals(PER_USER, tokens, keyed=False)
    total = len(burst) * AGENTS
    env = worker_env(services, db_url, topics)

    first = WorkerProcess(env).start()
    try:
        await first.wait_started()
        sent = await send_all(services.kafka_bootstrap, topics.signals, burst)
        await wait_for_count(db_url, EXECUTIONS, rng.randrange(total // 20, total // 5))
    finally:
        # The bound: fails (and kills it) if it has not exited DRAIN_BOUND_S after SIGTERM.
        first_code = terminate_within(first, DRAIN_BOUND_S)
    stored = await stored_offsets(db_url, topics.group, topics.signals)
    processed = await _processed(db_conn, topics.signals)
    at_stop = sum(len(v) for v in processed.values())

    second = WorkerProcess(env).start()
    try:
        await second.wait_started()
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=120)
    finally:
        second_code = second.terminate()
    resumed = log_events(second, "signal_processed")
    replayed = [e for e in resumed if not e["is_new_signal"] or e["already_executed"]]
    first_offsets: dict[int, int] = {}
    for e in resumed:
        first_offsets[e["partition"]] = min(e["offset"], first_offsets.get(e["partition"], 1 << 62))

    agents = {str(a.user_id): book.agents_of(a) for a in book.accounts}
    expected = {
        (uuid.UUID(m["user_id"]), f"{topics.signals}:{at.partition}:{at.offset}"): agents[
            m["user_id"]
        ]
        for m, at in zip(burst, sent, strict=True)
    }
    ledger = await measure(db_conn, expected)
    report(
        "7 shutdown under load",
        records=f"{len(burst)} signals x {AGENTS} agents",
        faults=f"SIGTERM at {at_stop} signals processed, stored offsets "
        f"{dict(sorted(stored.items()))}, {len(replayed)} replayed by the next worker",
        **ledger.figures,
        exit=f"{first_code}, {second_code}",
        seed=seed,
    )
    assert first_code == 0, first.tail()
    assert second_code == 0, second.tail()
    assert 0 < at_stop < len(burst), "the SIGTERM did not come during the burst"
    # Nothing processed beyond the stored offset, nothing stored beyond what was processed.
    assert sum(stored.values()) == at_stop
    for partition, next_offset in stored.items():
        assert processed.get(partition, []) == list(range(next_offset)), partition
    assert set(processed) <= set(stored)
    # The next worker started exactly there: no replay, and its first record is the stored one.
    assert replayed == []
    for partition, offset in first_offsets.items():
        assert offset == stored.get(partition, 0), partition
    assert_exactly_once(ledger)
    assert ledger.executions == total
