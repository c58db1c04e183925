"""Scenario 15: an agent created after signals were processed, then the signals read
again (the group's offsets reset to the earliest, or a new consumer group): the new agent
gets no execution for the older signals, the older agents' are not written twice, and it
trades the signals made after it."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import make_book, mint
from tests.helpers.cli import run_cli
from tests.helpers.db import stored_offsets
from tests.helpers.kafka import Topics, send_all
from tests.helpers.ledger import EXECUTIONS, Report, assert_exactly_once, measure, seeded
from tests.helpers.services import Services
from tests.helpers.workers import (
    WorkerProcess,
    env_for,
    log_events,
    make_settings,
    terminate_within,
    wait_for,
    wait_for_count,
    worker_env,
)
from worker.db import accounts

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

USERS, AGENTS, OLD, NEW = 6, 3, 25, 5  # signals per user before and after the new agents

OLD_SIGNALS_OF_NEW_AGENTS = """
SELECT count(*) FROM signal_executions e JOIN trading_signals s ON s.id = e.signal_id
 WHERE e.agent_id = ANY($1::uuid[]) AND s.idempotency_key = ANY($2::varchar[])
"""


@pytest.mark.parametrize("reread", ["offsets reset --to-earliest", "a new consumer group"])
async def test_an_agent_created_since_gets_none_of_the_older_signals_read_again(
    services: Services,
    db_url: str,
    topics: Topics,
    db_conn: asyncpg.Connection,
    report: Report,
    reread: str,
) -> None:
    seed, rng = seeded("new-agents")
    tokens = [mint(rng) for _ in range(10)]
    book = await make_book(db_conn, USERS, AGENTS)
    old = book.signals(OLD, tokens)
    settings = make_settings(services, db_url, topics)
    env = env_for(settings)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        sent = await send_all(services.kafka_bootstrap, topics.signals, old)
        await wait_for_count(db_url, EXECUTIONS, len(old) * AGENTS, timeout_s=90)
    finally:
        first_code = terminate_within(worker, 30)

    # The workers are stopped; one new agent per user, created now (the database's clock):
    # after every older signal was made.
    newcomers = []
    for account in book.accounts:
        agent = await accounts.create_funded_agent(
            db_conn, account.user_id, "newcomer", deposit_sol=Decimal(10)
        )
        account.agents.append(agent)
        newcomers.append(agent.agent_id)
    if reread.startswith("offsets reset"):
        reset = await run_cli(env, "offsets", "reset", "--to-earliest", "--topic", topics.signals)
        assert reset.code == 0, reset.stdout + "\n".join(reset.stderr)
        group = topics.group
    else:
        group = f"{topics.group}-new"
        env = worker_env(services, db_url, topics, consumer_group=group)
    new = book.signals(NEW, tokens, start=OLD)  # for every agent, the newcomers too
    total = len(old) * AGENTS + len(new) * (AGENTS + 1)

    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        sent += await send_all(services.kafka_bootstrap, topics.signals, new)
        ends: dict[int, int] = {}
        for s in sent:
            ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)

        async def read_to_the_end() -> bool:
            stored = await stored_offsets(db_url, group, topics.signals)
            return all(stored.get(p, 0) >= end for p, end in ends.items())

        await wait_for(read_to_the_end, timeout_s=90, what="every signal record read again")
        await wait_for_count(db_url, EXECUTIONS, total, timeout_s=60)
    finally:
        code = terminate_within(worker, 30)

    ledger = await measure(db_conn, book.expected)
    old_keys = sorted({str(m["idempotency_key"]) for m in old})
    for_old = await db_conn.fetchval(OLD_SIGNALS_OF_NEW_AGENTS, newcomers, old_keys)
    read_again = len(log_events(worker, "signal_processed"))
    report(
        f"15 new agents, {reread}",
        records=f"{len(old)} signals x {AGENTS} agents, then {USERS} agents created and "
        f"{len(new)} signals x {AGENTS + 1} agents",
        faults=f"{reread}: {read_again} signal records read after it; executions of the new "
        f"agents for older signals {for_old}",
        **ledger.figures,
        seed=seed,
    )
    assert (first_code, code) == (0, 0), worker.tail()
    assert read_again >= len(old) + len(new), "the older signals were not read again"
    assert for_old == 0, f"the new agents got {for_old} executions for signals older than them"
    assert_exactly_once(ledger)
    assert ledger.executions == total
