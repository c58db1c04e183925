"""The price history, `report` and `replay` on a real database (the trades made by the
live handlers on it), through the command line as a user runs them."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, Account, make_account
from tests.helpers.cli import run_cli, start_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.db.prices import price_history_upkeep
from worker.db.store import PgStore
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.handlers.config_cache import ConfigTexts
from worker.handlers.signals import handle_signals
from worker.handlers.ticks import handle_prices
from worker.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
FIXED: dict[str, Any] = {"positionCalculator": {"randomization": {"enabled": False}}}


async def _ticks(conn: asyncpg.Connection, *ticks: tuple[str, str, int]) -> None:
    chunk = []
    for token, price, seconds in ticks:
        ts = T0 + timedelta(seconds=seconds)
        chunk.append(PriceTick(token, Decimal(price), ts))
    async with conn.transaction():
        await handle_prices(PgStore(conn), chunk, configs=ConfigTexts(), trading=Settings().trading)


async def _trade(conn: asyncpg.Connection) -> Account:
    """Two agents (a -32% and a -10% stop) buy A and B; A falls 15%, B 40%."""
    account = await make_account(conn, [FIXED, {**FIXED, "stopLoss": {"defaultPercentage": -10}}])
    # Funded before the record starts.
    await conn.execute(
        "UPDATE agent_transactions SET transaction_time = $1 WHERE transaction_type = 'DEPOSIT'",
        T0 - timedelta(hours=1),
    )
    await _ticks(conn, (SOL_MINT, "100", 0))
    signals = [
        Signal(user_id=account.user_id, token_address=token, signal_type="Velocity",
               signal_strength=4, idempotency_key=f"k-{token}",
               created_at=T0 + timedelta(seconds=1), price_usd=Decimal(1))
        for token in (TOKEN_A, TOKEN_B)
    ]  # fmt: skip
    async with conn.transaction():
        await handle_signals(PgStore(conn), signals, trading=Settings().trading)
    await _ticks(conn, (TOKEN_A, "0.95", 10))
    await _ticks(conn, (TOKEN_A, "0.85", 20), (TOKEN_B, "0.6", 30))
    return account


async def test_every_tick_that_moved_a_price_is_kept_in_the_history(
    db_conn: asyncpg.Connection,
) -> None:
    await _ticks(db_conn, (TOKEN_A, "1", 0), (TOKEN_A, "2", 5), (TOKEN_A, "1.5", 3))
    rows = await db_conn.fetch(
        "SELECT price_usd, price_ts FROM token_price_history ORDER BY price_ts"
    )
    # The third tick is older than the second: it changed nothing, and is not kept.
    assert [(r["price_usd"], r["price_ts"]) for r in rows] == [
        (Decimal(1), T0),
        (Decimal(2), T0 + timedelta(seconds=5)),
    ]


async def test_the_history_keeps_days_by_partition_and_drops_the_old_ones(
    db_conn: asyncpg.Connection,
) -> None:
    # As the worker does at its start: the test database's template may have been migrated
    # before midnight, with the days ahead of that day.
    await price_history_upkeep(db_conn, 30)
    today = datetime.now(UTC).date()
    parts = {
        r["relname"]
        for r in await db_conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'token_price_history'::regclass"
        )
    }
    assert {f"token_price_history_p{today + timedelta(days=d):%Y%m%d}" for d in range(3)} <= parts
    # An old day's partition and an old tick in the default partition (a tick far older
    # than any partition): both go once they are older than the days kept.
    await db_conn.execute(
        "CREATE TABLE token_price_history_p20200101 PARTITION OF token_price_history "
        "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')"
    )
    await db_conn.execute(
        "INSERT INTO token_price_history (token_address, price_usd, price_ts) VALUES "
        "($1, 1, '2020-01-01 12:00+00'), ($1, 1, '2019-06-01 12:00+00'), ($1, 1, now())",
        TOKEN_A,
    )
    await price_history_upkeep(db_conn, 30)
    assert await db_conn.fetchval("SELECT to_regclass('token_price_history_p20200101') IS NULL")
    assert await db_conn.fetchval("SELECT count(*) FROM token_price_history") == 1
    await price_history_upkeep(db_conn, 30)  # again: nothing to do, no error


async def test_report_shows_each_agents_trades_as_json_csv_and_a_table(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    account = await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    done = await run_cli(env, "report", "--user", str(account.user_id), "--format", "json")
    assert done.code == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    pnl = {
        r["name"]: r["pnl"]
        for r in await db_conn.fetch(
            "SELECT a.name, sum(h.profit_loss_sol) AS pnl FROM agent_historical_swaps h "
            "JOIN agents a ON a.id = h.agent_id GROUP BY a.name"
        )
    }
    wide, tight = rows["agent 0"], rows["agent 1"]
    assert (wide["trades"], tight["trades"]) == (1, 2)  # -32% stop: B only; -10%: both
    assert Decimal(wide["realised_pnl_sol"]) == pnl["agent 0"]
    assert Decimal(tight["realised_pnl_sol"]) == pnl["agent 1"]
    assert wide["executions"] == {"success": 2, "skipped": 0, "failed": 0}
    assert (wide["open_positions"], tight["open_positions"]) == (1, 0)
    assert Decimal(wide["unrealised_pnl_sol"]) < 0  # A is held at 0.85 after a buy at 1
    assert wide["win_rate_pct"] == "0"
    # Both lost the most on B (-40%, the same size bought): the same worst exit.
    assert Decimal(tight["largest_loss_sol"]) == Decimal(wide["largest_loss_sol"]) < 0
    table = await run_cli(env, "report", "--agent", str(account.agents[1].agent_id),
                          "--chart", str(tmp_path / "report.png"))  # fmt: skip
    assert table.code == 0, table.stderr
    assert table.stdout.splitlines()[0].startswith("agent ")
    assert "agent 1" in table.stdout and "agent 0" not in table.stdout
    assert (tmp_path / "report.png").stat().st_size > 10_000
    csv = await run_cli(env, "report", "--format", "csv", "--since", "2099-01-01")
    assert csv.code == 0, csv.stderr
    header, *lines = csv.stdout.splitlines()
    assert header.startswith(
        "agent_id,name,executions_success,executions_skipped,executions_failed,trades"
    )
    assert len(lines) == 2 and all(",0,0,0,0," in line for line in lines)  # nothing since


async def test_replay_of_the_record_matches_it_and_a_grid_changes_the_exits(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    account = await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    done = await run_cli(env, "replay", "--user", str(account.user_id), "--format", "json",
                         "--vary", "stopLoss.defaultPercentage=-4,-50")  # fmt: skip
    assert done.code == 0, done.stderr
    rows = json.loads(done.stdout)
    by = {(r["label"], r["name"]): r for r in rows}
    for name in ("agent 0", "agent 1"):
        live, stored = by[("live", name)], by[("stored config", name)]
        for field in ("executions", "trades", "realised_pnl_sol", "open_positions", "balance_sol"):
            assert stored[field] == live[field], (name, field)
        assert by[("stopLoss.defaultPercentage=-4", name)]["trades"] == 2  # both stop out
        assert by[("stopLoss.defaultPercentage=-50", name)]["trades"] == 0  # neither
    chart = tmp_path / "replay.png"
    table = await run_cli(env, "replay", "--config", str(_file(tmp_path, {"takeProfit": {
        "enabled": True}})), "--chart", str(chart))  # fmt: skip
    assert table.code == 0, table.stderr
    assert "takeProfit.json: agent 0" in table.stdout
    assert "nothing was written" in table.stdout
    assert chart.stat().st_size > 10_000


def _file(folder: Path, content: object, name: str = "takeProfit.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["report", "--agent", "00000000-0000-0000-0000-000000000001"],
         "signal-worker report: no agent with the id 00000000-0000-0000-0000-000000000001"),
        (["replay", "--from", "2099-01-01"],
         "signal-worker replay: no signals of these agents' users from 2099-01-01 00:00: "
         "nothing to replay"),
        (["replay", "--vary", "stopLoss.mode"],
         "signal-worker replay: --vary 'stopLoss.mode': expected PATH=VALUE[,VALUE...], e.g. "
         "stopLoss.mode=fixed,exponential"),
        (["replay", "--vary", "stopLoss.defaultPercentage=5"],
         "signal-worker replay: stopLoss.defaultPercentage=5: for agent 'agent 0': "),
        (["replay", "--config", "/nonexistent/alt.json"],
         "signal-worker replay: --config /nonexistent/alt.json: No such file or directory"),
        (["report", "--since", "yesterday"], "argument --since: not a time: 'yesterday'"),
        # Issue 20, item 12: what a grid cannot mean is one line, not a traceback.
        (["replay", "--vary", "stopLoss=5", "--vary", "stopLoss.mode=fixed"],
         "signal-worker replay: --vary stopLoss and --vary stopLoss.mode: one is inside the "
         "other"),
        (["replay", "--vary", "a." * 30_000 + "b=1"], ": a path of 30,001 keys;"),
        (["replay", "--vary", "stopLos.mode=fixed"],
         "signal-worker replay: --vary stopLos.mode=fixed: no config has the key(s) stopLos "),
        (["replay", "--vary", "stopLoss.defaultPercentage=" + ",".join(["-5"] * 1000),
          "--vary", "takeProfit.moonBag.retainPercent=" + ",".join(["5"] * 1000)],
         "signal-worker replay: --vary: a grid of 1,000,000 configs (1000 x 1000)"),
    ],
)  # fmt: skip
async def test_bad_input_gets_one_clear_line(
    services: Services,
    db_url: str,
    topics: Topics,
    db_conn: asyncpg.Connection,
    args: list[str],
    error: str,
) -> None:
    await _trade(db_conn)
    done = await run_cli(worker_env(services, db_url, topics), *args)
    assert done.code == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert any(error in line for line in done.stderr), done.stderr
    assert not any("Traceback" in line for line in done.stderr), done.stderr


async def test_replay_of_message_files_needs_their_times_and_names_a_bad_line(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    account = await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    signals = tmp_path / "signals.jsonl"
    ticks = tmp_path / "ticks.jsonl"
    at = (T0 + timedelta(minutes=5)).isoformat()
    signals.write_text(json.dumps({"user_id": str(account.user_id), "token_address": TOKEN_A,
                                   "signal_type": "Velocity", "signal_strength": 4,
                                   "price_usd": "2", "created_at": at}) + "\n")  # fmt: skip
    ticks.write_text(
        json.dumps({"token_address": SOL_MINT, "price_usd": "100", "ts": at})
        + "\n\n"
        + json.dumps({"token_address": TOKEN_A, "price_usd": "1", "ts": at})
        + "\n"
    )
    done = await run_cli(env, "replay", "--signals", str(signals), "--ticks", str(ticks),
                         "--format", "json")  # fmt: skip
    assert done.code == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {r["label"] for r in rows} == {"stored config"}  # no live row for files
    assert all(r["executions"]["success"] == 1 for r in rows)
    ticks.write_text(json.dumps({"token_address": TOKEN_B, "price_usd": "1"}) + "\n")
    bad = await run_cli(env, "replay", "--signals", str(signals), "--ticks", str(ticks))
    assert bad.code == 2
    assert any(f"{ticks}:1: a replayed tick needs its ts" in line for line in bad.stderr)


async def test_replay_refuses_unknown_config_keys_unless_allowed(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Issue 20, item 12: a misspelt key in --config or --vary would replay as if it changed
    something; it is refused with the keys `agents lint` would list, unless allowed."""
    await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    typo = _file(tmp_path, {"stopLoss": {"defaultPercentge": -4}, "signal": {}}, "typo.json")
    refused = await run_cli(env, "replay", "--config", str(typo))
    assert refused.code == 2, refused.stderr
    assert refused.stderr[-1] == (
        f"signal-worker replay: --config {typo}: no config has the key(s) "
        "stopLoss.defaultPercentge, signal (misspelt? --allow-unknown-keys replays them "
        "anyway, ignored as the worker ignores them)"
    )
    allowed = await run_cli(env, "replay", "--config", str(typo), "--vary", "stopLos.mode=fixed",
                            "--allow-unknown-keys", "--format", "json")  # fmt: skip
    assert allowed.code == 0, allowed.stderr
    labels = {r["label"] for r in json.loads(allowed.stdout)}
    assert labels == {"live", "stored config", "typo.json", "stopLos.mode=fixed"}


async def test_names_are_escaped_in_report_replay_and_agents_lint(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    """Issue 20, item 11: a name with ANSI escapes and a newline neither clears the screen
    nor forges a row; in CSV, a name that is a formula is text."""
    account = await _trade(db_conn)
    evil = '\x1b[2J=HYPERLINK("http://x")\nagent 9  0/0/0'
    await db_conn.execute("UPDATE agents SET name = $1 WHERE id = $2", evil,
                          account.agents[0].agent_id)  # fmt: skip
    await db_conn.execute("UPDATE agents SET name = $1 WHERE id = $2", "=1+1",
                          account.agents[1].agent_id)  # fmt: skip
    env = worker_env(services, db_url, topics)
    for args in (["report"], ["replay"], ["agents", "lint"]):
        await db_conn.execute("UPDATE agents SET trading_config = trading_config || "
                              "jsonb_build_object('x\x1b[2J', 1)")  # fmt: skip
        done = await run_cli(env, *args)
        assert done.code == 0, done.stderr
        assert "\x1b" not in done.stdout, args
        assert "\\x1b[2J=HYPERLINK" in done.stdout, (args, done.stdout)
        # No forged row (lint's lines start "agent <uuid>", which may begin with a 9).
        forged = [line for line in done.stdout.splitlines() if line.startswith("agent 9  0/0/0")]
        assert forged == [], args
    report_csv = await run_cli(env, "report", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(report_csv.stdout, newline="")))
    assert sorted(r["name"] for r in rows) == sorted(["'=1+1", evil])  # one row each


async def test_replay_reads_its_input_before_it_opens_a_transaction(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Issue 20, item 8: `sleep 40 | replay --signals /dev/stdin` held a transaction open
    while it waited for its input, and a migration's lock queued behind it. The replay
    reads a FIFO here: while it waits for the data, it has no session in the database."""
    account = await _trade(db_conn)
    env = worker_env(services, db_url, topics)
    fifo = tmp_path / "signals.fifo"
    os.mkfifo(fifo)
    proc = await start_cli(env, "replay", "--signals", str(fifo), "--format", "json")
    try:
        # A FIFO opens for writing (without blocking) only once its reader has opened it.
        fd = None
        while fd is None:
            assert proc.returncode is None, await proc.communicate()
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                await asyncio.sleep(0.05)
        # The replay is now reading its input, and will until the FIFO is closed.
        sessions = await db_conn.fetch(
            "SELECT pid, state FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert [tuple(s) for s in sessions] == []
        line = {"user_id": str(account.user_id), "token_address": TOKEN_A,
                "signal_type": "Velocity", "signal_strength": 4, "price_usd": "2",
                "created_at": (T0 + timedelta(minutes=5)).isoformat()}  # fmt: skip
        os.set_blocking(fd, True)
        os.write(fd, json.dumps(line).encode() + b"\n")
        os.close(fd)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    rows = json.loads(out)
    assert all(r["executions"]["success"] == 1 for r in rows)
