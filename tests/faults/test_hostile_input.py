"""Scenario 5: 10,000 hostile records among valid signals; every bad one dead-lettered.

The bad records are bad by construction (no oracle from the worker's own validation):
hypothesis draws raw bytes, text, arbitrary JSON and signal-shaped objects with at least
one field of the wrong type or out of its range; seeded hand-written generators add what
hypothesis cannot draw in its small buffers: truncated JSON, huge numbers, NaN literals,
1 MB strings, 100,000-deep nesting, control characters, invalid UTF-8, unknown users,
records without a value, and forged dead-letter headers. Both are deterministic.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.helpers.books import make_book, mint
from tests.helpers.db import stored_offsets
from tests.helpers.kafka import Sent, Topics, read_all, send_all
from tests.helpers.ledger import Report, assert_exactly_once, measure
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, starts, wait_for, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

BAD, VALID_PER_USER, USERS, AGENTS = 10_000, 100, 10, 2
NULL_RECORDS = 6  # records with neither key nor value, one per partition and then some
SEED = 20_240_601
MEGABYTE_STRINGS, DEEP_NESTINGS, DATABASE_REJECTS = 6, 10, 30
HYPOTHESIS_BATCH, HYPOTHESIS_EXAMPLES = 50, 60  # 3,000 records drawn by hypothesis
_MINT_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
_FORGED = [("error", b"forged"), ("original-offset", b"-1"), ("original-topic", b"elsewhere")]


@dataclass(frozen=True)
class Record:
    """One record to publish: value, key, headers, and whether it must be dead-lettered."""

    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    is_bad: bool
    kind: str


# ---------------------------------------------------------------------------- hypothesis


def _wrong(*, optional: bool = False) -> st.SearchStrategy[Any]:
    """JSON values of the wrong type for a string field (null too, unless `optional`)."""
    wrong: list[st.SearchStrategy[Any]] = [
        st.booleans(),
        st.integers(),
        st.floats(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    ]
    return st.one_of(*wrong) if optional else st.one_of(st.none(), *wrong)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# Per field: values that break the contract's rule for it (section 3).
_BAD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "user_id": st.one_of(
        st.uuids().map(str),  # a well-formed id of nobody: an unknown user
        st.text(max_size=40).filter(lambda s: not _is_uuid(s)),
        _wrong(),
    ),
    "token_address": st.one_of(
        st.text(max_size=31),
        st.text(min_size=45, max_size=60).filter(lambda s: len(s.strip()) > 44),
        st.text(min_size=32, max_size=44).filter(lambda s: not _MINT_RE.match(s.strip())),
        _wrong(),
    ),
    "signal_type": st.one_of(
        st.sampled_from(["", "   ", "\t\n"]),
        st.text(min_size=51, max_size=80).filter(lambda s: len(s.strip()) > 50),
        _wrong(),
    ),
    "signal_strength": st.one_of(
        st.integers().filter(lambda n: not 1 <= n <= 5),
        st.floats(),
        st.text(max_size=3),
        st.booleans(),
        st.none(),
    ),
    "price_usd": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=10**12),
        st.floats().filter(lambda x: not 0 < x < 1e12),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    ),
    "holder_count": st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**31),
        st.floats(),  # a JSON number with a point or exponent is no integer, 3.0 included
        st.text(max_size=5),
        st.booleans(),
    ),
    "created_at": st.datetimes().map(lambda d: d.isoformat()),  # no time zone
    "symbol": st.one_of(
        st.text(min_size=51, max_size=70).filter(lambda s: len(s.strip()) > 50),
        _wrong(optional=True),
    ),
}

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _signal_shaped(users: Sequence[str]) -> st.SearchStrategy[bytes]:
    """A valid signal of a known user with one to three fields broken."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        message: dict[str, Any] = {
            "user_id": draw(st.sampled_from(users)),
            "token_address": mint(random.Random(draw(st.integers(0, 99)))),
            "signal_type": "Velocity (Dex Boost Detection)",
            "signal_strength": draw(st.integers(1, 5)),
            "idempotency_key": f"hostile-{draw(st.uuids())}",
        }
        for name in draw(st.sets(st.sampled_from(sorted(_BAD_FIELDS)), min_size=1, max_size=3)):
            message[name] = draw(_BAD_FIELDS[name])
        return json.dumps(message).encode()

    return build()


def _hypothesis_records(users: Sequence[str]) -> list[bytes | None]:
    """Hypothesis-drawn bad values, deterministic (`derandomize`)."""
    drawn: list[bytes | None] = []
    one = st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        _JSON.map(lambda v: json.dumps(v).encode()),
        _signal_shaped(users),
        _signal_shaped(users),
    )

    @settings(
        max_examples=HYPOTHESIS_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(one, min_size=HYPOTHESIS_BATCH, max_size=HYPOTHESIS_BATCH))
    def draw(values: list[bytes]) -> None:
        drawn.extend(values)

    draw()
    return drawn


# ---------------------------------------------------------------------------- by hand

Generator = Callable[[random.Random, Sequence[str]], bytes | None]


def _valid(rng: random.Random, users: Sequence[str], user: str | None = None) -> dict[str, Any]:
    return {
        "user_id": user or rng.choice(users),
        "token_address": mint(rng),
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": rng.randint(1, 5),
        "price_usd": "0.25",
        "idempotency_key": f"hostile-{rng.getrandbits(64):016x}",
    }


def _with_literal(rng: random.Random, users: Sequence[str], name: str, literal: str) -> bytes:
    """A known user's signal whose field `name` is the raw JSON text `literal`."""
    message = _valid(rng, users)
    message[name] = "@@"
    return json.dumps(message).replace('"@@"', literal).encode()


def truncated(rng: random.Random, users: Sequence[str]) -> bytes:
    raw = json.dumps(_valid(rng, users)).encode()
    return raw[: rng.randrange(1, len(raw))]


_WRONG_TYPES: list[tuple[str, Any]] = [
    ("signal_strength", "4"), ("signal_strength", 4.5), ("signal_strength", True),
    ("signal_strength", None), ("signal_strength", [4]), ("signal_strength", {"v": 4}),
    ("user_id", 12345), ("user_id", None), ("user_id", ["x"]), ("user_id", True),
    ("token_address", 123), ("token_address", None), ("token_address", ["x"]),
    ("signal_type", 7), ("signal_type", None), ("signal_type", {"t": "x"}),
    ("symbol", 5), ("symbol", ["x"]), ("source", 1.5), ("activation_reason", False),
    ("idempotency_key", 42), ("price_usd", [1]), ("price_usd", {"v": 1}), ("price_usd", True),
    ("price_usd", "cheap"), ("market_cap_usd", "big"), ("liquidity_usd", False),
    ("holder_count", "12"), ("holder_count", 1.5), ("holder_count", True),
    ("created_at", "yesterday"), ("created_at", True), ("created_at", "2024-01-01T00:00:00"),
]  # fmt: skip


def wrong_type(rng: random.Random, users: Sequence[str]) -> bytes:
    name, value = rng.choice(_WRONG_TYPES)
    return json.dumps({**_valid(rng, users), name: value}).encode()


_OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("signal_strength", 0), ("signal_strength", 6), ("signal_strength", -1),
    ("token_address", "0" * 44), ("token_address", "O" * 40), ("token_address", "l" * 32),
    ("token_address", "A" * 31), ("token_address", "A" * 45), ("token_address", ""),
    ("signal_type", ""), ("signal_type", "   "), ("signal_type", "x" * 51),
    ("price_usd", "0"), ("price_usd", "-1"), ("price_usd", 0), ("price_usd", "1e12"),
    ("holder_count", -1), ("holder_count", 2**31), ("symbol", "x" * 51),
    ("activation_reason", "x" * 2001), ("source", "x" * 101), ("idempotency_key", "x" * 201),
    ("idempotency_key", ""), ("user_id", "not-a-uuid"), ("user_id", ""),
    ("market_cap_usd", "0"), ("liquidity_usd", "-5"),
]  # fmt: skip


def out_of_range(rng: random.Random, users: Sequence[str]) -> bytes:
    name, value = rng.choice(_OUT_OF_RANGE)
    return json.dumps({**_valid(rng, users), name: value}).encode()


_HUGE = [
    ("price_usd", "1e400"), ("price_usd", "-1e400"), ("price_usd", "1" + "0" * 400),
    ("signal_strength", "1" + "0" * 400), ("signal_strength", "1e400"),
    ("holder_count", "1" + "0" * 400), ("market_cap_usd", "1e400"), ("liquidity_usd", "1e400"),
    ("signal_strength", "9" * 5000),  # beyond Python's int-from-text digit limit
]  # fmt: skip


def huge_number(rng: random.Random, users: Sequence[str]) -> bytes:
    name, literal = rng.choice(_HUGE)
    return _with_literal(rng, users, name, literal)


def nan_literal(rng: random.Random, users: Sequence[str]) -> bytes:
    name = rng.choice(["price_usd", "signal_strength", "market_cap_usd", "holder_count", "extra"])
    return _with_literal(rng, users, name, rng.choice(["NaN", "Infinity", "-Infinity"]))


def control_characters(rng: random.Random, users: Sequence[str]) -> bytes:
    raw = json.dumps(_valid(rng, users))
    if rng.random() < 0.5:
        # Raw inside a string value: JSON forbids unescaped control characters there.
        at = raw.index('"Velocity') + 3
        return (raw[:at] + chr(rng.randrange(0x20)) + raw[at:]).encode()
    # Anywhere, followed by a NUL, which is valid neither in nor between JSON tokens.
    at = rng.randrange(len(raw))
    return (raw[:at] + chr(rng.choice([*range(0x20), 0x7F])) + "\x00" + raw[at:]).encode()


def invalid_utf8(rng: random.Random, users: Sequence[str]) -> bytes:
    raw = json.dumps(_valid(rng, users)).encode()
    junk = rng.choice([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"])
    at = raw.index(b"Velocity") + 2
    return raw[:at] + junk + raw[at:]


def unknown_user(rng: random.Random, users: Sequence[str]) -> bytes:
    del users
    return json.dumps(_valid(rng, [str(uuid.UUID(int=rng.getrandbits(128), version=4))])).encode()


def not_an_object(rng: random.Random, users: Sequence[str]) -> bytes:
    signal = json.dumps(_valid(rng, users))
    return rng.choice([
        b"[]", b"1", b"-0.5", b'"signal"', b"true", b"null", b"{}", b"  ",
        f"[{signal}]".encode(), json.dumps(signal).encode(),
    ])  # fmt: skip


def no_value(rng: random.Random, users: Sequence[str]) -> bytes | None:
    del users
    return rng.choice([None, b""])


LIGHT: list[Generator] = [
    truncated, wrong_type, out_of_range, huge_number, nan_literal, control_characters,
    invalid_utf8, unknown_user, not_an_object, no_value,
]  # fmt: skip


def megabyte_string(rng: random.Random, users: Sequence[str]) -> bytes:
    name = rng.choice(
        ["signal_type", "symbol", "activation_reason", "source", "idempotency_key", "token_address"]
    )
    return json.dumps({**_valid(rng, users), name: "x" * 1_000_000}).encode()


def deep_nesting(rng: random.Random, users: Sequence[str]) -> bytes:
    depth = 100_000
    return rng.choice([
        b"[" * depth,
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth,
        json.dumps({**_valid(rng, users), "extra": "@@"}).replace(
            '"@@"', "[" * depth + "]" * depth).encode(),
    ])  # fmt: skip


def database_reject(rng: random.Random, users: Sequence[str]) -> bytes:
    """Valid to the schema of section 3, but PostgreSQL cannot store a NUL in text."""
    return json.dumps({**_valid(rng, users), "signal_type": "Velocity\u0000"}).encode()


def hostile_records(users: Sequence[str], rng: random.Random) -> list[Record]:
    """All bad records but the keyless null ones: hypothesis-drawn, then hand-written."""
    values: list[tuple[bytes | None, str]] = [(v, "hypothesis") for v in _hypothesis_records(users)]
    heavy: list[tuple[int, Generator]] = [
        (MEGABYTE_STRINGS, megabyte_string),
        (DEEP_NESTINGS, deep_nesting),
        (DATABASE_REJECTS, database_reject),
    ]
    for n, generator in heavy:
        values += [(generator(rng, users), generator.__name__) for _ in range(n)]
    while len(values) < BAD - NULL_RECORDS:
        light = rng.choice(LIGHT)
        values.append((light(rng, users), light.__name__))
    records = []
    for value, kind in values:
        key = rng.choice([None, rng.randbytes(8), rng.choice(users).encode()])
        if value is None:
            key = key or rng.randbytes(8)  # neither key nor value: `_send_null_records`
        headers = list(_FORGED) if rng.random() < 0.05 else None
        records.append(Record(value, key, headers, is_bad=True, kind=kind))
    return records


async def _send_null_records(bootstrap: str, topic: str, partitions: int) -> list[Sent]:
    """Records with neither key nor value, as other clients (Java's among them) may write.

    aiokafka's `send()` refuses them with an assertion, so they go through its accumulator.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await producer.start()
        await producer.client._wait_on_metadata(topic)
        futures = [
            await producer._message_accumulator.add_message(
                TopicPartition(topic, i % partitions), None, None, 30, headers=[]
            )
            for i in range(NULL_RECORDS)
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(m.partition, m.offset) for m in metadata]


# ---------------------------------------------------------------------------- the test


async def _send(bootstrap: str, topic: str, records: Sequence[Record]) -> list[Sent]:
    return await send_all(
        bootstrap,
        topic,
        [r.value for r in records],
        keys=[r.key for r in records],
        headers=[r.headers for r in records],
    )


def _header(record: Any, name: str) -> list[bytes]:
    return [v for k, v in record.headers or () if k == name]


async def test_hostile_records_go_to_the_dlq_and_valid_ones_through(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    rng = random.Random(SEED)
    book = await make_book(db_conn, USERS, AGENTS, deposit_sol=Decimal(1000))
    users = [str(a.user_id) for a in book.accounts]
    tokens = [mint(rng) for _ in range(30)]
    valid = [
        Record(json.dumps(m).encode(), m["user_id"].encode(), None, is_bad=False, kind="valid")
        for m in book.signals(VALID_PER_USER, tokens)
    ]
    records = hostile_records(users, rng) + valid
    rng.shuffle(records)
    nulls = [Record(None, None, None, is_bad=True, kind="no_key_no_value")] * NULL_RECORDS
    kinds = sorted({r.kind for r in records + nulls})

    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        # The keyless null records go in the middle of the stream.
        half = len(records) // 2
        sent = await _send(services.kafka_bootstrap, topics.signals, records[:half])
        sent += await _send_null_records(services.kafka_bootstrap, topics.signals, 3)
        sent += await _send(services.kafka_bootstrap, topics.signals, records[half:])
        records = records[:half] + nulls + records[half:]

        async def all_consumed() -> bool:
            assert worker.is_alive(), f"the worker died:\n{worker.tail(60)}"
            offsets = await stored_offsets(db_url, topics.group, topics.signals)
            return sum(offsets.values()) >= len(records)

        await wait_for(all_consumed, timeout_s=180, what="every record consumed")
        dead = await read_all(services.kafka_bootstrap, topics.dlq)
        alive = worker.is_alive()
    finally:
        code = worker.terminate()

    bad_at = {(s.partition, s.offset): r for s, r in zip(sent, records, strict=True) if r.is_bad}
    dead_at: dict[tuple[int, int], Any] = {}
    misfiled = 0
    for d in dead:
        if _header(d, "original-topic") != [topics.signals.encode()]:
            misfiled += 1
            continue
        (partition,) = _header(d, "original-partition")
        (offset,) = _header(d, "original-offset")
        dead_at[(int(partition), int(offset))] = d
    ledger = await measure(db_conn, book.expected)
    missing = bad_at.keys() - dead_at.keys()
    wrongly_dead = dead_at.keys() - bad_at.keys()
    dead_twice = len(dead) - misfiled - len(dead_at)
    report(
        "5 hostile input",
        records=f"{BAD} bad ({len(kinds) - 1} kinds) + {len(valid)} valid signals x {AGENTS} "
        "agents",
        faults=f"{len(dead)} dead letters, {len(wrongly_dead)} valid ones among them, "
        f"{starts(worker)} worker start(s)",
        executions=ledger.executions,
        lost=f"{ledger.lost} executions + {len(missing)} bad records not dead-lettered",
        duplicated=f"{ledger.duplicated} executions + {dead_twice} dead letters",
        check=ledger.check,
        exit=code,
    )
    assert alive, "the worker died on hostile input"
    assert starts(worker) == 1, "the worker restarted"
    assert code == 0, worker.tail()
    assert not missing, [
        (bad_at[k].kind, (bad_at[k].value or b"")[:120]) for k in sorted(missing)[:10]
    ]
    assert not wrongly_dead, [_header(dead_at[k], "error") for k in sorted(wrongly_dead)[:10]]
    assert misfiled == 0, "dead letters with a wrong original-topic header"
    assert dead_twice == 0, "a record was dead-lettered twice"
    assert len(dead) == BAD
    for at, d in dead_at.items():
        original = bad_at[at]
        errors = _header(d, "error")
        assert len(errors) == 1 and errors[0] and errors[0] != b"forged", (at, errors)
        assert d.value == original.value, f"the dead letter at {at} is not the record unchanged"
        # A record with neither key nor value cannot be produced through aiokafka's send():
        # its dead letter may carry an empty key; every other key comes back as it was.
        assert d.key == original.key or (original.value is original.key is None and d.key == b"")
    assert_exactly_once(ledger)
    assert ledger.executions == len(valid) * AGENTS
