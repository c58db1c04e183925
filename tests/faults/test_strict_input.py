"""Scenario 5b: lenient spellings are dead-lettered with their reason, nothing else is lost.

Before (issue 20, items 10 and 6): a price of "١٢" (Arabic-Indic digits) was read as 12, a
key given twice took its last value, "1_000" and " 1 " were prices, a Unix number was a
time, a `signal_type` of zero-width characters passed, the NFC and NFD spellings of one
idempotency key were two signals, and "999999999999.9999999999999999999" passed the bound
and then overflowed numeric(30,18) as a `database` dead letter. Now each is an `invalid`
dead letter naming what is wrong, and the NFD key is the NFC key's redelivery.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.db import stored_offsets, stored_prices
from tests.helpers.kafka import Topics, read_all, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, assert_ran_through, wait_for, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

USERS, AGENTS, PER_USER = 4, 3, 10
NFC_KEY = "café-1"
NFD_KEY = unicodedata.normalize("NFD", NFC_KEY)
# (what is sent in place of a valid signal's field, as raw JSON text; the reason expected)
BAD_SIGNALS = [
    ('"price_usd": "١٢"', "price_usd: must be a decimal written as a JSON number"),
    ('"price_usd": "0.5", "price_usd": "0.6"', "the key 'price_usd' appears twice"),
    ('"price_usd": "1_000"', "price_usd: must be a decimal written as a JSON number"),
    ('"price_usd": " 1 "', "price_usd: must be a decimal written as a JSON number"),
    ('"created_at": 1767268800', "created_at: must be an RFC 3339 timestamp string"),
    ('"signal_type": "\\u200b\\u2060"', "signal_type: must hold a visible character"),
    ('"price_usd": "999999999999.9999999999999999999"', "rounds to 1000000000000"),
]
BAD_TICKS = [
    ('"price_usd": "١٢"', "price_usd: must be a decimal written as a JSON number"),
    ('"price_usd": "1", "price_usd": "2"', "the key 'price_usd' appears twice"),
    ('"price_usd": "999999999999.9999999999999999999"', "rounds to 1000000000000"),
    ('"price_usd": "1", "ts": 1767268800', "ts: must be an RFC 3339 timestamp string"),
]


def _with(message: dict[str, Any], fields: str) -> bytes:
    """`message` as JSON with `fields` (raw JSON text) in place of the fields it names."""
    named = set(re.findall(r'"(\w+)":', fields))
    rest = json.dumps({k: v for k, v in message.items() if k not in named})
    return (rest[:-1] + ", " + fields + "}").encode()


async def test_lenient_spellings_are_dead_lettered_and_nothing_else_is_lost(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("strict-input")
    book = await make_book(db_conn, USERS, AGENTS, deposit_sol=Decimal(100))
    tokens = [mint(rng) for _ in range(USERS * PER_USER + 2)]
    valid: list[bytes] = [json.dumps(s).encode() for s in book.signals(PER_USER, tokens)]
    account = book.accounts[0]
    template = {
        "user_id": str(account.user_id),
        "token_address": tokens[-1],
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 5,
        "price_usd": "0.5",
    }
    # One signal in its NFC spelling, then its NFD spelling: one signal, executed once.
    book.expected[(account.user_id, NFC_KEY)] = book.agents_of(account)
    valid += [json.dumps({**template, "idempotency_key": k}).encode() for k in (NFC_KEY, NFD_KEY)]
    bad = [
        _with({**template, "token_address": tokens[-2], "idempotency_key": f"bad-{i}"}, fields)
        for i, (fields, _) in enumerate(BAD_SIGNALS)
    ]
    signals = valid + bad
    order = list(range(len(signals)))
    rng.shuffle(order)
    now = datetime.now(UTC).isoformat()
    good_tick = {"token_address": mint(rng), "price_usd": "2", "ts": now}
    bad_tokens = [mint(rng) for _ in BAD_TICKS]
    bad_ticks = [
        _with({"token_address": token}, fields)
        for token, (fields, _) in zip(bad_tokens, BAD_TICKS, strict=True)
    ]
    ticks: list[bytes] = [bad_ticks[0], bad_ticks[1], json.dumps(good_tick).encode()]
    ticks += bad_ticks[2:]

    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        keys = [json.loads(s)["user_id"].encode() for s in signals]
        sent_signals = await send_all(
            services.kafka_bootstrap,
            topics.signals,
            [signals[i] for i in order],
            keys=[keys[i] for i in order],
        )
        sent_ticks = await send_all(
            services.kafka_bootstrap,
            topics.prices,
            ticks,
            keys=[
                t.encode() for t in [*bad_tokens[:2], good_tick["token_address"], *bad_tokens[2:]]
            ],
        )

        async def all_consumed() -> bool:
            assert worker.is_alive(), f"the worker died:\n{worker.tail(60)}"
            done_signals = await stored_offsets(db_url, topics.group, topics.signals)
            done_ticks = await stored_offsets(db_url, topics.group, topics.prices)
            return sum(done_signals.values()) >= len(signals) and sum(done_ticks.values()) >= len(
                ticks
            )

        await wait_for(all_consumed, timeout_s=90, what="every record consumed")
        dead = await read_all(services.kafka_bootstrap, topics.dlq)
        alive = worker.is_alive()
    finally:
        code = worker.terminate()

    expected_dead: dict[tuple[str, int, int], tuple[bytes, str]] = {}
    for sent, i in zip(sent_signals, order, strict=True):
        if i >= len(valid):
            expected_dead[(topics.signals, sent.partition, sent.offset)] = (
                signals[i],
                BAD_SIGNALS[i - len(valid)][1],
            )
    for sent, value in zip(sent_ticks, ticks, strict=True):
        if value in bad_ticks:
            reason = BAD_TICKS[bad_ticks.index(value)][1]
            expected_dead[(topics.prices, sent.partition, sent.offset)] = (value, reason)
    got_dead: dict[tuple[str, int, int], tuple[bytes, str]] = {}
    for d in dead:
        headers = dict(d.headers)
        at = (
            headers["original-topic"].decode(),
            int(headers["original-partition"]),
            int(headers["original-offset"]),
        )
        got_dead[at] = (d.value, headers["error"].decode())
    ledger = await measure(db_conn, book.expected)
    prices = await stored_prices(db_conn, [good_tick["token_address"], *bad_tokens])
    signal_rows = await db_conn.fetchval(
        "SELECT count(*) FROM trading_signals WHERE user_id = $1 AND idempotency_key = $2",
        account.user_id,
        NFC_KEY,
    )
    report(
        "5b strict input",
        records=f"{len(valid)} valid signals (one NFC key twice, once as NFD) x {AGENTS} agents, "
        f"{len(bad)} lenient signals, {len(ticks)} ticks ({len(bad_ticks)} lenient)",
        faults=f"{len(dead)} dead letters, {len(got_dead.keys() - expected_dead.keys())} "
        f"valid ones among them",
        **ledger.figures,
        exit=code,
        seed=seed,
    )
    assert_ran_through(worker, code, alive=alive)
    assert len(dead) == len(got_dead) == len(expected_dead), [e for _, e in got_dead.values()]
    assert got_dead.keys() == expected_dead.keys()
    for at, (value, reason) in expected_dead.items():
        got_value, error = got_dead[at]
        assert got_value == value, f"the dead letter at {at} is not the record unchanged"
        assert reason in error, (at, error)
        assert error.startswith(("invalid signal: ", "invalid price tick: ", "not JSON")), error
    assert prices == {good_tick["token_address"]: Decimal(2)}
    assert signal_rows == 1
    assert await db_conn.fetchval(EXECUTIONS) == (len(valid) - 1) * AGENTS
    assert_exactly_once(ledger)
