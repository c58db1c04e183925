"""A recorded stream of signals and ticks, published as a backlog or live, and the ledger it
leaves, row by row (the order-independence tests of issues 22 and 27).

The stream is made to hit what order decides: every stop-loss mode, take profit with and
without a moon bag, DCA with cooldowns, stale closes; ticks and signals with equal
timestamps; SOL/USD moves on another partition at the same millisecond as token ticks;
prices exactly on stop, take-profit and DCA boundaries; holds and cooldowns ending exactly
on a tick; and records published out of event-time order within a bound (`late_ms`), across
partitions and within one.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from tests.helpers.books import LONG_AGO, make_account, mint
from tests.helpers.cli import run_cli
from tests.helpers.db import connected, create_database, create_migrated, drop_database
from tests.helpers.kafka import Topics, create_test_topics, delete_topics
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, wait_for, worker_env
from worker.db.verify import read_live_rows
from worker.domain.ledger_rows import LedgerRow
from worker.domain.models import SOL_MINT
from worker.replay.verify import compare, report_lines

# One config per stop-loss mode, take profit with and without a moon bag, DCA with cooldowns,
# stale closes after one minute.
CONFIGS: list[dict[str, Any] | None] = [
    {
        "stopLoss": {"enabled": True, "defaultPercentage": -10, "mode": "fixed"},
        "takeProfit": {"enabled": True, "mode": "moderate"},
        "staleTrade": {"enabled": False},
    },
    {
        "stopLoss": {"enabled": True, "defaultPercentage": -15, "mode": "exponential"},
        "takeProfit": {
            "enabled": True,
            "mode": "custom",
            "levels": [
                {"targetPercent": 20, "sellPercent": 50},
                {"targetPercent": 40, "sellPercent": 50},
            ],
            "moonBag": {"enabled": False},
        },
        "dca": {"enabled": True, "mode": "custom", "maxDCACount": 2, "cooldownSeconds": 10,
                "levels": [{"dropPercent": -8, "buyPercent": 50}]},
        "staleTrade": {"enabled": False},
    },
    {
        "stopLoss": {"enabled": True, "defaultPercentage": -20, "mode": "zones"},
        "staleTrade": {"enabled": True, "minHoldTimeMinutes": 1, "minProfitPercent": -50,
                       "maxProfitPercent": 50},
    },
    {
        "stopLoss": {"enabled": True, "defaultPercentage": -12, "mode": "custom",
                     "trailingLevels": [{"change": 30, "stopLoss": 15},
                                        {"change": 10, "stopLoss": 2}]},
        "dca": {"enabled": True, "mode": "aggressive", "cooldownSeconds": 10},
        "takeProfit": {"enabled": True, "mode": "aggressive",
                       "moonBag": {"enabled": True, "triggerPercent": 25, "retainPercent": 20}},
        "staleTrade": {"enabled": True, "minHoldTimeMinutes": 1, "minProfitPercent": -100,
                       "maxProfitPercent": 100},
    },
    None,  # the defaults
]  # fmt: skip


@dataclass(frozen=True)
class Record:
    """One record of the stream: where it goes, its event time (ms) and payload."""

    at_ms: int
    topic: str  # "signals", "prices" or "commands"
    key: bytes
    value: dict[str, Any]


def stamp(ms: int) -> str:
    """RFC 3339 with milliseconds, UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def recorded_stream(
    rng: random.Random,
    users: Sequence[uuid.UUID],
    *,
    start_ms: int,
    span_s: int = 130,
    tokens_n: int = 6,
    signals_n: int = 60,
    late_ms: int = 300,
) -> list[Record]:
    """The stream, in publishing order (event-time order, but some records held back by
    up to `late_ms` behind later ones, across partitions and within one)."""
    tokens = [mint(rng) for _ in range(tokens_n)]
    end_ms = start_ms + span_s * 1000
    ticks = _token_ticks(rng, tokens, start_ms, end_ms)
    ticks += _sol_ticks(rng, [t.at_ms for t in ticks], start_ms, end_ms)
    ticks.sort(key=lambda r: r.at_ms)
    out = list(ticks)
    for i in range(signals_n):
        signal = _signal(rng, i, users[i % len(users)], tokens, ticks, start_ms, span_s)
        out.append(signal)
        if i % 3 == 0:
            out += _boundaries(signal, ticks)
    out.sort(key=lambda r: (r.at_ms, r.topic, r.key))
    return _held_back(rng, out, late_ms)


def _tick(ms: int, token: str, usd: Decimal) -> Record:
    value = {"token_address": token, "price_usd": str(usd), "ts": stamp(ms)}
    return Record(ms, "prices", token.encode(), value)


def _token_ticks(
    rng: random.Random, tokens: Sequence[str], start_ms: int, end_ms: int
) -> list[Record]:
    """Per token a random walk with jumps, a tick every 0.4 to 1.6 s."""
    out = []
    for token in tokens:
        price = Decimal(rng.choice(["0.01", "0.5", "2", "0.0004"]))
        ms = start_ms + rng.randrange(0, 400)
        while ms < end_ms:
            move = Decimal(rng.choice(["0.97", "0.99", "1", "1.01", "1.03", "1.2", "0.8"]))
            price = (price * move).quantize(Decimal("0.000000001"))
            out.append(_tick(ms, token, price))
            ms += rng.randrange(400, 1600)
    return out


def _sol_ticks(rng: random.Random, token_ms: list[int], start_ms: int, end_ms: int) -> list[Record]:
    """SOL/USD every 2 s, some at exactly the millisecond of a token tick."""
    out = []
    sol = Decimal(150)
    ms = start_ms
    while ms < end_ms:
        sol = (sol * Decimal(rng.choice(["0.995", "1", "1.005"]))).quantize(Decimal("0.0001"))
        out.append(_tick(rng.choice(token_ms) if rng.random() < 0.4 else ms, SOL_MINT, sol))
        ms += 2000
    return out


def _signal(
    rng: random.Random,
    i: int,
    user: uuid.UUID,
    tokens: Sequence[str],
    ticks: Sequence[Record],
    start_ms: int,
    span_s: int,
) -> Record:
    """A signal at a random time, or (3 in 10) at exactly a tick's millisecond."""
    ms, token = start_ms + rng.randrange(1000, (span_s - 70) * 1000), rng.choice(tokens)
    if rng.random() < 0.3:
        base = rng.choice(ticks)
        ms = base.at_ms
        if base.value["token_address"] != SOL_MINT:
            token = base.value["token_address"]
    value = {
        "user_id": str(user),
        "token_address": token,
        "signal_type": "Velocity",
        "signal_strength": rng.randint(3, 5),
        "idempotency_key": f"det-{i}",
        "created_at": stamp(ms),
    }
    return Record(ms, "signals", str(user).encode(), value)


def _boundaries(signal: Record, ticks: Sequence[Record]) -> list[Record]:
    """Ticks exactly on the stop (-10%), DCA (-8%) and take-profit (+20%) boundaries of a
    position the signal opens at its token's last price, 10.000 s after the DCA boundary (a
    cooldown ending on it) and 60.000 s after the signal (a one-minute hold ending on it)."""
    token, ms = signal.value["token_address"], signal.at_ms
    before = [t for t in ticks if t.value["token_address"] == token and t.at_ms <= ms]
    if not before:
        return []
    entry = Decimal(before[-1].value["price_usd"])
    steps = (("0.92", 3000), ("0.90", 5000), ("1.2", 9000), ("0.92", 13000), ("1", 60000))
    return [_tick(ms + delay, token, entry * Decimal(f)) for f, delay in steps]


def _held_back(rng: random.Random, records: list[Record], late_ms: int) -> list[Record]:
    """Some records published after later ones, less than `late_ms` later in event time."""
    out = list(records)
    for i in range(len(out) - 1, 0, -1):
        if rng.random() < 0.05:
            j = i
            while j + 1 < len(out) and out[j + 1].at_ms - out[i].at_ms < late_ms:
                j += 1
            if j > i:
                out.insert(j, out.pop(i))
    return out


async def publish_stream(
    bootstrap: str,
    signals_topic: str,
    prices_topic: str,
    records: Sequence[Record],
    *,
    paced_from_ms: int | None = None,
) -> None:
    """Publish `records` in their order, each with its event time as the record's
    timestamp; with `paced_from_ms`, each no earlier than its event time on this machine's
    clock (live) else all at once (a backlog)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        futures = []
        for r in records:
            if paced_from_ms is not None:
                delay = r.at_ms / 1000 - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            topic = {"signals": signals_topic, "prices": prices_topic}.get(
                r.topic, f"{signals_topic}.commands"
            )
            futures.append(
                await producer.send(
                    topic, json.dumps(r.value).encode(), key=r.key, timestamp_ms=r.at_ms
                )
            )
            if paced_from_ms is not None:
                await futures[-1]  # live: in the log before the next is sent
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def ledger_rows(conn: asyncpg.Connection) -> list[LedgerRow]:
    """Every execution, swap, balance and position of the database, keyed by natural keys
    (`worker.db.verify`), so two runs of one input compare whatever their serial ids."""
    signal_ids = [r[0] for r in await conn.fetch("SELECT id FROM trading_signals")]
    agents = [
        (r["agent_id"], r["wallet_address"])
        for r in await conn.fetch("SELECT agent_id, wallet_address FROM agent_wallets")
    ]
    return await read_live_rows(conn, signal_ids, agents, None, with_open=True)


def differences(a: Sequence[LedgerRow], b: Sequence[LedgerRow], limit: int = 15) -> list[str]:
    """Empty when the ledgers are identical, else lines naming the first differences."""
    comparison = compare(a, b)
    return [] if comparison.identical else report_lines(comparison, limit)


def event_ms(when: datetime) -> int:
    """Epoch milliseconds of `when`."""
    return int(when.timestamp() * 1000)


def soon_ms(seconds: float) -> int:
    """Epoch milliseconds `seconds` from now, on a whole millisecond."""
    return event_ms(datetime.now(UTC) + timedelta(seconds=seconds))


# ---------------------------------------------------------------- consuming it


USERS = 3


async def base_database(services: Services) -> tuple[str, list[uuid.UUID]]:
    """A migrated database with the users and their agents (one per config each)."""
    url = await create_migrated(services)
    users = []
    async with connected(url) as conn:
        for _ in range(USERS):
            account = await make_account(conn, CONFIGS, created_at=LONG_AGO)
            users.append(account.user_id)
    return url, users


async def edit_mid_stream(url: str, users: Sequence[uuid.UUID], at: datetime) -> None:
    """Two config edits in force from `at` (as if made then): a valid one (the first user's
    fixed-stop agent stops at -5% instead of -10%) and an invalid one (the second user's
    exponential agent gets take-profit levels out of order: its buys fail from then on, its
    open positions keep their rules)."""
    valid = {**(CONFIGS[0] or {}), "stopLoss": {"enabled": True, "defaultPercentage": -5}}
    invalid = {
        **(CONFIGS[1] or {}),
        "takeProfit": {
            "enabled": True,
            "mode": "custom",
            "levels": [
                {"targetPercent": 40, "sellPercent": 50},
                {"targetPercent": 20, "sellPercent": 50},
            ],
        },
    }
    async with connected(url) as conn:
        for user, index, config in ((users[0], 0, valid), (users[1 % len(users)], 1, invalid)):
            agent = await conn.fetchval(
                "SELECT id FROM agents WHERE user_id = $1 ORDER BY name OFFSET $2 LIMIT 1",
                user,
                index,
            )
            await conn.execute(
                "UPDATE agents SET trading_config = $2::jsonb WHERE id = $1",
                agent,
                json.dumps(config),
            )
            await conn.execute(
                "UPDATE agent_config_history SET valid_from = $2 WHERE id = "
                "(SELECT max(id) FROM agent_config_history WHERE agent_id = $1)",
                agent,
                at,
            )


async def _processed(url: str, topics: Topics, counts: dict[str, int]) -> bool:
    async with connected(url) as conn:
        rows = await conn.fetch(
            "SELECT topic, sum(next_offset) AS n FROM consumer_offsets "
            "WHERE consumer_group = $1 GROUP BY topic",
            topics.group,
        )
    done = {r["topic"]: int(r["n"]) for r in rows}
    return (
        done.get(topics.signals, 0) >= counts["signals"]
        and done.get(topics.prices, 0) >= counts["prices"]
        and done.get(topics.commands, 0) >= counts.get("commands", 0)
    )


class Run:
    """One way of consuming the stream: its database, topics and worker settings."""

    def __init__(self, services: Services, template: str, name: str, **overrides: Any) -> None:
        self.services = services
        self.template = template
        self.name = name
        self.overrides = overrides
        self.url = ""
        self.topics: Topics | None = None
        self.late = 0

    async def __aenter__(self) -> Run:
        self.url = await create_database(self.services, self.template)
        self.topics = await create_test_topics(self.services)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.topics is not None
        await delete_topics(
            self.services.kafka_bootstrap,
            [self.topics.signals, self.topics.prices, self.topics.dlq, self.topics.commands],
        )
        await drop_database(self.services, self.url)

    def env(self, **more: Any) -> dict[str, str]:
        assert self.topics is not None
        return worker_env(self.services, self.url, self.topics, **self.overrides, **more)

    async def publish(self, records: list[Record], *, live: bool = False) -> None:
        assert self.topics is not None
        await publish_stream(
            self.services.kafka_bootstrap,
            self.topics.signals,
            self.topics.prices,
            records,
            paced_from_ms=records[0].at_ms if live else None,
        )

    async def until_processed(self, counts: dict[str, int], worker: WorkerProcess) -> None:
        assert self.topics is not None
        topics = self.topics

        async def check() -> bool:
            assert worker.is_alive(), worker.tail()
            return await _processed(self.url, topics, counts)

        await wait_for(check, timeout_s=300, what=f"{self.name}: every record processed")

    async def ledger(self) -> list[Any]:
        async with connected(self.url) as conn:
            return await ledger_rows(conn)

    async def verify(self) -> str:
        assert self.topics is not None
        result = await run_cli(self.env(), "replay", "--verify")
        assert result.code == 0, (self.name, result.stdout[-3000:], result.stderr[-20:])
        return result.stdout.strip().splitlines()[-1]


def record_counts(records: list[Record]) -> dict[str, int]:
    return {
        "signals": sum(r.topic == "signals" for r in records),
        "prices": sum(r.topic == "prices" for r in records),
        "commands": sum(r.topic == "commands" for r in records),
    }


async def command_records(url: str, users: Sequence[uuid.UUID], start_ms: int) -> list[Record]:
    """Each user's commands over the stream (issue 23 in the one order): a deposit, a pause
    and a resume, a config patch, a withdrawal and a manual close of one agent's positions,
    each at its own event time."""
    out = []
    async with connected(url) as conn:
        for user in users:
            agents = [
                str(r["id"])
                for r in await conn.fetch(
                    "SELECT id FROM agents WHERE user_id = $1 ORDER BY name, id", user
                )
            ]
            plan: list[tuple[int, dict[str, Any]]] = [
                (20, {"command": "deposit", "agent_id": agents[0], "amount": "1"}),
                (40, {"command": "pause", "agent_id": agents[2], "mode": "simulation"}),
                (60, {"command": "patch_config", "agent_id": agents[3],
                      "patch": {"stopLoss": {"defaultPercentage": -8}}}),
                (80, {"command": "resume", "agent_id": agents[2], "mode": "simulation"}),
                (90, {"command": "withdraw", "agent_id": agents[4], "amount": "0.5"}),
                (100, {"command": "close_positions", "agent_id": agents[1]}),
            ]  # fmt: skip
            for seconds, fields in plan:
                at_ms = start_ms + seconds * 1000 + 7  # between the stream's records
                value = {
                    **fields,
                    "user_id": str(user),
                    "idempotency_key": f"{fields['command']}-{seconds}",
                    "created_at": stamp(at_ms),
                }
                out.append(Record(at_ms, "commands", str(user).encode(), value))
    return out


def merged(records: list[Record], commands: list[Record]) -> list[Record]:
    """`commands` put into the publishing order `records` is in, each before the first
    record of a later time (the records' own order, held-back ones included, kept)."""
    out = list(records)
    for command in sorted(commands, key=lambda r: r.at_ms):
        place = next((i for i, r in enumerate(out) if r.at_ms > command.at_ms), len(out))
        out.insert(place, command)
    return out
