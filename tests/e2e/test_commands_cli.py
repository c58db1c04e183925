"""Issue 23 from a user's terminal: the CLI's commands against the real worker, Kafka and
PostgreSQL, each waiting for its result and exiting as it says (0 applied, 1 refused)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.db import connected
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_a_new_user_sets_up_funds_pauses_and_withdraws_from_the_cli(
    services: Services, db_url: str, topics: Topics
) -> None:
    env = worker_env(services, db_url, topics)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        user = str(uuid.uuid4())

        async def cli(*args: str) -> tuple[int, str]:
            result = await run_cli(env, *args, "--timeout", "60")
            return result.code, result.stdout.strip()

        code, line = await cli("users", "create", "--email", "new@example.com", "--user-id", user)
        assert (code, line.split(":")[0]) == (0, "applied"), line
        code, line = await cli("agents", "create", "--user", user, "--name", "alpha", "--sol", "3")
        assert code == 0 and line.startswith("applied"), line
        listed = await run_cli(env, "agents", "list", "--user", user, "--format", "json")
        [agent] = json.loads(listed.stdout)
        agent_id = agent.get("agent_id") or agent.get("id")
        code, line = await cli("agents", "fund", agent_id, "2")
        assert code == 0 and line.startswith("applied"), line
        code, line = await cli("agents", "pause", agent_id)
        assert code == 0 and line.startswith("applied"), line
        code, line = await cli(
            "agents", "config", agent_id, "--patch", '{"signals": {"minScore": 4}}'
        )
        assert code == 0 and line.startswith("applied"), line
        code, line = await cli(
            "agents", "config", agent_id, "--patch", '{"signals": {"minScore": 9}}'
        )
        assert code == 1 and line.startswith("refused") and "minScore" in line, line
        code, line = await cli("agents", "withdraw", agent_id, "50")
        assert code == 1 and "exceeds the balance of 5" in line, line
        code, line = await cli("positions", "close", agent_id, "--all")
        assert code == 1 and "no open positions" in line, line
        shown = await run_cli(env, "agents", "show", agent_id, "--config")
        assert json.loads(shown.stdout)["signals"]["minScore"] == 4
        check = await run_cli(env, "check")
        assert check.code == 0, check.stdout[-2000:]
    finally:
        assert worker.terminate() == 0, worker.tail()
    async with connected(db_url) as conn:
        statuses = await conn.fetch(
            "SELECT command, status FROM command_results WHERE user_id = $1 ORDER BY event_at",
            uuid.UUID(user),
        )
        paused = await conn.fetchval(
            "SELECT automated_trading_simulation FROM agents WHERE id = $1", uuid.UUID(agent_id)
        )
    assert [s["status"] for s in statuses].count("applied") == 5
    assert [s["status"] for s in statuses].count("refused") == 3
    assert paused is False
