"""The limits the worker is compared with, on the same workload and the same machine.

- raw consume: aiokafka reading the same signal records with the worker's consumer
  settings and doing nothing with them;
- raw write: the rows of the same executions written with `COPY`
  (`copy_records_to_table`): per agent execution one `signal_executions`, one
  `agent_transactions`, one `agent_positions` and one token `agent_balances` row, plus
  one set-based SOL debit per wallet and batch and one `trading_signals` row per signal;
- naive: the source system's way, one database transaction per agent execution, no
  batching: for each (signal, agent) BEGIN; SELECT the SOL balance FOR UPDATE; INSERT the
  swap; UPDATE the SOL balance; upsert the token balance; INSERT the position; INSERT the
  execution; COMMIT. Decisions and fills are the worker's own pure functions, so the
  difference is only in how the database is used. It reads signals from memory, not
  Kafka, which flatters it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.infra import PARTITIONS, CpuMeter, connect
from benchmarks.scenarios import Context
from benchmarks.workload import (
    SIGNAL_TYPE,
    SOL_USD,
    STEADY,
    TOKEN_USD,
    TokenNames,
    User,
    bench_fill,
    create_users,
    set_price,
)
from worker.db.store import PgStore
from worker.domain.config import resolve_config
from worker.domain.eligibility import decide
from worker.domain.exits import initial_stop_loss_pct
from worker.domain.models import SOL_MINT, SOL_SYMBOL, ExecutionStatus, Signal
from worker.domain.sizing import sizing_seed
from worker.handlers.config_cache import config_of_text
from worker.pipeline.kafka import FETCH_OPTIONS
from worker.settings import Settings

LIMIT_FANOUT = 100  # the fan-out of the raw-write and naive workloads
RAW_WRITERS = 4  # the connections of the raw write
RAW_SIGNALS_PER_BATCH = 10  # the signals of one raw-write transaction
# The default initial stop of a new position.
STOP_LOSS = initial_stop_loss_pct(resolve_config(orjson.loads(STEADY.text)))
# The worker's default `KAFKA_FETCH_MAX_RECORDS`: records a poll.
FETCH_MAX_RECORDS: int = Settings.model_fields["kafka_fetch_max_records"].default


@dataclass(frozen=True)
class Rate:
    """A count over a time, and the CPU seconds the client and the database spent on it."""

    count: int
    seconds: float
    client_cpu_s: float | None = None
    database_cpu_s: float | None = None

    @property
    def per_s(self) -> float:
        """Count per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------- raw consume


async def raw_consume(bootstrap: str, topic: str, *, min_s: float) -> Rate:
    """Records/s of aiokafka reading `topic` from the start, repeatedly for >= `min_s`.

    The consumer has the worker's fetch settings (read_committed, 500 records a poll,
    16 MiB a fetch, 2 MiB a partition); the records are counted, not decoded.
    """
    consumer = AIOKafkaConsumer(
        **FETCH_OPTIONS,
        bootstrap_servers=bootstrap,
        group_id=None,
        max_poll_records=FETCH_MAX_RECORDS,
    )
    await consumer.start()
    await asyncio.sleep(0)  # let its background task start (stop() fails on one that did not)
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        total = sum(ends.values())
        if total == 0:
            return Rate(0, 0.0)
        count = 0
        started = time.monotonic()
        while True:
            await consumer.seek_to_beginning(*partitions)
            read = 0
            while read < total:
                batch = await consumer.getmany(timeout_ms=1000, max_records=FETCH_MAX_RECORDS)
                read += sum(len(records) for records in batch.values())
            count += read
            if time.monotonic() - started >= min_s:
                return Rate(count, time.monotonic() - started)
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------- raw write

_TX_COLUMNS = [
    "id",
    "agent_id",
    "wallet_address",
    "transaction_type",
    "transaction_value_usd",
    "transaction_time",
    "signal_id",
    "fees",
    "input_mint",
    "input_symbol",
    "input_amount",
    "input_price",
    "output_mint",
    "output_symbol",
    "output_amount",
    "output_price",
    "network_fee_sol",
    "protocol_fee_sol",
    "position_id",
    "created_at",
    "updated_at",
]
_POSITION_COLUMNS = [
    "id",
    "agent_id",
    "wallet_address",
    "token_address",
    "token_symbol",
    "purchase_transaction_id",
    "purchase_price",
    "purchase_amount",
    "remaining_amount",
    "total_invested_sol",
    "lowest_price",
    "current_stop_loss_percentage",
    "peak_price",
    "last_stop_loss_update",
    "created_at",
    "updated_at",
]
_BALANCE_COLUMNS = [
    "id",
    "agent_id",
    "wallet_address",
    "token_address",
    "token_symbol",
    "balance",
    "last_updated",
]
_EXECUTION_COLUMNS = [
    "id",
    "signal_id",
    "agent_id",
    "status",
    "transaction_id",
    "error",
    "executed_at",
]
_SIGNAL_COLUMNS = [
    "id",
    "user_id",
    "token_address",
    "symbol",
    "signal_type",
    "signal_strength",
    "source",
    "idempotency_key",
    "price_usd",
    "created_at",
    "updated_at",
]
DEBIT_WALLETS = """
UPDATE agent_balances b SET balance = b.balance - d.debit, last_updated = now()
  FROM unnest($1::varchar[], $2::numeric[]) AS d(wallet, debit)
 WHERE b.wallet_address = d.wallet AND b.token_address = $3
"""


@dataclass
class _CopyBatch:
    """The rows of `signals` signals of one user, as `COPY` writes them."""

    signals: list[tuple[object, ...]] = field(default_factory=list)
    txs: list[tuple[object, ...]] = field(default_factory=list)
    positions: list[tuple[object, ...]] = field(default_factory=list)
    balances: list[tuple[object, ...]] = field(default_factory=list)
    executions: list[tuple[object, ...]] = field(default_factory=list)

    def add_signal(self, signal_id: int, user: User, token: str, now: datetime) -> None:
        """One signal and a full buy for every agent of its user."""
        f = bench_fill()
        self.signals.append(
            (
                signal_id,
                user.user_id,
                token,
                "BENCH",
                SIGNAL_TYPE,
                4,
                "benchmark",
                f"raw-{signal_id}",
                TOKEN_USD,
                now,
                now,
            )
        )
        for a in user.agents:
            if a.profile.outcome != "success":
                reason = f"not a buyer ({a.profile.name})"
                self.executions.append(
                    (uuid.uuid4(), signal_id, a.agent_id, a.profile.outcome, None, reason, now)
                )
                continue
            tx, pos = uuid.uuid4(), uuid.uuid4()
            self.txs.append(
                (
                    tx,
                    a.agent_id,
                    a.wallet,
                    "SWAP",
                    f.value_usd,
                    now,
                    signal_id,
                    f.network_fee_sol + f.protocol_fee_sol,
                    SOL_MINT,
                    SOL_SYMBOL,
                    f.size_sol,
                    Decimal(1),
                    token,
                    "BENCH",
                    f.token_amount,
                    f.price_sol,
                    f.network_fee_sol,
                    f.protocol_fee_sol,
                    pos,
                    now,
                    now,
                )
            )
            self.positions.append(
                (
                    pos,
                    a.agent_id,
                    a.wallet,
                    token,
                    "BENCH",
                    tx,
                    f.price_sol,
                    f.token_amount,
                    f.token_amount,
                    f.debit_sol,
                    f.price_sol,
                    STOP_LOSS,
                    f.price_sol,
                    now,
                    now,
                    now,
                )
            )
            self.balances.append(
                (uuid.uuid4(), a.agent_id, a.wallet, token, "BENCH", f.token_amount, now)
            )
            self.executions.append((uuid.uuid4(), signal_id, a.agent_id, "success", tx, None, now))

    async def write(self, conn: asyncpg.Connection, user: User, signals: int) -> None:
        """COPY every row and debit each wallet's SOL, in one transaction."""
        wallets = [a.wallet for a in user.agents if a.profile.outcome == "success"]
        debits = [bench_fill().debit_sol * signals] * len(wallets)
        async with conn.transaction():
            for table, rows, columns in (
                ("trading_signals", self.signals, _SIGNAL_COLUMNS),
                ("agent_transactions", self.txs, _TX_COLUMNS),
                ("agent_positions", self.positions, _POSITION_COLUMNS),
                ("agent_balances", self.balances, _BALANCE_COLUMNS),
            ):
                await conn.copy_records_to_table(table, records=rows, columns=columns)
            await conn.execute(DEBIT_WALLETS, wallets, debits, SOL_MINT)
            await conn.copy_records_to_table(
                "signal_executions", records=self.executions, columns=_EXECUTION_COLUMNS
            )


async def raw_write(
    ctx: Context, *, writers: int = RAW_WRITERS, signals_per_batch: int = RAW_SIGNALS_PER_BATCH
) -> Rate:
    """Executions/s written with COPY by `writers` connections, one transaction a batch."""
    dsn = await ctx.databases.create("rawwrite")
    conns = [await connect(dsn) for _ in range(writers + 1)]
    meter_conn, lanes = conns[0], conns[1:]
    try:
        users = await create_users(meter_conn, writers * 4, LIMIT_FANOUT)
        names = TokenNames("rawwrite" + ctx.tag)
        signal_ids = itertools.count(1_000_000)
        deadline = time.monotonic() + ctx.scale.limit_s
        counts = [0] * writers

        async def writer(lane: int) -> None:
            mine = users[lane::writers]
            for round_ in itertools.count():
                if time.monotonic() >= deadline:
                    return
                user = mine[round_ % len(mine)]
                batch = _CopyBatch()
                now = datetime.now(UTC)
                for _ in range(signals_per_batch):
                    signal_id = next(signal_ids)
                    batch.add_signal(signal_id, user, names(signal_id), now)
                await batch.write(lanes[lane], user, signals_per_batch)
                counts[lane] += len(batch.executions)

        rate = await _run_lanes(meter_conn, writer, writers, counts)
    finally:
        for conn in conns:
            await conn.close()
    await ctx.databases.drop(dsn)
    return rate


async def _run_lanes(
    meter_conn: asyncpg.Connection,
    lane: Callable[[int], Awaitable[None]],
    lanes: int,
    counts: list[int],
) -> Rate:
    """Run `lane(0)` .. `lane(lanes - 1)` concurrently: what they counted in `counts` over
    the time they took, with the CPU of this process and of the database's backends."""
    meter = CpuMeter(None, meter_conn)
    await meter.start()
    started = time.monotonic()
    await asyncio.gather(*(lane(i) for i in range(lanes)))
    elapsed = time.monotonic() - started
    await meter.stop()
    return Rate(sum(counts), elapsed, meter.process_s, meter.database_s)


# ---------------------------------------------------------------------------- naive

NAIVE_SIGNAL = """
INSERT INTO trading_signals (user_id, token_address, symbol, signal_type, signal_strength,
                             source, idempotency_key, price_usd, created_at)
VALUES ($1, $2, 'BENCH', $3, 4, 'benchmark', $4, $5, now()) RETURNING id
"""
NAIVE_LOCK = """
SELECT balance FROM agent_balances WHERE wallet_address = $1 AND token_address = $2 FOR UPDATE
"""
NAIVE_TX = """
INSERT INTO agent_transactions (id, agent_id, wallet_address, transaction_type,
    transaction_value_usd, transaction_time, signal_id, fees, input_mint, input_symbol,
    input_amount, input_price, output_mint, output_symbol, output_amount, output_price,
    network_fee_sol, protocol_fee_sol, position_id)
VALUES ($1, $2, $3, 'SWAP', $4, now(), $5, $6::numeric + $7::numeric, $8, $9, $10, 1, $11,
        'BENCH', $12, $13, $6, $7, $14)
"""
NAIVE_DEBIT = """
UPDATE agent_balances SET balance = balance - $3, last_updated = now()
 WHERE wallet_address = $1 AND token_address = $2
"""
NAIVE_CREDIT = """
INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance)
VALUES ($1, $2, $3, 'BENCH', $4)
ON CONFLICT (wallet_address, token_address) DO UPDATE
   SET balance = agent_balances.balance + EXCLUDED.balance, last_updated = now()
"""
NAIVE_POSITION = """
INSERT INTO agent_positions (id, agent_id, wallet_address, token_address, token_symbol,
    purchase_transaction_id, purchase_price, purchase_amount, remaining_amount,
    total_invested_sol, lowest_price, current_stop_loss_percentage, peak_price,
    last_stop_loss_update)
VALUES ($1, $2, $3, $4, 'BENCH', $5, $6, $7, $7, $8, $6, $9, $6, now())
"""
NAIVE_EXECUTION = """
INSERT INTO signal_executions (signal_id, agent_id, status, transaction_id, error)
VALUES ($1, $2, $3, $4, $5)
"""


async def naive(ctx: Context, *, connections: int) -> Rate:
    """Executions/s of one transaction per (signal, agent) on `connections` connections."""
    dsn = await ctx.databases.create(f"naive{connections}")
    conns = [await connect(dsn) for _ in range(connections + 1)]
    meter_conn, lanes = conns[0], conns[1:]
    try:
        users = await create_users(meter_conn, max(12, connections * 2), LIMIT_FANOUT)
        await set_price(meter_conn, SOL_MINT, SOL_USD)
        names = TokenNames(f"naive{connections}" + ctx.tag)
        token_ids = itertools.count()
        deadline = time.monotonic() + ctx.scale.limit_s
        counts = [0] * connections

        async def lane(index: int) -> None:
            mine = users[index::connections]
            for round_ in itertools.count():
                if time.monotonic() >= deadline:
                    return
                user, token = mine[round_ % len(mine)], names(next(token_ids))
                counts[index] += await _naive_signal(lanes[index], user, token, deadline)

        rate = await _run_lanes(meter_conn, lane, connections, counts)
    finally:
        for conn in conns:
            await conn.close()
    await ctx.databases.drop(dsn)
    return rate


async def _naive_signal(conn: asyncpg.Connection, user: User, token: str, deadline: float) -> int:
    """One signal the naive way; returns the executions committed."""
    key = f"naive-{uuid.uuid4()}"
    signal_id = int(
        await conn.fetchval(NAIVE_SIGNAL, user.user_id, token, SIGNAL_TYPE, key, TOKEN_USD)
    )
    signal = Signal(
        user_id=user.user_id,
        token_address=token,
        signal_type=SIGNAL_TYPE,
        signal_strength=4,
        idempotency_key=key,
        created_at=datetime.now(UTC),
        symbol="BENCH",
        price_usd=TOKEN_USD,
        id=signal_id,
    )
    done = 0
    for row in (await PgStore(conn).fetch_agents([user.user_id], [token])).get(user.user_id, []):
        if time.monotonic() >= deadline:
            break
        agent = row.subscriber(token)
        cfg = config_of_text(row.trading_config_text).config
        assert cfg is not None, "the benchmark's agents have valid configs"
        wallet = agent.wallet_address or ""
        async with conn.transaction():
            balance = await conn.fetchval(NAIVE_LOCK, wallet, SOL_MINT)
            seed = sizing_seed(signal.user_id, signal.idempotency_key, agent.agent_id)
            decision = decide(signal, agent, cfg, seed=seed)
            tx_id = None
            if decision.status is ExecutionStatus.SUCCESS and decision.size_sol is not None:
                fill = bench_fill(TOKEN_USD, decision.size_sol)
                if fill.debit_sol <= balance:
                    tx_id, pos_id = uuid.uuid4(), uuid.uuid4()
                    await conn.execute(
                        NAIVE_TX,
                        tx_id,
                        agent.agent_id,
                        wallet,
                        fill.value_usd,
                        signal_id,
                        fill.network_fee_sol,
                        fill.protocol_fee_sol,
                        SOL_MINT,
                        SOL_SYMBOL,
                        fill.size_sol,
                        token,
                        fill.token_amount,
                        fill.price_sol,
                        pos_id,
                    )
                    await conn.execute(NAIVE_DEBIT, wallet, SOL_MINT, fill.debit_sol)
                    await conn.execute(
                        NAIVE_CREDIT, agent.agent_id, wallet, token, fill.token_amount
                    )
                    await conn.execute(
                        NAIVE_POSITION,
                        pos_id,
                        agent.agent_id,
                        wallet,
                        token,
                        tx_id,
                        fill.price_sol,
                        fill.token_amount,
                        fill.debit_sol,
                        initial_stop_loss_pct(cfg),
                    )
            if tx_id is not None:
                status, reason = ExecutionStatus.SUCCESS, None
            elif decision.status is ExecutionStatus.SUCCESS:
                status, reason = ExecutionStatus.FAILED, "the buy costs more than the balance"
            else:
                status, reason = decision.status, decision.reason
            await conn.execute(
                NAIVE_EXECUTION, signal_id, agent.agent_id, status.value, tx_id, reason
            )
        done += 1
    return done
