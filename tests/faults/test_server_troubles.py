"""Scenario 11: the server's own troubles are retried, never the record's fault.

Before, each of these dead-lettered valid records as `database` and stored their offsets
past them, so they were never processed: a signal waiting on SOL balance rows another
session held, past `lock_timeout` (`LockNotAvailableError`); a tick that should stop out
three positions, past `statement_timeout` (`QueryCanceledError`: its price never stored,
the positions left open); every signal while the signals table's disk was full
(`DiskFullError`: nothing redone after space was freed). Now the batch waits and retries,
`/readyz` says why and `signal_worker_retrying` counts it, nothing is dead-lettered, and
everything goes through once the server is well again: lost 0, duplicated 0, `check` ok.

Each fault is held until `/readyz` has said it (never a fixed sleep), then lifted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.db import connected
from tests.helpers.kafka import Topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    log_events,
    starts,
    wait_for,
    wait_for_count,
    worker_env,
)
from worker.domain.models import SOL_MINT

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

USERS, AGENTS, PER_USER = 4, 5, 10  # 40 signals x 5 agents

HOLD_SOL_BALANCES = "SELECT 1 FROM agent_balances WHERE token_address = $1 FOR UPDATE"
HOLD_POSITIONS = "SELECT 1 FROM agent_positions WHERE token_address = $1 FOR UPDATE"


async def _ready_says(worker: WorkerProcess, words: str) -> str:
    """Wait until `/readyz` answers 503 with `words` in its reason; that reason."""
    said = ""

    async def says() -> bool:
        nonlocal said
        status, body = await worker.get("/readyz")
        if status == 503 and words in body:
            said = body
            return True
        return False

    await wait_for(says, timeout_s=60, what=f"/readyz to say {words!r}")
    return said


async def _ready(worker: WorkerProcess) -> None:
    async def ok() -> bool:
        return (await worker.get("/readyz"))[0] == 200

    await wait_for(ok, timeout_s=60, what="/readyz to say 200 again")


def _dead_letters(worker: WorkerProcess) -> int:
    return len(log_events(worker, "record_dead_lettered"))


@contextlib.asynccontextmanager
async def _worker(services: Services, db_url: str, topics: Topics) -> AsyncIterator[WorkerProcess]:
    worker = WorkerProcess(worker_env(services, db_url, topics)).start()
    try:
        await worker.wait_started()
        yield worker
    finally:
        code = worker.terminate()
        assert code == 0, worker.tail()


async def _set_for_new_sessions(conn: asyncpg.Connection, setting: str, value: str) -> None:
    """`ALTER DATABASE … SET`: every session the worker opens from now on has it."""
    name = await conn.fetchval("SELECT current_database()")
    await conn.execute(f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")


async def test_a_lock_timeout_on_the_balances_is_retried_not_dead_lettered(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("lock-timeout")
    book = await make_book(db_conn, USERS, AGENTS)
    signals = book.signals(PER_USER, [mint(rng) for _ in range(10)])
    await _set_for_new_sessions(db_conn, "lock_timeout", "1s")
    async with _worker(services, db_url, topics) as worker:
        async with connected(db_url) as holder, holder.transaction():
            held = await holder.fetch(HOLD_SOL_BALANCES, SOL_MINT)
            await send_all(services.kafka_bootstrap, topics.signals, signals)
            said = await _ready_says(worker, "lock_not_available")
        await wait_for_count(db_url, EXECUTIONS, len(signals) * AGENTS, timeout_s=120)
        await _ready(worker)
        dead = _dead_letters(worker)
        restarts = starts(worker) - 1
    ledger = await measure(db_conn, book.expected)
    report(
        "11a lock timeout on the SOL balances",
        records=f"{len(signals)} signals x {AGENTS} agents",
        faults=f"{len(held)} balance rows held FOR UPDATE past lock_timeout=1s",
        readyz=repr(said[:60]),
        dead_letters=dead,
        **ledger.figures,
        seed=seed,
    )
    assert dead == 0
    assert restarts == 0
    assert_exactly_once(ledger)


async def _open_positions(db_url: str, token: str) -> int:
    async with connected(db_url) as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM agent_positions WHERE token_address = $1", token
            )
        )


async def test_a_statement_timeout_on_locked_positions_is_retried_and_the_tick_stops_them_out(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, report: Report
) -> None:
    seed, rng = seeded("statement-timeout")
    book = await make_book(db_conn, 1, 3)
    token = mint(rng)
    signal = book.signals(1, [token])[0] | {"price_usd": "1.0"}
    await _set_for_new_sessions(db_conn, "statement_timeout", "1s")
    async with _worker(services, db_url, topics) as worker:
        await send_all(services.kafka_bootstrap, topics.signals, [signal])
        await wait_for_count(db_url, EXECUTIONS, 3)
        opened = await _open_positions(db_url, token)
        crash = {"token_address": token, "price_usd": "0.1"}  # -90%: every stop loss
        async with connected(db_url) as holder, holder.transaction():
            await holder.execute("SET LOCAL statement_timeout = 0")
            await holder.fetch(HOLD_POSITIONS, token)
            await send_all(services.kafka_bootstrap, topics.prices, [crash])
            said = await _ready_says(worker, "query_canceled")

        async def closed() -> bool:
            return await _open_positions(db_url, token) == 0

        await wait_for(closed, timeout_s=60, what="the three positions to be stopped out")
        await _ready(worker)
        dead = _dead_letters(worker)
    price = await db_conn.fetchval(
        "SELECT price_usd FROM token_prices WHERE token_address = $1", token
    )
    exits = await db_conn.fetchval(
        "SELECT count(*) FROM agent_historical_swaps WHERE token_address = $1", token
    )
    ledger = await measure(db_conn, book.expected)
    report(
        "11b statement timeout on locked positions",
        records="1 signal x 3 agents, 1 stop-out tick",
        faults="the token's positions held FOR UPDATE past statement_timeout=1s",
        readyz=repr(said[:60]),
        positions=f"{opened} opened, {exits} closed",
        dead_letters=dead,
        **ledger.figures,
        seed=seed,
    )
    assert opened == 3
    assert dead == 0
    assert price == Decimal("0.1")
    assert exits == 3
    assert_exactly_once(ledger)


# ---------------------------------------------------------------------------- disk full


class SmallDisk:
    """A small tmpfs as a tablespace of the test's PostgreSQL server (root and a local
    server are needed: skipped, with the reason, where either is missing)."""

    def __init__(self, path: Path, owner: int) -> None:
        self.path = path
        self.owner = owner
        self.name = f"small_{uuid.uuid4().hex[:8]}"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        (self.path / "ts").mkdir()
        os.chown(self.path / "ts", self.owner, self.owner)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _owner(data: Path) -> int | None:
    """The uid owning PostgreSQL's data directory, or None when it is not on this machine."""
    return data.stat().st_uid if data.is_dir() else None


async def _small_disk(conn: asyncpg.Connection) -> SmallDisk:
    if os.geteuid() != 0:
        pytest.skip("a tmpfs tablespace needs root")
    owner = await asyncio.to_thread(_owner, Path(await conn.fetchval("SHOW data_directory")))
    if owner is None:
        pytest.skip("PostgreSQL is not on this machine: no tablespace of ours can be made")
    # Not under pytest's tmp_path: the server's own user must reach it (a tmpfs root is 1777).
    return SmallDisk(Path(tempfile.mkdtemp(prefix="sw-small-disk-")), owner)


async def _fill(conn: asyncpg.Connection, tablespace: str) -> int:
    """Fill the tablespace with a filler table until PostgreSQL says the disk is full."""
    await conn.execute(f"CREATE TABLE filler (x text) TABLESPACE {tablespace}")
    rows = 0
    with contextlib.suppress(asyncpg.DiskFullError):
        while True:
            await conn.execute(
                "INSERT INTO filler SELECT md5(g::text) || repeat('x', 900) "
                "FROM generate_series(1, 500) g"
            )
            rows += 500
    return rows


async def test_a_full_disk_under_the_signals_table_is_retried_and_redone_after_space_is_freed(
    services: Services,
    db_url: str,
    topics: Topics,
    db_conn: asyncpg.Connection,
    report: Report,
) -> None:
    seed, rng = seeded("disk-full")
    disk = await _small_disk(db_conn)
    book = await make_book(db_conn, USERS, 2)
    signals = book.signals(PER_USER, [mint(rng) for _ in range(10)])
    disk.mount()
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"CREATE TABLESPACE {disk.name} LOCATION '{disk.path / 'ts'}'")
        await db_conn.execute(f"ALTER TABLE trading_signals SET TABLESPACE {disk.name}")
        filled = await _fill(db_conn, disk.name)
        async with _worker(services, db_url, topics) as worker:
            await send_all(services.kafka_bootstrap, topics.signals, signals)
            said = await _ready_says(worker, "disk_full")
            assert await db_conn.fetchval(EXECUTIONS) == 0
            await db_conn.execute("DROP TABLE filler")  # space freed
            await wait_for_count(db_url, EXECUTIONS, len(signals) * 2, timeout_s=120)
            await _ready(worker)
            dead = _dead_letters(worker)
        ledger = await measure(db_conn, book.expected)
    finally:
        with contextlib.suppress(asyncpg.PostgresError):
            await db_conn.execute("DROP TABLE IF EXISTS filler")
            await db_conn.execute("ALTER TABLE trading_signals SET TABLESPACE pg_default")
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute(f"DROP TABLESPACE IF EXISTS {disk.name}")
        await admin.close()
        await asyncio.to_thread(disk.unmount)
    report(
        "11c full disk under the signals table",
        records=f"{len(signals)} signals x 2 agents",
        faults=f"trading_signals on a 4 MB tmpfs filled with {filled} rows, then freed",
        readyz=repr(said[:60]),
        dead_letters=dead,
        **ledger.figures,
        seed=seed,
    )
    assert dead == 0
    assert_exactly_once(ledger)
