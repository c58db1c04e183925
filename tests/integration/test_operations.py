"""Operating the worker: `offsets show|reset`, `/metrics`, `/readyz` and `/healthz`.

Real broker, real database, the real CLI; the worker runs in-process (`running_worker`)
so that its metrics registry and HTTP port are at hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account, set_sol_price, signal_message
from tests.helpers.cli import CliRun, run_cli
from tests.helpers.db import connected, create_migrated, drop_database
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics, create_test_topics, delete_topics, publish, read_topic
from tests.helpers.services import OwnServices, Services
from tests.helpers.workers import env_for, make_settings, running_worker, wait_for, wait_for_count
from worker.metrics import Metrics
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TABLES = [
    "trading_signals",
    "signal_executions",
    "agent_transactions",
    "agent_balances",
    "agent_positions",
    "token_prices",
]


# --- helpers ------------------------------------------------------------------------------


async def cli(settings: Settings, *args: str) -> CliRun:
    """`python -m worker ARGS` with the settings' environment, without blocking the loop."""
    return await run_cli(env_for(settings), *args, timeout_s=60)


@dataclass(frozen=True)
class Row:
    stored: int | None
    committed: int | None
    end: int
    lag: int


def parse_table(stdout: str) -> dict[tuple[str, int], Row]:
    """The rows of the `offsets` table by (topic, partition)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["topic", "partition"])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break  # what is wrong with some offsets follows the table
        topic, partition, stored, committed, end, lag = line.split()
        rows[(topic, int(partition))] = Row(
            None if stored == "-" else int(stored),
            None if committed == "-" else int(committed),
            int(end),
            int(lag),
        )
    return rows


async def stored_offsets(db_url: str, group: str) -> dict[tuple[str, int], int]:
    async with connected(db_url) as conn:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = $1",
            group,
        )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled counter that has not been touched yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def poll(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    await wait_for(check, timeout_s=timeout_s, what=what)


async def signals_run(
    services: Services, db_url: str, topics: Topics, conn: asyncpg.Connection
) -> tuple[Settings, int]:
    """Three users' signals through a worker run that has since stopped; (settings, count)."""
    await set_sol_price(conn, "100")
    accounts = [await make_account(conn) for _ in range(3)]
    messages = [
        signal_message(a.user_id, token, **({"idempotency_key": f"k-{i}"} if i % 2 else {}))
        for i, (a, token) in enumerate((a, t) for a in accounts for t in (TOKEN_A, TOKEN_B))
    ]
    settings = make_settings(services, db_url, topics)
    async with running_worker(settings):
        await publish(services.kafka_bootstrap, topics.signals, messages)
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", len(messages))
    return settings, len(messages)


# --- offsets show / reset -----------------------------------------------------------------


async def test_show_after_a_run_has_everything_stored_and_committed_and_no_lag(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    settings, sent = await signals_run(services, db_url, topics, db_conn)
    shown = await cli(settings, "offsets", "show")
    assert shown.code == 0, shown.stderr
    rows = parse_table(shown.stdout)
    inputs = (topics.signals, topics.prices, topics.commands)
    assert set(rows) == {(t, p) for t in inputs for p in range(3)}
    signal_rows = [r for (t, _), r in rows.items() if t == topics.signals]
    assert sum(r.end for r in signal_rows) == sent
    for (topic, partition), row in rows.items():
        assert row.lag == 0, (topic, partition, row)
        if row.end:
            assert row.stored == row.committed == row.end, (topic, partition, row)
    assert f"group {topics.group} (state Empty, 0 member(s))" in shown.stdout


async def test_reset_to_earliest_replays_every_record_and_writes_nothing_new(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    settings, sent = await signals_run(services, db_url, topics, db_conn)
    before = await table_counts(db_conn)

    reset = await cli(settings, "offsets", "reset", "--to-earliest")
    assert reset.code == 0, reset.stderr
    assert f"reset 9 partition(s) of group {topics.group} to the earliest records" in reset.stdout
    for key, row in parse_table(reset.stdout).items():
        assert row.stored == row.committed == 0, (key, row)
        assert row.lag == row.end
    stored = await stored_offsets(db_url, topics.group)
    inputs = (topics.signals, topics.prices, topics.commands)
    assert stored == {(t, p): 0 for t in inputs for p in range(3)}

    metrics = Metrics()
    async with running_worker(settings, metrics):

        async def replayed() -> bool:
            offsets = await stored_offsets(db_url, topics.group)
            return sum(o for (t, _), o in offsets.items() if t == topics.signals) == sent

        await poll(replayed, "the stored offsets to reach the end again")
    registry = metrics.registry
    assert (
        registry.get_sample_value("signal_worker_records_consumed_total", {"topic": topics.signals})
        == sent
    )
    for status in ("success", "skipped", "failed"):
        assert not registry.get_sample_value(
            "signal_worker_executions_total", {"status": status}
        ), status
    assert await table_counts(db_conn) == before

    shown = await cli(settings, "offsets", "show")
    assert all(r.lag == 0 for r in parse_table(shown.stdout).values()), shown.stdout
    check = await cli(settings, "check")
    assert check.code == 0, check.stdout


async def test_reset_is_refused_while_a_worker_is_in_the_group(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn)
    await set_sol_price(db_conn, "100")
    settings = make_settings(services, db_url, topics)
    async with running_worker(settings) as (_, port):
        await publish(services.kafka_bootstrap, topics.signals, [signal_message(account.user_id)])
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 1)

        async def ready() -> bool:
            return (await http_get(port, "/readyz"))[0] == 200

        await poll(ready, "the worker to own its partitions")
        stored = await stored_offsets(db_url, topics.group)
        refused = await cli(settings, "offsets", "reset", "--to-earliest")
        assert refused.code == 1
        assert refused.stdout == ""
        assert len(refused.stderr) == 1, refused.stderr
        [line] = refused.stderr
        assert line.startswith(f"signal-worker offsets: consumer group '{topics.group}' is active")
        assert "stop every worker of the group" in line
        assert await stored_offsets(db_url, topics.group) == stored
    shown = parse_table((await cli(settings, "offsets", "show")).stdout)
    assert all(r.stored == r.committed == r.end for r in shown.values() if r.end)


async def test_skip_dead_letters_the_next_record_and_moves_one_partition_past_it(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    """For the record nobody foresaw: the partition stuck at offset O moves to O + 1 after
    the record at O went to the DLQ; anything but the next record is refused."""
    settings, _ = await signals_run(services, db_url, topics, db_conn)
    shown = parse_table((await cli(settings, "offsets", "show")).stdout)
    (topic, partition), row = next((k, r) for k, r in shown.items() if k[0] == topics.signals
                                   and r.end >= 2)  # fmt: skip
    # Pretend the group is stuck one record before the end of that partition.
    stuck = row.end - 1
    await db_conn.execute(
        "UPDATE consumer_offsets SET next_offset = $4 WHERE consumer_group = $1 AND topic = $2 "
        "AND partition = $3",
        topics.group,
        topic,
        partition,
        stuck,
    )
    args = ["offsets", "skip", "--topic", topic, "--partition", str(partition)]
    refused = await cli(settings, *args, "--offset", str(stuck - 1))
    assert refused.code == 2
    assert refused.stderr[-1] == (
        f"signal-worker offsets: {topic}:{partition} would be read from offset {stuck}, so "
        f"offset {stuck - 1} cannot be skipped (already past it); skip moves past the next "
        "record only (`offsets reset` moves further)"
    )
    refused = await cli(settings, *args, "--offset", str(stuck + 1))
    assert refused.code == 2
    assert "(not there yet)" in refused.stderr[-1]

    skipped = await cli(settings, *args, "--offset", str(stuck), "--reason", "poison record")
    assert skipped.code == 0, skipped.stderr
    assert skipped.stdout.splitlines()[0] == (
        f"skipped {topic}:{partition} offset {stuck} (sent to {topics.dlq} with error "
        f"'poison record'); the group resumes at {stuck + 1}"
    )
    after = parse_table(skipped.stdout.split("\n", 1)[1])
    assert after[(topic, partition)].stored == after[(topic, partition)].committed == stuck + 1
    [dead] = await read_topic(services.kafka_bootstrap, topics.dlq, 1)
    headers = dict(dead.headers)
    assert headers["error"] == b"poison record"
    assert headers["original-topic"] == topic.encode()
    assert headers["original-partition"] == str(partition).encode()
    assert headers["original-offset"] == str(stuck).encode()

    nothing_left = await cli(settings, *args, "--offset", str(stuck + 1))
    assert nothing_left.code == 2
    assert "has no record at offset" in nothing_left.stderr[-1]


async def test_reset_to_a_timestamp_lands_between_records_and_to_latest_at_the_end(
    services: Services, db_url: str, topics: Topics
) -> None:
    base_ms = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
    # partition 0: records at base, +1 s, +2 s (offsets 0, 1, 2); partition 1: one at +3 s.
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for partition, offset_ms in [(0, 0), (0, 1000), (0, 2000), (1, 3000)]:
            await producer.send_and_wait(
                topics.signals,
                b'{"n": %d}' % offset_ms,
                partition=partition,
                timestamp_ms=base_ms + offset_ms,
            )
    finally:
        await producer.stop()
    settings = make_settings(services, db_url, topics)

    def rfc3339(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")

    for at_ms, expected in [
        (1500, {0: 2, 1: 0, 2: 0}),
        (1000, {0: 1, 1: 0, 2: 0}),
        (2500, {0: 3, 1: 0, 2: 0}),
        (9000, {0: 3, 1: 1, 2: 0}),
    ]:
        reset = await cli(
            settings,
            "offsets",
            "reset",
            "--to-timestamp",
            rfc3339(base_ms + at_ms),
            "--topic",
            topics.signals,
        )
        assert reset.code == 0, reset.stderr
        rows = parse_table(reset.stdout)
        assert set(rows) == {(topics.signals, p) for p in range(3)}
        got = {p: rows[(topics.signals, p)] for p in range(3)}
        assert {p: r.stored for p, r in got.items()} == expected, at_ms
        assert {p: r.committed for p, r in got.items()} == expected, at_ms
        stored = await stored_offsets(db_url, topics.group)
        assert stored == {(topics.signals, p): o for p, o in expected.items()}, at_ms

    latest = await cli(settings, "offsets", "reset", "--to-latest")
    assert latest.code == 0, latest.stderr
    rows = parse_table(latest.stdout)
    assert all(r.stored == r.committed == r.end and r.lag == 0 for r in rows.values())
    assert rows[(topics.signals, 0)].end == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reset", "--to-timestamp", "yesterday"], "is not an RFC 3339 timestamp"),
        (["reset", "--to-timestamp", "2026-11-26T12:00:00"], "needs a UTC offset"),
        (["show", "--topic", "other-topic"], "is none of SIGNALS_TOPIC"),
    ],
)
async def test_bad_arguments_exit_2_with_one_line(
    services: Services, db_url: str, topics: Topics, args: list[str], message: str
) -> None:
    done = await cli(make_settings(services, db_url, topics), "offsets", *args)
    assert done.code == 2
    assert len(done.stderr) == 1, done.stderr
    assert message in done.stderr[0]


# --- /metrics -----------------------------------------------------------------------------


async def test_metrics_move_by_what_a_run_did(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, [None, None, {"signals": {"minScore": 5}}])
    await set_sol_price(db_conn, "100")
    settings = make_settings(services, db_url, topics)
    async with running_worker(settings) as (_, port):
        before = await scrape(port)
        await publish(
            services.kafka_bootstrap,
            topics.signals,
            [signal_message(account.user_id, signal_strength=4), b"not json"],
        )
        await publish(
            services.kafka_bootstrap,
            topics.prices,
            [{"token_address": TOKEN_B, "price_usd": "1.5"}],
            key=lambda _: TOKEN_B.encode(),
        )

        async def counted() -> bool:
            now = await scrape(port)
            return (
                value(now, "signal_worker_dead_letters_total", reason="invalid") >= 1
                and value(now, "signal_worker_records_consumed_total", topic=topics.prices) >= 1
                and sum(named(now, "signal_worker_executions_total").values()) >= 3
            )

        await poll(counted, "the run's metrics")
        after = await scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("signal_worker_records_consumed_total", topic=topics.signals) == 2
    assert delta("signal_worker_records_consumed_total", topic=topics.prices) == 1
    assert delta("signal_worker_executions_total", status="success") == 2
    assert delta("signal_worker_executions_total", status="skipped") == 1
    assert delta("signal_worker_executions_total", status="failed") == 0
    assert delta("signal_worker_dead_letters_total", reason="invalid") == 1
    assert delta("signal_worker_dead_letters_total", reason="unknown_user") == 0
    assert delta("signal_worker_end_to_end_latency_seconds_count") == 3
    lag = named(after, "signal_worker_consumer_lag")
    assert {dict(labels)["topic"] for labels in lag} == {topics.signals, topics.prices}
    assert all(v == 0 for v in lag.values()), lag
    assert ("signal_worker_db_pool_in_use", frozenset()) in after
    assert value(after, "signal_worker_assigned_partitions") == 9  # signals, prices, commands


# --- /readyz and /healthz while PostgreSQL is stopped ----------------------------------------


@pytest.fixture
async def own_database(own_services: OwnServices) -> AsyncIterator[str]:
    """A database with the schema on the restartable PostgreSQL."""
    url = await create_migrated(own_services.services)
    yield url
    await drop_database(own_services.services, url)


@pytest.mark.timeout(180)
async def test_readyz_is_503_while_postgres_is_down_and_200_after(
    own_services: OwnServices, own_database: str
) -> None:
    own = own_services.services
    topics = await create_test_topics(own)
    settings = make_settings(own, own_database, topics)
    try:
        async with running_worker(settings) as (_, port):
            last: list[tuple[int, str]] = []

            def readyz_is(status: int, text: str) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    last[:] = [await http_get(port, "/readyz")]
                    return last[0][0] == status and text in last[0][1]

                return check

            await poll(readyz_is(200, "ready"), "ready before the stop")
            await asyncio.to_thread(own_services.stop, "postgres")
            try:
                await poll(
                    readyz_is(503, "not ready: database unreachable"),
                    f"503 while PostgreSQL is down (last {last})",
                )
                assert await http_get(port, "/healthz") == (200, "ok\n")
            finally:
                await asyncio.to_thread(own_services.start, "postgres")
            await poll(readyz_is(200, "ready"), f"200 after the start (last {last})", 60)
            assert await http_get(port, "/healthz") == (200, "ok\n")
    finally:
        await delete_topics(
            own.kafka_bootstrap, [topics.signals, topics.prices, topics.dlq, topics.commands]
        )
