"""Scenario 8: records at the input topic's own size limit, whose dead letters cannot be sent
whole, among valid signals. Before: the worker exited 1 on `MessageSizeTooLargeError` and
every restart did the same, stalling every partition. Now each gets a cut-down dead letter
and the stream goes on in the same process.

The test's DLQ topic is created with the broker's default record limit (as a DLQ created
before the worker raised it would be), so the dead letter of a 1 MB record does not fit.
"""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.kafka import Topics, read_all, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, assert_ran_through, wait_for_count, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

USERS, AGENTS, PER_USER = 4, 2, 50
# As large as the broker's default limit (1,048,588 bytes per batch) takes with a key.
HUGE = 1_048_400


def _huge_signal_of_nobody() -> bytes:
    """A valid signal (unknown fields are ignored) of a user that does not exist: it is
    dead-lettered inside the batch's transaction, after the database said so."""
    message = {
        "user_id": str(uuid.uuid4()),
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 3,
        "padding": "",
    }
    base = len(orjson.dumps(message))
    message["padding"] = "p" * (HUGE - base)
    raw = orjson.dumps(message)
    assert len(raw) == HUGE
    return raw


async def test_records_too_large_to_dead_letter_whole_are_cut_down_and_the_stream_goes_on(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("oversized")
    tokens = [mint(rng) for _ in range(10)]
    book = await make_book(db_conn, USERS, AGENTS)
    before = book.signals(PER_USER, tokens)
    after = book.signals(PER_USER, tokens, start=PER_USER)
    not_json = b"x" * HUGE
    nobody = _huge_signal_of_nobody()
    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        await send_all(services.kafka_bootstrap, topics.signals, before)
        huge = await send_all(
            services.kafka_bootstrap,
            topics.signals,
            [not_json, nobody],
            keys=[b"k" * 36, str(uuid.uuid4()).encode()],
        )
        await send_all(services.kafka_bootstrap, topics.signals, after)
        total = (len(before) + len(after)) * AGENTS
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=90)
        dead = await read_all(services.kafka_bootstrap, topics.dlq)
        _, metrics = await worker.get("/metrics")
        alive = worker.is_alive()
    finally:
        code = worker.terminate()

    ledger = await measure(db_conn, book.expected)
    forms = sorted(dict(r.headers).get("payload", b"whole").decode() for r in dead)
    report(
        "8 oversized records",
        records=f"{len(before) + len(after)} signals x {AGENTS} agents + 2 of {HUGE} bytes",
        faults=f"DLQ limit 1048588 bytes; dead letters {forms}",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert_ran_through(worker, code, alive=alive)
    assert len(dead) == 2, [dict(r.headers) for r in dead]
    # By partition and offset: the two records may sit at the same offset of two partitions.
    by_record = {
        (int(dict(r.headers)["original-partition"]), int(dict(r.headers)["original-offset"])): r
        for r in dead
    }
    assert set(by_record) == {(s.partition, s.offset) for s in huge}
    for sent in huge:
        letter = by_record[(sent.partition, sent.offset)]
        headers = dict(letter.headers)
        assert headers["payload"] == b"truncated"
        assert headers["original-size"] == str(HUGE).encode()
        assert headers["original-partition"] == str(sent.partition).encode()
        assert headers["original-topic"] == topics.signals.encode()
        assert letter.value is not None and 0 < len(letter.value) < HUGE
    reasons = sorted(dict(r.headers)["error"].decode()[:16] for r in dead)
    assert reasons[0].startswith("not JSON") and reasons[1].startswith("unknown user_id"), reasons
    assert 'signal_worker_dead_letters_truncated_total{payload="truncated"} 2.0' in metrics
    assert any('"dlq_topic_record_limit_small"' in line for line in worker.lines)
    assert_exactly_once(ledger)
