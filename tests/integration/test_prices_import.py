"""`prices import` on a real database, through the command line: candles and ticks into
the price history, a re-import that adds nothing, a bad line or a conflict that refuses
the whole file (rolled back), the default partition for days before the worker ran, and a
replay of such a period that trades on the imported prices as predicted by hand."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account
from tests.helpers.cli import CliRun, run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
from worker.commands import prices
from worker.db.prices import partition_name, price_history_upkeep
from worker.domain.models import SOL_MINT

pytestmark = pytest.mark.integration

# Midnight UTC three days ago: inside the 30 days the history keeps, before any partition
# the worker made (it makes today's and those ahead), and a period the worker never ran.
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
P0 = TODAY - timedelta(days=3)
HOUR = timedelta(hours=1)
# Stop loss at -10% from the buy, one take-profit sale of everything at +20%, no stale
# exits, a fixed size (a 2 SOL wallet is in the small tier: 0.1 SOL).
CONFIG: dict[str, Any] = {
    "positionCalculator": {"randomization": {"enabled": False}},
    "stopLoss": {"enabled": True, "mode": "fixed", "defaultPercentage": -10},
    "takeProfit": {"enabled": True, "mode": "custom", "moonBag": {"enabled": False},
                   "levels": [{"targetPercent": 20, "sellPercent": 100}]},
    "staleTrade": {"enabled": False},
}  # fmt: skip


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _token_candles(path: Path) -> Path:
    """Six hourly candles of token A from P0, as CSV with a header (and a volume column):
    flat at 1 USD, then an hour that falls to 0.85 and rises to 1.3, then flat at 1.1."""
    rows = ["ts,token_address,open,high,low,close,volume"]
    ohlc = [("1", "1", "1", "1"), ("1", "1.3", "0.85", "1.1")] + [("1.1",) * 4] * 4
    for hour, (o, h, low, c) in enumerate(ohlc):
        rows.append(f"{_stamp(P0 + hour * HOUR)},{TOKEN_A},{o},{h},{low},{c},1000")
    path.write_text("\n".join(rows) + "\n")
    return path


def _sol_candles(path: Path) -> Path:
    """Six hourly SOL/USD candles at 100 USD, as JSON lines without the token (--token SOL)."""
    lines = [json.dumps({"ts": _stamp(P0 + hour * HOUR), "open": 100, "high": "100",
                         "low": 100, "close": "100"}) for hour in range(6)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


async def _history(conn: asyncpg.Connection) -> list[tuple[str, Decimal, datetime]]:
    rows = await conn.fetch("SELECT token_address, price_usd, price_ts FROM token_price_history "
                            "ORDER BY token_address, price_ts")  # fmt: skip
    return [(r["token_address"], r["price_usd"], r["price_ts"]) for r in rows]


def _summary(run: CliRun) -> str:
    assert not any("Traceback" in line for line in run.stderr), run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout
    return lines[0]


async def test_candles_of_a_period_before_the_worker_ran_are_replayed_as_predicted(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = worker_env(services, db_url, topics)
    token = _token_candles(tmp_path / "a.csv")
    sol = _sol_candles(tmp_path / "sol.jsonl")
    done = await run_cli(env, "prices", "import", str(token), "--interval", "1h")
    assert done.code == 0, done
    assert _summary(done) == (f"prices import: {token}: 6 lines of candles of 1h: 24 ticks "
                              "imported, 0 skipped as already there, 0 lines refused")  # fmt: skip
    done = await run_cli(env, "prices", "import", str(sol), "--interval", "60m", "--token", "sol")
    assert done.code == 0, done
    assert "24 ticks imported" in _summary(done)
    history = await _history(db_conn)
    # The rule: open, low, high, close at 0, 15, 30 and 45 minutes of each hour.
    quarter = timedelta(minutes=15)
    assert [(p, ts - P0) for t, p, ts in history if t == TOKEN_A][4:8] == [
        (Decimal(1), HOUR), (Decimal("0.85"), HOUR + quarter),
        (Decimal("1.3"), HOUR + 2 * quarter), (Decimal("1.1"), HOUR + 3 * quarter),
    ]  # fmt: skip
    assert {p for t, p, _ in history if t == SOL_MINT} == {Decimal(100)}

    account = await make_account(db_conn, [CONFIG], deposit_sol=Decimal(2))
    await db_conn.execute("UPDATE agent_transactions SET transaction_time = $1 "
                          "WHERE transaction_type = 'DEPOSIT'", P0 - HOUR)  # fmt: skip
    signals = tmp_path / "signals.jsonl"
    signals.write_text(json.dumps({
        "user_id": str(account.user_id), "token_address": TOKEN_A, "signal_type": "Velocity",
        "signal_strength": 4, "price_usd": "1", "created_at": _stamp(P0 + HOUR / 2),
    }) + "\n")  # fmt: skip
    span = ["--from", _stamp(P0), "--to", _stamp(P0 + 6 * HOUR)]
    replayed = await run_cli(env, "replay", "--signals", str(signals), *span, "--format", "json")
    assert replayed.code == 0, replayed
    [row] = json.loads(replayed.stdout)
    # By hand: at 00:30 the agent buys 0.1 SOL of A at 1 USD / 100 USD = 0.01 SOL (10 tokens,
    # plus the 0.000005 SOL network fee); at 01:15 the low, 0.85 USD, is below the -10% stop
    # (0.9) and sells the 10 tokens for 0.085 SOL less the fee: P/L -0.01501 SOL, a loss.
    # Had the high (1.3, +30%) come first, the +20% take-profit would have sold at a gain.
    assert row["executions"]["success"] == 1
    assert row["trades"] == 1
    assert row["open_positions"] == 0
    assert row["win_rate_pct"] == "0"
    assert row["realised_pnl_sol"] == "-0.01501"
    assert row["largest_loss_sol"] == "-0.01501"
    assert row["balance_sol"] == "1.98499"
    # The same replay over a file of the ticks predicted by the rule: the same figures.
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_text("".join(json.dumps({"token_address": t, "price_usd": str(p),
                                         "ts": _stamp(ts)}) + "\n"
                             for t, p, ts in history))  # fmt: skip
    by_hand = await run_cli(env, "replay", "--signals", str(signals), "--ticks", str(ticks),
                            *span, "--format", "json")  # fmt: skip
    assert by_hand.code == 0, by_hand
    assert json.loads(by_hand.stdout) == [row]


async def test_a_reimport_adds_nothing_and_duplicates_in_a_file_are_skipped(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = worker_env(services, db_url, topics)
    path = tmp_path / "ticks"  # no suffix: CSV from its first line
    path.write_text(
        "token_address,price_usd,ts\n"
        f"{TOKEN_B},2,{_stamp(P0)}\n"
        f"{TOKEN_B},2.0,{_stamp(P0)}\n"  # the same tick again
        f"{TOKEN_B},3,{_stamp(P0 + HOUR)}\n"
    )
    first = await run_cli(env, "prices", "import", str(path))
    assert first.code == 0, first
    assert _summary(first).endswith(": 3 lines of ticks: 2 ticks imported, 1 skipped as "
                                    "already there, 0 lines refused")  # fmt: skip
    before = await _history(db_conn)
    again = await run_cli(env, "prices", "import", str(path))
    assert again.code == 0, again
    assert _summary(again).endswith(": 3 lines of ticks: 0 ticks imported, 3 skipped as "
                                    "already there, 0 lines refused")  # fmt: skip
    assert await _history(db_conn) == before
    assert len(before) == 2


async def test_one_bad_line_refuses_the_file_unless_skip_bad(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = worker_env(services, db_url, topics)
    path = tmp_path / "ticks.jsonl"
    good = [{"token_address": TOKEN_B, "price_usd": "2", "ts": _stamp(P0 + i * HOUR)}
            for i in range(3)]  # fmt: skip
    lines = [json.dumps(good[0]), json.dumps(good[1]),
             '{"token_address": "' + TOKEN_B + '", "price_usd": NaN, "ts": "' + _stamp(P0) + '"}',
             "", json.dumps({**good[2], "price_usd": "-1"}), json.dumps(good[2])]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    refused = await run_cli(env, "prices", "import", str(path))
    assert refused.code == 1, refused
    assert refused.stderr[0].startswith(f"{path}:3: not JSON")
    assert refused.stderr[1] == f"{path}:5: price_usd: must be greater than 0, not -1"
    assert _summary(refused) == (
        f"prices import: {path}: 5 lines of ticks: 0 ticks imported, 0 skipped as already "
        "there, 2 lines refused; nothing imported (a bad line refuses the whole file: fix "
        "it, or --skip-bad to import the other lines)"
    )
    assert await _history(db_conn) == []
    skipped = await run_cli(env, "prices", "import", str(path), "--skip-bad")
    assert skipped.code == 0, skipped
    assert len(skipped.stderr) == 2
    assert _summary(skipped).endswith(": 3 ticks imported, 0 skipped as already there, "
                                      "2 lines refused")  # fmt: skip
    assert [ts for _, _, ts in await _history(db_conn)] == [P0, P0 + HOUR, P0 + 2 * HOUR]


async def test_a_conflict_found_after_thousands_of_ticks_rolls_the_whole_file_back(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """The conflicting line comes after more ticks than one statement writes: those were
    written in the transaction, and are rolled back with it."""
    env = worker_env(services, db_url, topics)
    first = tmp_path / "first.csv"
    first.write_text(f"token_address,price_usd,ts\n{TOKEN_B},5,{_stamp(P0)}\n")
    assert (await run_cli(env, "prices", "import", str(first))).code == 0
    many = tmp_path / "many.csv"
    minutes = prices.CHUNK_TICKS // 4 + 10
    rows = [f"{_stamp(P0 + timedelta(minutes=1 + m))},{TOKEN_A},1,1,1,1" for m in range(minutes)]
    rows.append(f"{_stamp(P0)},{TOKEN_B},4,4,4,4")  # B at P0 is 5 in the history
    many.write_text("ts,token_address,open,high,low,close\n" + "\n".join(rows) + "\n")
    refused = await run_cli(env, "prices", "import", str(many), "--interval", "1m")
    assert refused.code == 1, refused
    assert refused.stderr == [
        f"{many}:{minutes + 2}: conflict: {TOKEN_B} at {P0.isoformat()} has price "
        "5 in the price history, this line says 4"
    ]
    assert "0 ticks imported" in _summary(refused)
    assert await _history(db_conn) == [(TOKEN_B, Decimal(5), P0)]


async def test_days_without_a_partition_go_to_the_default_one_and_outlive_the_upkeep(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = worker_env(services, db_url, topics)
    await price_history_upkeep(db_conn, 30)
    path = tmp_path / "ticks.csv"
    # Today's tick a second after midnight: an hour after it is in the future (refused)
    # when the test runs in the first hour of a UTC day.
    stamps = [TODAY - timedelta(days=20) + HOUR, TODAY - timedelta(days=3) + HOUR,
              TODAY + timedelta(seconds=1)]  # fmt: skip
    path.write_text("token_address,price_usd,ts\n"
                    + "".join(f"{TOKEN_A},1,{_stamp(at)}\n" for at in stamps))  # fmt: skip
    done = await run_cli(env, "prices", "import", str(path))
    assert done.code == 0, done
    await price_history_upkeep(db_conn, 30)
    rows = await db_conn.fetch("SELECT price_ts, tableoid::regclass::text AS part "
                               "FROM token_price_history ORDER BY price_ts")  # fmt: skip
    assert [(r["price_ts"], r["part"]) for r in rows] == [
        (stamps[0], "token_price_history_default"),
        (stamps[1], "token_price_history_default"),
        (stamps[2], partition_name(TODAY.date())),
    ]


async def test_prices_older_than_the_history_keeps_are_refused(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    old = TODAY - timedelta(days=40)
    path = tmp_path / "old.csv"
    path.write_text(f"token_address,price_usd,ts\n{TOKEN_A},1,{_stamp(old)}\n")
    refused = await run_cli(worker_env(services, db_url, topics), "prices", "import", str(path))
    assert refused.code == 1, refused
    assert "the oldest time the price history keeps (PRICE_HISTORY_DAYS)" in refused.stderr[0]
    kept = await run_cli(worker_env(services, db_url, topics, price_history_days=60),
                         "prices", "import", str(path))  # fmt: skip
    assert kept.code == 0, kept
    assert await _history(db_conn) == [(TOKEN_A, Decimal(1), old)]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["prices", "import", "/nonexistent.csv"], "/nonexistent.csv: does not exist"),
        (["prices", "import", "FIFO"], "signals.fifo: is not a regular file"),
        (["prices", "import", "FILE", "--interval", "1w"], "not a candle length: '1w'"),
    ],
)
async def test_a_file_it_cannot_read_is_one_line(
    services: Services, db_url: str, topics: Topics, tmp_path: Path, args: list[str], error: str
) -> None:
    path = tmp_path / "candles.csv"
    path.write_text("ts,open,high,low,close\n")
    fifo = tmp_path / "signals.fifo"
    os.mkfifo(fifo)
    args = [{"FILE": str(path), "FIFO": str(fifo)}.get(a, a) for a in args]
    done = await run_cli(worker_env(services, db_url, topics), *args)
    assert done.code == 2, done
    assert done.stdout == ""
    assert error in done.stderr[-1]
    assert not any("Traceback" in line for line in done.stderr)


async def test_a_tick_twice_in_a_file_at_two_prices_refuses_the_later_line(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(f"token_address,price_usd,ts\n{TOKEN_B},2,{_stamp(P0)}\n"
                    f"{TOKEN_B},3,{_stamp(P0)}\n")  # fmt: skip
    refused = await run_cli(worker_env(services, db_url, topics), "prices", "import", str(path))
    assert refused.code == 1, refused
    assert refused.stderr == [
        f"{path}:3: conflict: {TOKEN_B} at {P0.isoformat()} has price 2 on line 2, this line says 3"
    ]
    assert await _history(db_conn) == []


async def test_where_the_worker_recorded_a_token_its_own_ticks_are_the_record(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Ticks the worker recorded (with a decision time) from P0+2h to P0+4h: an imported
    tick of that token in between is refused (it would mix a candle path into what the
    worker saw), and so is one after its last (a gap in the feed, or where the worker goes
    on recording: live saw no price there); before, and other tokens, are imported."""
    recorded = [(TOKEN_A, Decimal(7), P0 + 2 * HOUR), (TOKEN_A, Decimal(8), P0 + 4 * HOUR)]
    await db_conn.executemany("INSERT INTO token_price_history (token_address, price_usd, "
                              "price_ts, event_at) VALUES ($1, $2, $3, $3)", recorded)  # fmt: skip
    env = worker_env(services, db_url, topics)
    path = tmp_path / "ticks.csv"
    path.write_text("token_address,price_usd,ts\n" + "".join(
        f"{t},1,{_stamp(P0 + h * HOUR)}\n"
        for t, h in [(TOKEN_A, 1), (TOKEN_A, 3), (TOKEN_A, 5), (TOKEN_B, 3)]
    ))  # fmt: skip
    refused = await run_cli(env, "prices", "import", str(path))
    assert refused.code == 1, refused
    assert refused.stderr == [
        f"{path}:{line}: the worker records {TOKEN_A}'s prices itself since "
        f"{(P0 + 2 * HOUR).isoformat()} and {(P0 + hours * HOUR).isoformat()} is not before "
        "that: its own ticks are the record from then on (an import fills the time before)"
        for line, hours in [(3, 3), (4, 5)]
    ]
    assert await _history(db_conn) == recorded
    skipped = await run_cli(env, "prices", "import", str(path), "--skip-bad")
    assert skipped.code == 0, skipped
    assert _summary(skipped).endswith(": 2 ticks imported, 0 skipped as already there, "
                                      "2 lines refused")  # fmt: skip
    history = await _history(db_conn)
    assert [(t, ts - P0) for t, _, ts in history] == [
        (TOKEN_A, HOUR), (TOKEN_A, 2 * HOUR), (TOKEN_A, 4 * HOUR), (TOKEN_B, 3 * HOUR),
    ]  # fmt: skip
