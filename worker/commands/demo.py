"""`signal-worker demo`: one signal through the demo agents, then a short price path that takes
profit and stops out, and a table of what each agent did.

It publishes, through Kafka like any producer: a SOL/USD tick (150 USD), a buy signal for a
new made-up token at 0.5 USD (strength 4, with market data, so even the picky agent takes
it), then the token's ticks 0.55, 0.65 (+30%: the aggressive agent's first take-profit level
sells a quarter), 0.70 (+40%: every trailing stop rises into profit), 0.58 (through every
stop: each position closes with its profit). It waits for the worker to apply each step and
prints, per agent: the decision, the buy, the take-profit sales, the exit and its P/L, the
SOL balance; then the ledger check's verdict.

The worker that runs the demo is the one already running (`make run`) when the consumer
group has a member; otherwise the demo starts one in this process for its duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import structlog

from worker.commands.seed_demo import DEMO_AGENTS, DEMO_EMAIL
from worker.commands.text import printable
from worker.db import accounts
from worker.db.ledger import find_violations
from worker.db.pool import connect_migrated
from worker.db.results import SignalResult, price_time, signal_id_of, signal_results
from worker.domain.models import SOL_MINT
from worker.domain.money import fmt
from worker.errors import WorkerError
from worker.pipeline.kafka import group_members, make_producer, start_client
from worker.runtime.app import run_worker
from worker.settings import Settings

log = structlog.get_logger(__name__)

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SOL_USD = "150"
BUY_PRICE_USD = "0.5"
PATH_USD = ("0.55", "0.65", "0.70", "0.58")
STEP_TIMEOUT_S = 60.0


def _mint() -> str:
    return "".join(secrets.choice(BASE58) for _ in range(44))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the demo; print the table and the check's verdict; 1 if the ledger is not clean."""
    del args
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        user_id = await _demo_user(conn)
        members = await group_members(settings.kafka, timeout_s=settings.startup_timeout_s)
        async with _worker(settings, start=members == 0):
            table, clean = await _play(settings, conn, user_id)
    finally:
        await conn.close()
    print(table)
    print(clean)
    return 0 if clean.startswith("check: all") else 1


async def _demo_user(conn: Any) -> UUID:  # noqa: ANN401 - an asyncpg connection
    user_id = await accounts.find_user(conn, DEMO_EMAIL)
    if user_id is not None:
        return user_id
    async with conn.transaction():
        user_id = await accounts.create_user(conn, DEMO_EMAIL)
        for name, deposit, config in DEMO_AGENTS:
            await accounts.create_funded_agent(
                conn, user_id, name, deposit_sol=deposit, trading_config=config
            )
    log.info("demo_user_created", user_id=str(user_id))
    return user_id


@contextlib.asynccontextmanager
async def _worker(settings: Settings, *, start: bool) -> Any:  # noqa: ANN401
    """A worker for the demo's duration when none is running in the group."""
    if not start:
        log.info("demo_uses_the_running_worker", group=settings.consumer_group)
        yield
        return
    log.info("demo_starts_a_worker", group=settings.consumer_group, detail="none is running")
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_worker(settings.model_copy(update={"http_port": 0}), stop, started=started)
    )
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why it could not start
        yield
    finally:
        stop.set()
        await task


async def _play(settings: Settings, conn: Any, user_id: UUID) -> tuple[str, str]:  # noqa: ANN401
    token, key = _mint(), f"demo-{secrets.token_hex(4)}"
    producer = make_producer(settings.kafka)
    await start_client(producer, settings.kafka, timeout_s=settings.startup_timeout_s)
    try:
        now = datetime.now(UTC)
        await _send(producer, settings.prices_topic, SOL_MINT, _tick(SOL_MINT, SOL_USD, now))
        signal = {
            "user_id": str(user_id),
            "token_address": token,
            "symbol": "DEMO",
            "signal_type": "Velocity (Dex Boost Detection)",
            "signal_strength": 4,
            "price_usd": BUY_PRICE_USD,
            "market_cap_usd": "250000",
            "liquidity_usd": "40000",
            "holder_count": 1200,
            "source": "demo",
            "idempotency_key": key,
        }
        log.info("demo_signal", token=token, price_usd=BUY_PRICE_USD)
        await _send(producer, settings.signals_topic, str(user_id), orjson.dumps(signal))
        signal_id = await _until(lambda: signal_id_of(conn, user_id, key), "the signal stored")
        await _until(lambda: _decided(conn, signal_id, user_id), "every demo agent's decision")
        for i, price in enumerate(PATH_USD, start=1):
            at = now + timedelta(milliseconds=10 * i)
            log.info("demo_tick", token=token, price_usd=price)
            await _send(producer, settings.prices_topic, token, _tick(token, price, at))
            await _until(_applied_check(conn, token, at), f"the tick at {price} USD")
    finally:
        await producer.stop()
    results = await signal_results(conn, signal_id, user_id)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        violations = await find_violations(conn)
    verdict = (
        "check: all ledger invariants hold"
        if not violations
        else f"check: {len(violations)} violation(s); run `signal-worker check` for them"
    )
    return format_results(results), verdict


def _tick(token: str, price: str, at: datetime) -> bytes:
    return orjson.dumps({"token_address": token, "price_usd": price, "ts": at.isoformat()})


async def _send(producer: Any, topic: str, key: str, value: bytes) -> None:  # noqa: ANN401
    await (await producer.send(topic, value, key=key.encode()))


async def _decided(conn: Any, signal_id: int, user_id: UUID) -> bool:  # noqa: ANN401
    return all(r.status is not None for r in await signal_results(conn, signal_id, user_id))


def _applied_check(conn: Any, token: str, at: datetime) -> Callable[[], Awaitable[bool]]:  # noqa: ANN401
    async def applied() -> bool:
        stored = await price_time(conn, token)
        return stored is not None and stored >= at

    return applied


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:  # noqa: ANN401
    """Poll `check` until it gives something truthy; a clear error after `STEP_TIMEOUT_S`."""
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            # Polling the database another process writes to: there is no event to wait on.
            while not (result := await check()):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            return result
    except TimeoutError:
        raise WorkerError(
            f"waited {STEP_TIMEOUT_S:g}s for {what}: is the worker running with the same "
            "DATABASE_URL, topics and CONSUMER_GROUP? (`make run` in another terminal)"
        ) from None


def format_results(results: list[SignalResult]) -> str:
    """A table, one row per agent: decision, buy, take-profit sales, exit with P/L, balance;
    the reasons of agents that did not buy below it."""
    header = ("agent", "decision", "bought (SOL)", "take profit (SOL)", "exit", "P/L (SOL)",
              "SOL now")  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for r in results:
        name = printable(r.name.split(" (", 1)[0])  # the demo user's agents may be renamed
        if r.status != "success":
            rows.append((name, r.status or "-", "-", "-", "-", "-", _sol(r.sol_balance)))
            notes.append(printable(f"{name}: {r.reason}"))
            continue
        take_profit = (
            f"{_sol(r.take_profit_sol)} in {r.take_profit_sales}" if r.take_profit_sales else "-"
        )
        if r.close_reason is not None and r.profit_loss_sol is not None:
            sign = "+" if r.profit_loss_sol >= 0 else ""
            exit_ = r.close_reason.replace("_", " ")
            pnl = f"{sign}{_sol(r.profit_loss_sol)} ({sign}{fmt(r.change_percent or Decimal(0))}%)"
        else:
            exit_, pnl = ("open" if r.is_open else "-"), "-"
        rows.append(
            (name, "success", _sol(r.buy_sol), take_profit, exit_, pnl, _sol(r.sol_balance))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join(lines + [f"  {note}" for note in notes])


def _sol(value: Decimal | None) -> str:
    return "-" if value is None else fmt(value)
