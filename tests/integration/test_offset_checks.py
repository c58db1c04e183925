"""Stored offsets that do not belong to the partition's log (a recreated topic, another
cluster, records removed by retention): never a silent drop (`worker.pipeline.offset_checks`)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from structlog.testing import capture_logs

from tests.helpers.books import make_account, set_sol_price, signal_message
from tests.helpers.cli import run_cli
from tests.helpers.db import count
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics, publish
from tests.helpers.services import Services
from tests.helpers.workers import env_for, make_settings, running_worker, wait_for, wait_for_count
from worker.metrics import Metrics
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXECUTIONS = "SELECT count(*) FROM signal_executions"
OTHER_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # a valid id that no topic here has
STORE = (
    "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, topic_id) "
    "VALUES ($1, $2, $3, $4, $5)"
)


def blocked(metrics: Metrics) -> dict[tuple[str, str], str]:
    """The blocked-partitions gauge: (topic, partition) -> reason, where it is 1."""
    return {
        (s.labels["topic"], s.labels["partition"]): s.labels["reason"]
        for family in metrics.registry.collect()
        if family.name == "signal_worker_partitions_blocked"
        for s in family.samples
        if s.value == 1
    }


async def signals(services: Services, topics: Topics, user: uuid.UUID, n: int) -> None:
    await publish(
        services.kafka_bootstrap,
        topics.signals,
        [signal_message(user, idempotency_key=f"k{i}") for i in range(n)],
    )


async def stored(db_conn: asyncpg.Connection, topics: Topics) -> dict[int, int]:
    rows = await db_conn.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", topics.signals
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def reset_to_earliest(settings: Settings, topic: str) -> None:
    run = await run_cli(
        env_for(settings), "offsets", "reset", "--topic", topic, "--to-earliest", timeout_s=60
    )
    assert run.code == 0, run


async def test_a_stored_offset_past_the_log_end_is_not_consumed_until_reset(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    # Offsets of a log that had 100 records per partition; the topic now holds 3 records.
    await set_sol_price(db_conn)
    account = await make_account(db_conn, [None, None])
    await db_conn.executemany(
        STORE, [(topics.group, topics.signals, p, 100, None) for p in range(3)]
    )
    await signals(services, topics, account.user_id, 3)
    settings = make_settings(services, db_url, topics)
    metrics = Metrics()
    with capture_logs() as logs:
        async with running_worker(settings, metrics) as (_, port):
            await wait_for(
                lambda: asyncio.sleep(0, len(blocked(metrics)) == 3),
                what="the three signal partitions to be blocked",
            )
            status, body = await http_get(port, "/readyz")
            shown = await run_cli(env_for(settings), "offsets", "show", timeout_s=60)
    assert blocked(metrics) == {(topics.signals, str(p)): "past_log_end" for p in range(3)}
    assert status == 503, body
    assert "3 partition(s) not consumed" in body, body
    assert f"signal-worker offsets reset --topic {topics.signals} --to-earliest" in body, body
    errors = [e for e in logs if e["event"] == "partition_not_consumed"]
    assert sorted(e["partition"] for e in errors) == [f"{topics.signals}:{p}" for p in range(3)]
    assert all("past the log end" in e["detail"] for e in errors), errors
    assert not [e for e in logs if e["event"] == "records_below_stored_offset_dropped"]
    assert await count(db_url, EXECUTIONS) == 0
    assert await stored(db_conn, topics) == dict.fromkeys(range(3), 100)
    assert shown.code == 0, shown
    notes = [line for line in shown.stdout.splitlines() if "past the log end" in line]
    assert len(notes) == 3, shown.stdout
    assert f"`signal-worker offsets reset --topic {topics.signals} --to-earliest`" in notes[0]

    await reset_to_earliest(settings, topics.signals)
    metrics = Metrics()
    async with running_worker(settings, metrics) as (_, port):
        await wait_for_count(db_url, EXECUTIONS, 3 * 2)
        status, body = await http_get(port, "/readyz")
    assert blocked(metrics) == {}
    assert status == 200, body
    ids = await db_conn.fetch("SELECT DISTINCT topic_id FROM consumer_offsets")
    assert len(ids) == 1 and ids[0]["topic_id"] is not None


async def test_a_changed_topic_id_blocks_even_a_log_longer_than_the_stored_offset(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    # One record was processed in another topic of this name; the new topic holds 3, all in
    # the partition of the one user: from the stored offset 1 the first would be skipped.
    await set_sol_price(db_conn)
    account = await make_account(db_conn, [None, None])
    await db_conn.executemany(
        STORE, [(topics.group, topics.signals, p, 1, OTHER_TOPIC_ID) for p in range(3)]
    )
    await signals(services, topics, account.user_id, 3)
    settings = make_settings(services, db_url, topics)
    metrics = Metrics()
    async with running_worker(settings, metrics):
        await wait_for(
            lambda: asyncio.sleep(0, len(blocked(metrics)) == 3),
            what="the three signal partitions to be blocked",
        )
    # The partition holding the records has a log past the stored offset: only the id tells.
    assert set(blocked(metrics).values()) == {"topic_recreated"}, blocked(metrics)
    assert await count(db_url, EXECUTIONS) == 0

    await reset_to_earliest(settings, topics.signals)
    async with running_worker(settings, Metrics()):
        await wait_for_count(db_url, EXECUTIONS, 3 * 2)


async def test_records_removed_before_they_were_processed_are_counted_loudly(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    await set_sol_price(db_conn)
    account = await make_account(db_conn, [None])
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            message = signal_message(account.user_id, idempotency_key=f"k{i}")
            await producer.send_and_wait(
                topics.signals, str(message).replace("'", '"').encode(), partition=0
            )
    finally:
        await producer.stop()
    # Processed up to offset 1; then offsets 1 and 2 are removed from the log (retention).
    await db_conn.execute(STORE, topics.group, topics.signals, 0, 1, None)
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topics.signals, 0): RecordsToDelete(3)})
    finally:
        await admin.close()
    settings = make_settings(services, db_url, topics)
    metrics = Metrics()
    with capture_logs() as logs:
        async with running_worker(settings, metrics):
            await wait_for_count(db_url, EXECUTIONS, 2)
    missed = metrics.registry.get_sample_value(
        "signal_worker_offsets_never_processed_total", {"topic": topics.signals}
    )
    assert missed == 2
    [event] = [e for e in logs if e["event"] == "records_removed_before_processed"]
    assert event["never_processed"] == 2
    assert event["partition"] == f"{topics.signals}:0"
    assert event["log_level"] == "error"
    assert blocked(metrics) == {}
