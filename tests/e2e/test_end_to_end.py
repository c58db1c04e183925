"""End to end: the installed commands, a real broker and a real database, as a user runs them."""

from __future__ import annotations

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, make_account, set_sol_price
from tests.helpers.cli import run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, wait_for_count, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_published_signal_becomes_a_trade_and_sigterm_stops_cleanly(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, [None, {"signals": {"minScore": 5}}])
    await set_sol_price(db_conn, "150")
    env = worker_env(services, db_url, topics)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        published = await run_cli(
            env,
            "publish",
            "--user-id",
            str(account.user_id),
            "--token-address",
            TOKEN_A,
            "--symbol",
            "E2E",
            "--signal-type",
            "Velocity (Dex Boost Detection)",
            "--price-usd",
            "0.25",
            "--signal-strength",
            "3",
            "--idempotency-key",
            "e2e-1",
            timeout_s=60,
        )
        assert published.code == 0, published.stderr
        assert "sent 1 signal to" in published.stdout

        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 2)
        rows = await db_conn.fetch(
            "SELECT agent_id, status, error FROM signal_executions ORDER BY status"
        )
        by_agent = {r["agent_id"]: r for r in rows}
        steady, picky = account.agents
        assert by_agent[steady.agent_id]["status"] == "success"
        assert by_agent[picky.agent_id]["status"] == "skipped"
        assert by_agent[picky.agent_id]["error"] == "signal strength 3 is below minScore 5"
        assert (
            await db_conn.fetchval(
                "SELECT count(*) FROM agent_positions WHERE agent_id = $1", steady.agent_id
            )
            == 1
        )
    finally:
        # The contract's bound: exit within 10 seconds of SIGTERM (TimeoutExpired otherwise).
        code = worker.terminate(timeout_s=10)
        print(worker.tail(60))  # shown by pytest when the test fails
    assert code == 0, worker.tail()
    assert any('"worker_stopped"' in line for line in worker.lines)

    check = await run_cli(env, "check", timeout_s=60)
    assert check.code == 0, check
    assert "all ledger invariants hold" in check.stdout
