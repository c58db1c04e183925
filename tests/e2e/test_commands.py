"""Issue 23 end to end, on real Kafka and PostgreSQL: a user runs its agents by commands only.

One recorded stream (commands, ticks and signals of one user, each with its event time):
the user created, two agents created and funded by commands, a signal traded by both, one
config patched mid-stream (its next signal skipped with the reason), one agent paused (its
next signal skipped with the reason), one position closed by hand, a withdrawal refused for
lack of funds, one applied, a command sent twice (applied once), an invalid one dead-lettered.
Consumed twice (a backlog at once; one record per fetch), into fresh databases: every
command's result row, `check` clean, and the two ledgers (commands' rows included) and
result tables identical row for row.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers.books import mint
from tests.helpers.cli import run_cli
from tests.helpers.db import connected, create_migrated, database_name, drop_database
from tests.helpers.services import Services
from tests.helpers.streams import Record, Run, differences, record_counts
from tests.helpers.workers import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
USER = uuid.UUID("0b7c8f6e-3a7d-4d0e-9a61-2f4b7d1c9e01")
AGENT_A = uuid.UUID("0b7c8f6e-3a7d-4d0e-9a61-2f4b7d1c9e0a")
AGENT_B = uuid.UUID("0b7c8f6e-3a7d-4d0e-9a61-2f4b7d1c9e0b")
SOL = "So11111111111111111111111111111111111111112"
NO_RANDOM = {"positionCalculator": {"randomization": {"enabled": False}}}


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _ms(seconds: float) -> int:
    return int((T0 + timedelta(seconds=seconds)).timestamp() * 1000)


def _command(seconds: float, key: str, kind: str, **fields: Any) -> Record:
    value = {"command": kind, "user_id": str(USER), "idempotency_key": key, **fields}
    value["created_at"] = _at(seconds)
    return Record(_ms(seconds), "commands", str(USER).encode(), value)


def _tick(seconds: float, token: str, usd: str) -> Record:
    value = {"token_address": token, "price_usd": usd, "ts": _at(seconds)}
    return Record(_ms(seconds), "prices", token.encode(), value)


def _signal(seconds: float, key: str, token: str) -> Record:
    value = {
        "user_id": str(USER),
        "token_address": token,
        "signal_type": "Velocity",
        "signal_strength": 3,
        "idempotency_key": key,
        "created_at": _at(seconds),
    }
    return Record(_ms(seconds), "signals", str(USER).encode(), value)


def _stream(tokens: list[str]) -> list[Record]:
    t1, t2, t3 = tokens
    a, b = str(AGENT_A), str(AGENT_B)
    return [
        _command(0, "user", "create_user", email="trader@example.com"),
        _command(1, "agent-a", "create_agent", agent_id=a, name="alpha", sol="10",
                 config=NO_RANDOM),
        _command(2, "agent-b", "create_agent", agent_id=b, name="beta", config=NO_RANDOM),
        _command(3, "fund-b", "deposit", agent_id=b, amount="5"),
        _tick(4, SOL, "150"),
        _tick(4, t1, "0.001"),
        _tick(4, t2, "0.002"),
        _tick(4, t3, "0.003"),
        _signal(6, "s1", t1),
        _command(8, "patch-b", "patch_config", agent_id=b, patch={"signals": {"minScore": 5}}),
        _signal(10, "s2", t2),
        _command(12, "pause-a", "pause", agent_id=a, mode="all"),
        _signal(14, "s3", t3),
        _tick(15, t1, "0.0012"),
        _command(16, "close-b", "close_positions", agent_id=b, token_address=t1),
        _command(18, "too-much", "withdraw", agent_id=b, amount="1000"),
        _command(19, "take-1", "withdraw", agent_id=a, amount="1"),
        _command(20, "take-1", "withdraw", agent_id=a, amount="1"),  # the same command again
        _command(21, "bad", "deposit", agent_id=a, amount="-1"),  # invalid: dead-lettered
    ]  # fmt: skip


RESULTS = """
SELECT idempotency_key, command, status, reason, agent_id, changes::text AS changes, event_at,
       payload::text AS payload
  FROM command_results ORDER BY idempotency_key
"""
EXECUTIONS = """
SELECT s.idempotency_key, a.name, e.status, e.error
  FROM signal_executions e JOIN trading_signals s ON s.id = e.signal_id
  JOIN agents a ON a.id = e.agent_id ORDER BY 1, 2
"""


async def _consume(run: Run, records: list[Record], **env: Any) -> None:
    await run.publish(records)
    worker = WorkerProcess(run.env(**env)).start()
    await worker.wait_started()
    await run.until_processed(record_counts(records), worker)
    assert worker.terminate() == 0, worker.tail()


async def test_a_user_runs_agents_by_commands_and_the_stream_gives_one_ledger(
    services: Services,
) -> None:
    tokens = [mint(random.Random(i)) for i in range(3)]
    records = _stream(tokens)
    base = await create_migrated(services)
    template = database_name(base)
    runs: list[tuple[list[Any], list[Any], list[Any]]] = []
    verified: list[str] = []
    try:
        for name, env in (("backlog", {}), ("one per fetch", {"kafka_fetch_max_records": 1})):
            async with Run(services, template, name) as run:
                await _consume(run, records, **env)
                check = await run_cli(run.env(), "check")
                assert check.code == 0, check.stdout[-2000:]
                async with connected(run.url) as conn:
                    results = [dict(r) for r in await conn.fetch(RESULTS)]
                    executions = [tuple(r) for r in await conn.fetch(EXECUTIONS)]
                    closes = await conn.fetch(
                        "SELECT agent_id, token_address, close_reason, sale_time "
                        "FROM agent_historical_swaps"
                    )
                    transfers = await conn.fetch(
                        "SELECT agent_id, transaction_type, coalesce(output_amount, "
                        "input_amount) AS amount, transaction_time FROM agent_transactions "
                        "WHERE transaction_type IN ('DEPOSIT', 'WITHDRAWAL') ORDER BY 4, 1"
                    )
                    history = await conn.fetch(
                        "SELECT agent_id, valid_from, automated_trading_simulation "
                        "FROM agent_config_history ORDER BY agent_id, valid_from, id"
                    )
                ledger = await run.ledger()
                verified.append(await run.verify())
                runs.append((ledger, results, executions))
    finally:
        await drop_database(services, base)

    _ledger, results, executions = runs[0]
    by_key = {r["idempotency_key"]: r for r in results}
    assert sorted(by_key) == sorted(
        ["user", "agent-a", "agent-b", "fund-b", "patch-b", "pause-a", "close-b", "too-much",
         "take-1"]
    )  # fmt: skip
    refused = {k: r["reason"] for k, r in by_key.items() if r["status"] == "refused"}
    assert list(refused) == ["too-much"], refused
    assert "exceeds the balance of" in refused["too-much"]
    assert by_key["agent-a"]["event_at"] == T0 + timedelta(seconds=1)
    assert json.loads(by_key["take-1"]["changes"])["withdrawal_sol"] == 1
    assert json.loads(by_key["close-b"]["changes"])["closed"][0]["token"] == tokens[0]
    # The signals: both bought s1; the patch made beta skip s2; the pause made alpha skip s3.
    decided = {(key, name): (status, error) for key, name, status, error in executions}
    assert decided[("s1", "alpha")][0] == "success"
    assert decided[("s1", "beta")][0] == "success"
    assert decided[("s2", "alpha")][0] == "success"
    assert decided[("s2", "beta")][0] == "skipped"
    assert "minScore 5" in (decided[("s2", "beta")][1] or "")
    assert decided[("s3", "alpha")][0] == "skipped"
    assert "automated" in (decided[("s3", "alpha")][1] or "").lower()
    assert [(c["agent_id"], c["close_reason"]) for c in closes] == [(AGENT_B, "manual")]
    assert closes[0]["sale_time"] == T0 + timedelta(seconds=16)
    assert [(t["agent_id"], t["transaction_type"], t["amount"]) for t in transfers] == [
        (AGENT_A, "DEPOSIT", 10),
        (AGENT_B, "DEPOSIT", 5),
        (AGENT_A, "WITHDRAWAL", 1),
    ]
    # The pause is in force from its command's time (live and replay read it there).
    paused = [
        h for h in history if h["agent_id"] == AGENT_A and not h["automated_trading_simulation"]
    ]
    assert [h["valid_from"] for h in paused] == [T0 + timedelta(seconds=12)]
    # One stream, one ledger: the two ways of consuming it agree row for row.
    (first, first_results, first_exec), (second, second_results, second_exec) = runs
    assert not differences(first, second), differences(first, second)
    strip = [{k: v for k, v in r.items() if k != "payload"} for r in first_results]
    assert strip == [{k: v for k, v in r.items() if k != "payload"} for r in second_results]
    assert first_exec == second_exec
    # And replay, in memory, from what was recorded (commands included), makes them again.
    assert all("identical" in line for line in verified), verified
