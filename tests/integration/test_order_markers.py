"""Order markers on real Kafka and PostgreSQL (`worker.pipeline.markers`).

A signal at rest waits for the price partitions, which have nothing newer to read. With
`ORDER_MARKERS` the worker writes a marker into each and the signal goes once they are read
back, not `LATENESS_MS` later; a tick stamped before the signal and written after its markers
is decided after the signal, by this worker and by any other reading the same topics
(another group, with markers off, from the start): the log decides, not when it was read.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.db import connected, create_database, create_migrated, database_name
from tests.helpers.db import drop_database as drop
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics, read_all, send_all
from tests.helpers.services import Services
from tests.helpers.streams import differences, ledger_rows
from tests.helpers.workers import make_settings, running_worker, wait_for, wait_for_count
from worker.metrics import Metrics
from worker.pipeline.markers import HEADER, HEADER_VALUE, is_marker

pytestmark = pytest.mark.timeout(180)

AGENTS = 3
TOKEN = "7" * 44  # a made-up mint
# Longer than the test: without markers the signal would wait this long for the prices.
LATENESS_MS = 600_000


def tick(token: str, usd: str, at: datetime) -> dict[str, Any]:
    return {"token_address": token, "price_usd": usd, "ts": at.isoformat()}


async def fills(url: str, token: str) -> list[Decimal]:
    async with connected(url) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT output_price FROM agent_transactions WHERE output_mint = $1", token
        )
    return [r[0] for r in rows]


async def price_of(url: str, token: str) -> Decimal | None:
    async with connected(url) as conn:
        price: Decimal | None = await conn.fetchval(
            "SELECT price_usd FROM token_prices WHERE token_address = $1", token
        )
    return price


async def test_markers_let_a_signal_at_rest_go_and_every_reader_of_the_topics_agrees(
    services: Services, topics: Topics
) -> None:
    rng = random.Random(2212)
    token = mint(rng)
    url_a = await create_migrated(services)
    try:
        async with connected(url_a) as conn:
            book = await make_book(conn, 1, AGENTS)
        # The same users and agents for the second reader.
        url_b = await create_database(services, database_name(url_a))
        try:
            await _live_then_backlog(services, topics, token, book, url_a, url_b)
        finally:
            await drop(services, url_b)
    finally:
        await drop(services, url_a)


async def _live_then_backlog(
    services: Services, topics: Topics, token: str, book: Any, url_a: str, url_b: str
) -> None:
    bootstrap = services.kafka_bootstrap
    long_ago = datetime.now(UTC) - timedelta(minutes=20)
    await send_all(bootstrap, topics.prices, [tick(token, "2", long_ago)])

    # 1. Live, with markers: the signal (no price of its own: it buys at the token's) goes
    # at rest although LATENESS_MS is ten minutes (without markers this would time out).
    metrics = Metrics()
    live = make_settings(services, url_a, topics, order_markers=True, lateness_ms=LATENESS_MS)
    signal = book.signals(1, [token])[0]
    now = datetime.now(UTC)
    signal_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
    signal["created_at"] = signal_at.isoformat()
    async with running_worker(live, metrics):
        await wait_for(lambda: _has_price(url_a, token, Decimal(2)), what="the first tick")
        await send_all(bootstrap, topics.signals, [signal])
        await wait_for_count(url_a, "SELECT count(*) FROM signal_executions", AGENTS)
    assert metrics.order_markers.labels(topics.prices)._value.get() >= 3  # one a partition
    assert metrics.order_markers.labels(topics.commands)._value.get() >= 1

    # 2. A tick stamped a millisecond before the signal, written after its markers; and
    # forged markers: one a day ahead (it would hold its partition's ticks back until
    # then), one that is not a marker's JSON: dead-lettered, not honoured. The same
    # worker, restarted with a lateness it can wait out, applies the tick after the signal.
    before = signal_at - timedelta(milliseconds=1)
    await send_all(bootstrap, topics.prices, [tick(token, "3", before)])
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    header = [(HEADER, HEADER_VALUE)]
    await send_all(
        bootstrap,
        topics.prices,
        [{"marker": "order", "at": ahead}, b"not json"],
        keys=[b"k", b"k"],
        headers=[header, header],
    )
    again = make_settings(services, url_a, topics, order_markers=True, lateness_ms=2000)
    async with running_worker(again):
        await wait_for(lambda: _has_price(url_a, token, Decimal(3)), what="the late tick")
    records = await read_all(bootstrap, topics.prices)
    assert len([r for r in records if is_marker(r) and b'"group"' in (r.value or b"")]) >= 3
    commands = await read_all(bootstrap, topics.commands)
    assert commands and all(is_marker(r) for r in commands)
    dead = await read_all(bootstrap, topics.dlq)
    reasons = sorted(dict(r.headers)["error"].decode() for r in dead)
    assert len(reasons) == 2, reasons
    assert all("invalid order marker" in reason for reason in reasons), reasons
    assert await fills(url_a, token) == [Decimal("0.02")]  # 2 USD at 100 USD/SOL

    # 3. Another group reads the same topics from the start, markers off, the default
    # lateness: the tick stamped before the signal comes after its markers in the log, so
    # it is decided after the signal here too (without them it would come first and the
    # signal would buy at 3 USD), and the ledgers are identical row for row.
    backlog = make_settings(
        services, url_b, topics, consumer_group=topics.group + "-backlog", order_markers=False
    )
    async with running_worker(backlog):
        await wait_for_count(url_b, "SELECT count(*) FROM signal_executions", AGENTS)
        await wait_for(lambda: _caught_up(url_b, backlog.consumer_group, records), what="backlog")
    assert await fills(url_b, token) == [Decimal("0.02")]
    assert await price_of(url_b, token) == Decimal(3)
    async with connected(url_a) as a, connected(url_b) as b:
        assert differences(await ledger_rows(a), await ledger_rows(b)) == []


async def _has_price(url: str, token: str, usd: Decimal) -> bool:
    return await price_of(url, token) == usd


async def _caught_up(url: str, group: str, records: list[Any]) -> bool:
    """Every record of the prices topic read is stored as done (markers included)."""
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    async with connected(url) as conn:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = $1 AND topic = $2",
            group,
            records[0].topic,
        )
    stored = {r["partition"]: r["next_offset"] for r in rows}
    return all(stored.get(p, 0) >= end for p, end in ends.items())


async def test_with_two_workers_markers_go_to_the_other_workers_partitions_too(
    services: Services, db_url: str, topics: Topics
) -> None:
    """Each worker owns some price partitions: a signal waits for the other's too. It writes
    markers there as well; their owner reads them and reports past them (`order_bounds`),
    so the signals go although LATENESS_MS is ten minutes."""
    async with connected(db_url) as conn:
        book = await make_book(conn, 6, 2)
    settings = make_settings(services, db_url, topics, order_markers=True, lateness_ms=LATENESS_MS)
    async with running_worker(settings) as (_, port_a), running_worker(settings) as (_, port_b):

        async def both_ready() -> bool:
            return all([(await http_get(p, "/readyz"))[0] == 200 for p in (port_a, port_b)])

        await wait_for(both_ready, timeout_s=60, what="both workers owning partitions")
        signals = book.signals(1, [TOKEN])
        for signal in signals:
            signal["price_usd"] = "2"
        assert len({s["user_id"] for s in signals}) == 6
        await send_all(services.kafka_bootstrap, topics.signals, signals)
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 12, timeout_s=60)
    async with connected(db_url) as conn:
        owners = await conn.fetch(
            "SELECT DISTINCT partition FROM consumer_offsets WHERE topic = $1", topics.signals
        )
    assert len(owners) >= 2  # signals on more than one partition: both workers had some
