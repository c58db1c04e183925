"""`signal-worker publish` and `publish-price` against the real broker: what is sent, what is
refused, and what the user is told."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.helpers.books import TOKEN_A
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics, read_topic
from tests.helpers.services import Services
from tests.helpers.workers import worker_env
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
        env, "publish", "--user-id", str(uuid.uuid4()), "--token-address", TOKEN_A, timeout_s=20
    )
    assert run.code == 1
    assert run.stderr[-1] == (
        f"signal-worker publish: topic 'no-such-topic-x' does not exist on "
        f"{services.kafka_bootstrap}: start the worker once (`signal-worker run` creates its "
        "topics) or create it"
    )
