"""`signal-worker publish` and `publish-price` against the real broker: what is sent, what is
refused, and what the user is told."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B, make_account, set_sol_price, signal_message
from tests.helpers.cli import assert_log_lines_then_one_error, finish_cli, run_cli
from tests.helpers.db import count, stored_offsets
from tests.helpers.kafka import Topics, read_all, read_topic
from tests.helpers.services import ROOT, Services
from tests.helpers.workers import make_settings, running_worker, wait_for, worker_env
from worker.domain.models import SOL_MINT

pytestmark = pytest.mark.integration


def _rejections(stderr: list[str]) -> list[tuple[int, str]]:
    """(line, reason) of every `line_rejected` log line (JSON: the tests' LOG_FORMAT)."""
    events = [json.loads(line) for line in stderr if line.startswith("{")]
    return [(e["line"], e["reason"]) for e in events if e["event"] == "line_rejected"]


def _signal(user_id: uuid.UUID, i: int) -> bytes:
    return json.dumps(
        {
            "user_id": str(user_id),
            "token_address": TOKEN_A,
            "signal_type": "Velocity (Dex Boost Detection)",
            "signal_strength": 3,
            "idempotency_key": f"k-{i}",
        }
    ).encode()


async def test_a_line_that_is_not_utf8_is_reported_with_its_own_number_and_the_rest_is_sent(
    services: Services, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    user_id = uuid.uuid4()
    lines = [_signal(user_id, i) for i in range(300)]
    lines.insert(269, b'{"user_id": "\xff\xfe"}')  # line 270 of 301
    lines.insert(100, b"")  # a blank line is skipped, not counted as rejected
    path = tmp_path / "signals.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    env = worker_env(services, db_url, topics)

    run = await run_cli(env, "publish", "--file", str(path))

    assert run.code == 1
    assert run.stdout.strip().startswith("sent 300 signals to " + topics.signals)
    assert run.stdout.strip().endswith("; 1 line rejected (271)")
    assert _rejections(run.stderr) == [(271, "not UTF-8: invalid start byte at byte 13")]
    records = await read_topic(services.kafka_bootstrap, topics.signals, 301, timeout_s=10)
    assert len(records) == 300
    assert {r.key for r in records} == {str(user_id).encode()}


async def test_one_signal_from_flags_carries_the_market_data_and_says_where_it_went(
    services: Services, topics: Topics, db_url: str
) -> None:
    env = worker_env(services, db_url, topics)
    user_id = str(uuid.uuid4())
    run = await run_cli(
        env, "publish", "--user-id", user_id, "--token-address", TOKEN_A,
        "--signal-type", "Velocity (Dex Boost Detection)", "--signal-strength", "3",
        "--price-usd", "0.5", "--market-cap-usd", "250000", "--liquidity-usd", "40000",
        "--holder-count", "1200", "--activation-reason", "volume x10",
        "--idempotency-key", "demo-1", "--source", "test",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"sent 1 signal to {topics.signals} (partition ")
    [record] = await read_topic(services.kafka_bootstrap, topics.signals, 1)
    assert json.loads(record.value) == {
        "user_id": user_id,
        "token_address": TOKEN_A,
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 3,
        "price_usd": "0.5",
        "market_cap_usd": "250000",
        "liquidity_usd": "40000",
        "holder_count": 1200,
        "activation_reason": "volume x10",
        "idempotency_key": "demo-1",
        "source": "test",
    }


async def test_publish_price_sends_ticks_keyed_by_token_and_refuses_bad_ones(
    services: Services, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    env = worker_env(services, db_url, topics)
    run = await run_cli(env, "publish-price", "--token-address", SOL_MINT, "--price-usd", "150")
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"sent 1 price tick to {topics.prices} (partition ")

    path = tmp_path / "ticks.jsonl"
    path.write_text(
        json.dumps({"token_address": TOKEN_A, "price_usd": "0.52"}) + "\n"
        + json.dumps({"token_address": TOKEN_A, "price_usd": "1e-19"}) + "\n"
    )  # fmt: skip
    run = await run_cli(env, "publish-price", "--file", str(path))
    assert run.code == 1
    assert "sent 1 price tick to" in run.stdout
    assert run.stdout.strip().endswith("1 line rejected (2)")
    [(line, reason)] = _rejections(run.stderr)
    assert line == 2
    assert reason.startswith("invalid price tick: price_usd: must be at least")
    records = await read_topic(services.kafka_bootstrap, topics.prices, 2)
    assert sorted(r.key for r in records) == sorted([SOL_MINT.encode(), TOKEN_A.encode()])


async def test_publish_refuses_lenient_spellings_with_their_line_numbers(
    services: Services, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    """Issue 20: `publish-price` sent "١٢" (read as 12), a key given twice and a price that
    overflows numeric(30,18) once rounded; `publish` sent a Unix `created_at`."""
    env = worker_env(services, db_url, topics)
    path = tmp_path / "ticks.jsonl"
    token = TOKEN_A.encode()
    path.write_bytes(
        b'{"token_address": "%s", "price_usd": "0.52"}\n' % token
        + f'{{"token_address": "{TOKEN_A}", "price_usd": "١٢"}}\n'.encode()
        + b'{"token_address": "%s", "price_usd": "1", "price_usd": "2"}\n' % token
        + b'{"token_address": "%s", "price_usd": "999999999999.9999999999999999999"}\n' % token
        + b'{"token_address": "%s", "price_usd": "1_000"}\n' % token
    )
    run = await run_cli(env, "publish-price", "--file", str(path))
    assert run.code == 1
    assert run.stdout.startswith(f"sent 1 price tick to {topics.prices} (partition ")
    assert run.stdout.strip().endswith("; 4 lines rejected (2, 3, 4, 5)")
    reasons = dict(_rejections(run.stderr))
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "must be a decimal written as a JSON number" in reasons[2]
    assert (
        reasons[3]
        == "not JSON this worker accepts: the key 'price_usd' appears twice in one object"
    )
    assert "rounds to 1000000000000" in reasons[4]
    assert "must be a decimal written as a JSON number" in reasons[5]

    user_id = str(uuid.uuid4())
    run = await run_cli(
        env, "publish", "--user-id", user_id, "--token-address", TOKEN_A,
        "--signal-type", "Velocity (Dex Boost Detection)", "--signal-strength", "3",
        "--created-at", "1767268800",
    )  # fmt: skip
    assert run.code == 1
    [(line, reason)] = _rejections(run.stderr)
    assert line == 1
    assert "created_at: must be an RFC 3339 timestamp with seconds and an offset" in reason
    [record] = await read_topic(services.kafka_bootstrap, topics.prices, 1)
    assert json.loads(record.value)["price_usd"] == "0.52"


async def test_a_signal_for_the_sol_mint_is_refused_before_it_is_sent(
    services: Services, topics: Topics, db_url: str
) -> None:
    env = worker_env(services, db_url, topics)
    run = await run_cli(
        env, "publish", "--user-id", str(uuid.uuid4()), "--token-address", SOL_MINT,
        "--signal-type", "Velocity (Dex Boost Detection)", "--signal-strength", "3",
        "--price-usd", "0.5",
    )  # fmt: skip
    assert run.code == 1
    [(_, reason)] = _rejections(run.stderr)
    assert reason.endswith("the SOL mint: SOL is the quote currency, not a tradable token")
    assert run.stdout.startswith("sent 0 signals")


async def test_a_missing_topic_is_one_line_not_thirty_seconds_of_retries(
    services: Services, topics: Topics, db_url: str
) -> None:
    env = worker_env(services, db_url, topics, signals_topic="no-such-topic-x")
    run = await run_cli(
        env, "publish", "--user-id", str(uuid.uuid4()), "--token-address", TOKEN_A,
        "--signal-type", "Velocity (Dex Boost Detection)", "--signal-strength", "3", timeout_s=20,
    )  # fmt: skip
    assert run.code == 1
    assert run.stderr[-1] == (
        f"signal-worker publish: topic 'no-such-topic-x' does not exist on "
        f"{services.kafka_bootstrap}: start the worker once (`signal-worker run` creates its "
        "topics) or create it"
    )


# ----------------------------------------------------------- issue 23, item 5: publish


async def test_wait_prints_each_agents_decision_for_a_signal_with_and_without_a_key(
    services: Services, topics: Topics, db_url: str, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    account = await make_account(db_conn, [None, {"signals": {"minScore": 5}}])
    await set_sol_price(db_conn)
    taker, picky = (a.agent_id for a in account.agents)
    path = tmp_path / "signals.jsonl"
    path.write_text(
        json.dumps(signal_message(account.user_id, idempotency_key="with-key")) + "\n"
        + json.dumps(signal_message(account.user_id, TOKEN_B)) + "\n"  # keyed by coordinates
    )  # fmt: skip
    env = worker_env(services, db_url, topics)
    async with running_worker(make_settings(services, db_url, topics)):
        run = await run_cli(env, "publish", "--file", str(path), "--wait", "--wait-timeout", "30")
    assert run.code == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0].startswith(f"sent 2 signals to {topics.signals} (partition ")
    first = out.index(f"line 1: signal 'with-key' of user {account.user_id}: 2 agents")
    assert out[first + 1].split() == [str(taker), "agent", "0", "success"]
    assert out[first + 2].split(maxsplit=4) == [
        str(picky), "agent", "1", "skipped:", "signal strength 4 is below minScore 5"
    ]  # fmt: skip
    [second] = [n for n, line in enumerate(out) if line.startswith("line 2: signal ")]
    key = out[second].split("'")[1]
    assert key.startswith(f"{topics.signals}:")  # topic:partition:offset
    assert out[second].endswith(": 2 agents")
    assert [line.split()[-1] for line in out[second + 1 : second + 3]] == ["success", "5"]
    stored = await db_conn.fetchval(
        "SELECT count(*) FROM trading_signals WHERE user_id = $1 AND idempotency_key = $2",
        account.user_id,
        key,
    )
    assert stored == 1


async def test_wait_without_a_worker_times_out_saying_how_many_are_undecided(
    services: Services, topics: Topics, db_url: str
) -> None:
    env = worker_env(services, db_url, topics)
    run = await run_cli(
        env, "publish", "--user-id", str(uuid.uuid4()), "--token-address", TOKEN_A,
        "--signal-type", "Velocity (Dex Boost Detection)", "--signal-strength", "3",
        "--wait", "--wait-timeout", "1",
    )  # fmt: skip
    assert run.code == 1
    assert run.stdout.startswith(f"sent 1 signal to {topics.signals}")
    assert assert_log_lines_then_one_error(run.stderr, "publish") == (
        "signal-worker publish: 1 of 1 signal still undecided after 1s (the first at line 1): "
        "is a worker running (`signal-worker run`)? A signal for an unknown user is "
        "dead-lettered (DLQ_TOPIC); --wait-timeout waits longer"
    )


async def test_dry_run_reports_each_invalid_line_and_sends_nothing(
    services: Services, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    user_id = uuid.uuid4()
    ahead = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "signals.jsonl"
    path.write_bytes(
        _signal(user_id, 1) + b"\n"
        + b'{"user_id": "not a uuid"}\n'
        + b"\n"
        + json.dumps(signal_message(user_id, created_at=ahead)).encode() + b"\n"
        + _signal(user_id, 2) + b"\n"
    )  # fmt: skip
    env = worker_env(services, db_url, topics)
    run = await run_cli(env, "publish", "--file", str(path), "--dry-run")
    assert run.code == 1, run.stderr
    out = run.stdout.splitlines()
    assert out[0].startswith("line 2: invalid signal: user_id: ")
    assert out[1].startswith(f"line 4: invalid signal: created_at {ahead[:10]}")
    assert "PRICE_MAX_FUTURE_S" in out[1]
    assert out[2] == "dry run: 2 signals valid, 2 lines invalid (2, 4); nothing was sent"
    assert len(out) == 3
    assert await read_all(services.kafka_bootstrap, topics.signals) == []

    path.write_bytes(_signal(user_id, 1) + b"\n")
    run = await run_cli(env, "publish", "--file", str(path), "--dry-run")
    assert run.code == 0
    assert run.stdout == "dry run: 1 signal valid; nothing was sent\n"
    assert await read_all(services.kafka_bootstrap, topics.signals) == []


async def test_skip_lines_starts_after_the_first_n_lines_counting_blank_and_bad_ones(
    services: Services, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    user_id = uuid.uuid4()
    path = tmp_path / "signals.jsonl"
    path.write_bytes(
        _signal(user_id, 1) + b"\n\nnot json\n" + _signal(user_id, 4) + b"\n"
        + _signal(user_id, 5) + b"\n"
    )  # fmt: skip
    env = worker_env(services, db_url, topics)
    run = await run_cli(env, "publish", "--file", str(path), "--skip-lines", "3")
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"sent 2 signals to {topics.signals}")
    records = await read_topic(services.kafka_bootstrap, topics.signals, 2)
    assert sorted(json.loads(r.value)["idempotency_key"] for r in records) == ["k-4", "k-5"]

    run = await run_cli(env, "publish", "--user-id", str(user_id), "--token-address", TOKEN_A,
                        "--signal-type", "manual", "--signal-strength", "3",
                        "--skip-lines", "1")  # fmt: skip
    assert run.code == 2
    assert (
        run.stderr[-1] == "signal-worker publish: --skip-lines needs --file FILE (or - for stdin)"
    )


async def test_key_from_content_makes_a_second_run_of_the_same_file_add_nothing(
    services: Services, topics: Topics, db_url: str, db_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    account = await make_account(db_conn, [None])
    await set_sol_price(db_conn)
    path = tmp_path / "signals.jsonl"
    path.write_text(json.dumps(signal_message(account.user_id, created_at="2026-01-05T10:00:00Z")))
    env = worker_env(services, db_url, topics)
    async with running_worker(make_settings(services, db_url, topics)):
        for _ in range(2):
            run = await run_cli(env, "publish", "--file", str(path), "--key-from-content")
            assert run.code == 0, run.stderr

        async def both_applied() -> bool:
            stored = await stored_offsets(db_url, topics.group, topics.signals)
            return sum(stored.values()) == 2

        await wait_for(both_applied, what="both records applied")
    records = await read_topic(services.kafka_bootstrap, topics.signals, 2)
    keys = {json.loads(r.value)["idempotency_key"] for r in records}
    assert len(records) == 2
    assert len(keys) == 1
    assert next(iter(keys)).startswith("content-")
    rows = await db_conn.fetch(
        "SELECT idempotency_key FROM trading_signals WHERE user_id = $1", account.user_id
    )
    assert [r["idempotency_key"] for r in rows] == list(keys)
    assert await count(db_url, "SELECT count(*) FROM signal_executions") == 1


async def test_ctrl_c_during_a_slow_stdin_send_says_what_was_sent_and_how_to_resume(
    services: Services, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    user_id = uuid.uuid4()
    lines = [_signal(user_id, i) for i in range(1, 9)]
    env = worker_env(services, db_url, topics)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "publish", "--file", "-",
        env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    for line in lines[:5]:  # a slow writer: one line at a time, each sent before the next
        proc.stdin.write(line + b"\n")
        await proc.stdin.drain()
        await asyncio.sleep(0.05)
    written = await read_topic(services.kafka_bootstrap, topics.signals, 5, timeout_s=30)
    assert len(written) == 5
    proc.send_signal(signal.SIGINT)  # the writer is silent, stdin still open
    run = await finish_cli(proc, timeout_s=30)
    proc.stdin.close()

    assert run.code == 130, run.stderr
    assert run.stdout.startswith(f"sent 5 signals to {topics.signals}")
    assert assert_log_lines_then_one_error(run.stderr, "publish") == (
        "signal-worker publish: interrupted after line 5: the last line sent is line 5: "
        f"{lines[4][:60].decode()}…; to resume, run the same command with --skip-lines 5"
    )

    path = tmp_path / "signals.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = await run_cli(env, "publish", "--file", str(path), "--skip-lines", "5")
    assert run.code == 0, run.stderr
    records = await read_topic(services.kafka_bootstrap, topics.signals, 8)
    keys = [json.loads(r.value)["idempotency_key"] for r in records]
    assert sorted(keys) == sorted(f"k-{i}" for i in range(1, 9))
