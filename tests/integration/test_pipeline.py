"""The signal pipeline against the real broker and database: decisions, idempotency, buys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.helpers.books import (
    TOKEN_A,
    TOKEN_B,
    TOKEN_C,
    make_account,
    set_sol_price,
    signal_message,
)
from tests.helpers.db import create_database, drop_database
from tests.helpers.kafka import Topics, create_test_topics, delete_topics, publish, read_topic
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, running_worker, wait_for_count
from worker.db import accounts
from worker.db.ledger import find_violations
from worker.db.offsets import set_offset
from worker.domain.models import SOL_MINT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

METRICS: dict[str, Any] = {
    "market_cap_usd": "500000",
    "liquidity_usd": "50000",
    "holder_count": 1200,
}


@dataclass(frozen=True)
class Rule:
    """One decision rule: how to set up the agent, and the execution it must get."""

    name: str
    config: dict[str, Any] | None
    status: str
    reason: str | None
    agent_kwargs: dict[str, Any] | None = None
    deposit: Decimal = Decimal(10)


RULES = [
    Rule("buys", None, "success", None),
    Rule(
        "automation_off",
        None,
        "skipped",
        "automated trading is off for simulation mode",
        {"automated_simulation": False},
    ),
    Rule(
        "min_score",
        {"signals": {"minScore": 4}},
        "skipped",
        "signal strength 3 is below minScore 4",
    ),
    Rule(
        "signal_type",
        {"signals": {"allowedSignalTypes": ["Ignition Beta (ML Graduation)"]}},
        "skipped",
        "signal type 'Velocity (Dex Boost Detection)' is not in allowedSignalTypes "
        "('Ignition Beta (ML Graduation)')",
    ),
    Rule(
        "blacklist",
        {"signals": {"tokenFilterMode": "blacklist", "tokenList": [TOKEN_A]}},
        "skipped",
        f"token {TOKEN_A} is on the agent's blacklist",
    ),
    Rule(
        "whitelist",
        {"signals": {"tokenFilterMode": "whitelist", "tokenList": [TOKEN_B]}},
        "skipped",
        f"token {TOKEN_A} is not on the agent's whitelist",
    ),
    Rule(
        "market_cap",
        {"signals": {"marketCapMin": 1000000}},
        "skipped",
        "market cap 500000 USD is below marketCapMin 1000000",
    ),
    Rule(
        "liquidity",
        {"signals": {"liquidityMax": 10000}},
        "skipped",
        "liquidity 50000 USD is above liquidityMax 10000",
    ),
    Rule(
        "holders",
        {"signals": {"holderCountMin": 5000}},
        "skipped",
        "holder count 1200 is below holderCountMin 5000",
    ),
    Rule(
        "low_balance",
        None,
        "skipped",
        "SOL balance 0.3 is below minimumAgentBalance 0.5",
        deposit=Decimal("0.3"),
    ),
    Rule(
        "live_mode",
        None,
        "failed",
        "live trading is not available in this worker",
        {"trading_mode": "live"},
    ),
    Rule(
        "invalid_config",
        {"signals": {"minScore": "high"}},
        "failed",
        "invalid trading_config: signals.minScore: Input should be a valid integer, unable to "
        "parse string as an integer",
    ),
]


@dataclass
class RulesRun:
    executions: dict[str, asyncpg.Record]
    extra: dict[str, asyncpg.Record]
    violations: list[Any]


@pytest.fixture(scope="module")
async def rules_run(services: Services, template_db: str) -> AsyncIterator[RulesRun]:
    """One worker run over signals that exercise every decision rule once."""
    db_url = await create_database(services, template_db)
    topics = await create_test_topics(services)
    conn = await asyncpg.connect(db_url)
    try:
        await set_sol_price(conn, "100")
        main = await make_account(
            conn, [r.config for r in RULES], deposits=[r.deposit for r in RULES]
        )
        names = {}
        for rule, agent in zip(RULES, main.agents, strict=True):
            names[agent.agent_id] = rule.name
            if rule.agent_kwargs:
                if "automated_simulation" in rule.agent_kwargs:
                    await conn.execute(
                        "UPDATE agents SET automated_trading_simulation = false WHERE id = $1",
                        agent.agent_id,
                    )
                if "trading_mode" in rule.agent_kwargs:
                    await conn.execute(
                        "UPDATE agents SET trading_mode = 'live' WHERE id = $1", agent.agent_id
                    )
        # Agents whose rule needs a signal of its own or an earlier trade.
        no_wallet_user = await accounts.create_user(conn, f"nw{uuid.uuid4().hex[:8]}@t.local")
        no_wallet_agent = await conn.fetchval(
            "INSERT INTO agents (user_id, name) VALUES ($1, 'no wallet') RETURNING id",
            no_wallet_user,
        )
        metrics_missing = await make_account(conn, [{"signals": {"marketCapMin": 1}}])
        holds = await make_account(conn, [None])
        limit = await make_account(conn, [{"purchaseLimits": {"maxOpenPositions": 1}}])
        no_price = await make_account(conn, [None])
        sizing = await make_account(conn, [None], deposit_sol=Decimal("0.5"))
        settings = make_settings(services, db_url, topics)
        async with running_worker(settings):
            await publish(
                services.kafka_bootstrap,
                topics.signals,
                [
                    signal_message(main.user_id, signal_strength=3, **METRICS),
                    signal_message(no_wallet_user),
                    signal_message(metrics_missing.user_id),
                    signal_message(holds.user_id, idempotency_key="first"),
                    signal_message(holds.user_id, idempotency_key="second"),
                    signal_message(limit.user_id, TOKEN_B),
                    signal_message(limit.user_id, TOKEN_A),
                    signal_message(no_price.user_id, TOKEN_C, price_usd=None),
                    signal_message(sizing.user_id),
                ],
            )
            await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", len(RULES) + 8)
        rows = await conn.fetch("SELECT * FROM signal_executions ORDER BY signal_id, agent_id")
        executions = {names[r["agent_id"]]: r for r in rows if r["agent_id"] in names}
        by_agent: dict[Any, list[asyncpg.Record]] = {}
        for r in rows:
            by_agent.setdefault(r["agent_id"], []).append(r)
        extra = {
            "no_wallet": by_agent[no_wallet_agent][0],
            "metrics_missing": by_agent[metrics_missing.agents[0].agent_id][0],
            "holds_first": by_agent[holds.agents[0].agent_id][0],
            "holds": by_agent[holds.agents[0].agent_id][1],
            "limit_first": by_agent[limit.agents[0].agent_id][0],
            "max_positions": by_agent[limit.agents[0].agent_id][1],
            "no_price": by_agent[no_price.agents[0].agent_id][0],
            "sizing": by_agent[sizing.agents[0].agent_id][0],
        }
        yield RulesRun(executions, extra, await find_violations(conn))
    finally:
        await conn.close()
        await drop_database(services, db_url)
        await delete_topics(
            services.kafka_bootstrap, [topics.signals, topics.prices, topics.dlq, topics.commands]
        )


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
async def test_each_rule_gives_its_status_and_reason(rules_run: RulesRun, rule: Rule) -> None:
    row = rules_run.executions[rule.name]
    assert (row["status"], row["error"]) == (rule.status, rule.reason)
    assert (row["transaction_id"] is not None) == (rule.status == "success")


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("no_wallet", "failed", "the agent has no simulation wallet"),
        (
            "metrics_missing",
            "skipped",
            "the signal has no market cap but the agent sets marketCapMin",
        ),
        ("holds_first", "success", None),
        ("holds", "skipped", f"the agent already holds a position in token {TOKEN_A}"),
        ("limit_first", "success", None),
        (
            "max_positions",
            "skipped",
            "the agent has 1 open positions, at its maxOpenPositions limit of 1",
        ),
        (
            "no_price",
            "failed",
            f"no USD price for token {TOKEN_C}: the signal carries none and "
            "no price tick for it has arrived",
        ),
    ],
)
async def test_rules_that_need_their_own_signal(
    rules_run: RulesRun, name: str, status: str, reason: str | None
) -> None:
    row = rules_run.extra[name]
    assert (row["status"], row["error"]) == (status, reason)


async def test_a_size_that_would_break_the_minimum_balance_fails(rules_run: RulesRun) -> None:
    row = rules_run.extra["sizing"]
    assert row["status"] == "failed"
    assert "0.5" in row["error"]


async def test_the_ledger_holds_after_every_rule(rules_run: RulesRun) -> None:
    assert rules_run.violations == []


async def test_one_idempotency_key_three_times_is_one_signal(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, [None, None, None])
    await set_sol_price(db_conn)
    message = signal_message(account.user_id, idempotency_key="same-every-time")
    async with running_worker(make_settings(services, db_url, topics)):
        await publish(services.kafka_bootstrap, topics.signals, [message, message, message])
        await wait_for_count(
            db_url,
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1",
            3,
            topics.signals,
        )
    assert await db_conn.fetchval("SELECT count(*) FROM trading_signals") == 1
    assert await db_conn.fetchval("SELECT count(*) FROM signal_executions") == 3
    assert (
        await db_conn.fetchval(
            "SELECT count(*) FROM agent_transactions WHERE transaction_type = 'SWAP'"
        )
        == 3
    )
    assert await find_violations(db_conn) == []


async def test_replaying_from_the_start_writes_nothing_new(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, [None, None])
    await set_sol_price(db_conn)
    # No idempotency keys: the Kafka coordinates are the keys.
    messages = [signal_message(account.user_id, token) for token in (TOKEN_A, TOKEN_B, TOKEN_C)]
    settings = make_settings(services, db_url, topics)
    async with running_worker(settings):
        await publish(services.kafka_bootstrap, topics.signals, messages)
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 6)
    before = await _table_counts(db_conn)
    for partition in range(3):
        await set_offset(db_conn, topics.group, topics.signals, partition, 0)
    async with running_worker(settings):
        await wait_for_count(
            db_url,
            "SELECT count(*) FROM consumer_offsets WHERE topic = $1 "
            "AND updated_at > now() - interval '1 minute' AND next_offset > 0",
            1,
            topics.signals,
        )
        await wait_for_count(
            db_url,
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1",
            3,
            topics.signals,
        )
    assert await _table_counts(db_conn) == before
    assert await find_violations(db_conn) == []


async def _table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    tables = [
        "trading_signals",
        "signal_executions",
        "agent_transactions",
        "agent_positions",
        "agent_balances",
    ]
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


BAD_RECORDS: list[tuple[str, bytes, str]] = [
    ("not_json", b"this is not json {", "not JSON"),
    ("array", b"[1, 2, 3]", "a signal must be a JSON object, not an array"),
    (
        "wrong_types",
        b'{"user_id": 5, "token_address": 7, "signal_type": [], "signal_strength": "5x"}',
        "invalid signal",
    ),
    ("strength_7", None, "signal_strength: Input should be less than or equal to 5"),  # type: ignore[list-item]
    ("short_token", None, "token_address"),  # type: ignore[list-item]
    ("unknown_user", None, "unknown user_id"),  # type: ignore[list-item]
    ("huge_string", None, "activation_reason"),  # type: ignore[list-item]
]


async def test_bad_records_go_to_the_dead_letter_topic_and_valid_ones_go_through(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, [None])
    await set_sol_price(db_conn)
    user = str(account.user_id)
    import json

    def signal(**fields: Any) -> bytes:
        return json.dumps(signal_message(account.user_id, **fields)).encode()

    bad = {
        "not_json": b"this is not json {",
        "array": b"[1, 2, 3]",
        "wrong_types": b'{"user_id": 5, "token_address": 7, "signal_type": [], '
        b'"signal_strength": "5x"}',
        "strength_7": signal(signal_strength=7),
        "short_token": signal(token_address="abc"),
        "unknown_user": json.dumps(signal_message(uuid.uuid4())).encode(),
        "huge_string": signal(activation_reason="x" * 1_000_000),
    }
    reasons = {
        "not_json": "not JSON",
        "array": "a signal must be a JSON object, not an array",
        "wrong_types": "signal_strength: Input should be a valid integer",
        "strength_7": "signal_strength: Input should be less than or equal to 5",
        "short_token": "token_address: must be a Solana mint address",
        "unknown_user": "unknown user_id",
        "huge_string": "activation_reason: String should have at most 2000 characters",
    }
    values: list[bytes] = []
    for i, raw in enumerate(bad.values()):
        values.append(
            signal(idempotency_key=f"valid-{i}", token_address=[TOKEN_A, TOKEN_B, TOKEN_C][i % 3])
        )
        values.append(raw)
    async with running_worker(make_settings(services, db_url, topics)):
        await publish(
            services.kafka_bootstrap, topics.signals, values, key=lambda _v: user.encode()
        )
        dead = await read_topic(services.kafka_bootstrap, topics.dlq, len(bad))
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", len(bad))
    assert len(dead) == len(bad)
    by_value = {r.value: r for r in dead}
    for name, raw in bad.items():
        record = by_value[raw]
        headers = {k: v.decode() for k, v in record.headers}
        assert reasons[name] in headers["error"], (name, headers["error"])
        assert headers["original-topic"] == topics.signals
        assert int(headers["original-offset"]) >= 0
        assert record.key == user.encode()
    # Nothing of a bad record reached the tables: only the valid signals are there.
    keys = {
        r["idempotency_key"]
        for r in await db_conn.fetch("SELECT idempotency_key FROM trading_signals")
    }
    assert keys == {f"valid-{i}" for i in range(len(bad))}
    assert await find_violations(db_conn) == []


async def test_text_is_stored_verbatim(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    account = await make_account(db_conn, [None])
    await set_sol_price(db_conn)
    nasty = 'Robert\'); DROP TABLE users;-- "quoted" \\back\\slash ünïcødé 🚀 SELECT * FROM x'
    message = signal_message(
        account.user_id,
        signal_type=nasty[:50],
        symbol=nasty[:50],
        activation_reason=nasty,
        source=nasty[:100],
        idempotency_key=nasty,
    )
    async with running_worker(make_settings(services, db_url, topics)):
        await publish(services.kafka_bootstrap, topics.signals, [message])
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 1)
    row = await db_conn.fetchrow("SELECT * FROM trading_signals")
    assert row is not None
    assert row["signal_type"] == nasty[:50].strip()
    assert row["symbol"] == nasty[:50].strip()
    assert row["activation_reason"] == nasty
    assert row["source"] == nasty[:100]
    assert row["idempotency_key"] == nasty
    assert (
        await db_conn.fetchval(
            "SELECT output_symbol FROM agent_transactions WHERE transaction_type = 'SWAP'"
        )
        == nasty[:50].strip()
    )
    assert await db_conn.fetchval("SELECT count(*) FROM users") == 1


async def test_buy_writes_the_amounts_worked_out_by_hand(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    # Randomisation off, so the size is the tier's max: 6 SOL is the medium tier (max 1.0),
    # 1 SOL the small tier (max 0.1). Network fee 0.000005 SOL, protocol fee 25 bps.
    off = {"positionCalculator": {"randomization": {"enabled": False}}}
    account = await make_account(db_conn, [off, off], deposits=[Decimal(6), Decimal(1)])
    await set_sol_price(db_conn, "200")
    settings = make_settings(services, db_url, topics, sim_protocol_fee_bps=Decimal(25))
    message = signal_message(account.user_id, TOKEN_A, price_usd="0.04", symbol="HAND")
    async with running_worker(settings):
        await publish(services.kafka_bootstrap, topics.signals, [message])
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 2)
    medium, small = account.agents
    # Token price in SOL: 0.04 / 200 = 0.0002.
    # Medium: size 1.0 SOL -> 1.0 / 0.0002 = 5000 tokens; protocol fee 1.0 * 25/10000 =
    # 0.0025; debit 1.0 + 0.000005 + 0.0025 = 1.002505; SOL left 6 - 1.002505 = 4.997495;
    # USD value 1.0 * 200 = 200.
    # Small: size 0.1 SOL -> 500 tokens; protocol fee 0.00025; debit 0.100255; left
    # 0.899745; USD value 20.
    cases = [
        (medium, "1.0", "5000", "0.0025", "1.002505", "4.997495", "200"),
        (small, "0.1", "500", "0.00025", "0.100255", "0.899745", "20"),
    ]
    for agent, size, tokens, pfee, debit, left, usd in cases:
        tx = await db_conn.fetchrow(
            "SELECT * FROM agent_transactions WHERE agent_id = $1 AND transaction_type = 'SWAP'",
            agent.agent_id,
        )
        assert tx is not None
        assert tx["input_mint"] == SOL_MINT and tx["input_symbol"] == "SOL"
        assert tx["input_amount"] == Decimal(size)
        assert tx["input_price"] == 1
        assert tx["output_mint"] == TOKEN_A and tx["output_symbol"] == "HAND"
        assert tx["output_amount"] == Decimal(tokens)
        assert tx["output_price"] == Decimal("0.0002")
        assert tx["network_fee_sol"] == Decimal("0.000005")
        assert tx["protocol_fee_sol"] == Decimal(pfee)
        assert tx["fees"] == Decimal("0.000005") + Decimal(pfee)
        assert tx["transaction_value_usd"] == Decimal(usd)
        assert tx["signal_id"] is not None
        assert (tx["is_dca"], tx["is_take_profit"]) == (False, False)
        balances = {
            r["token_address"]: r["balance"]
            for r in await db_conn.fetch(
                "SELECT token_address, balance FROM agent_balances WHERE agent_id = $1",
                agent.agent_id,
            )
        }
        assert balances == {SOL_MINT: Decimal(left), TOKEN_A: Decimal(tokens)}
        pos = await db_conn.fetchrow(
            "SELECT * FROM agent_positions WHERE agent_id = $1", agent.agent_id
        )
        assert pos is not None
        assert pos["purchase_transaction_id"] == tx["id"]
        assert pos["purchase_price"] == Decimal("0.0002")
        assert pos["purchase_amount"] == Decimal(tokens)
        assert pos["remaining_amount"] == Decimal(tokens)
        assert pos["total_invested_sol"] == Decimal(debit)
        assert pos["current_stop_loss_percentage"] == Decimal(-32)
        assert pos["peak_price"] == Decimal("0.0002")
        assert pos["lowest_price"] == Decimal("0.0002")
        execution = await db_conn.fetchrow(
            "SELECT * FROM signal_executions WHERE agent_id = $1", agent.agent_id
        )
        assert execution is not None
        assert (execution["status"], execution["transaction_id"]) == ("success", tx["id"])
    assert await find_violations(db_conn) == []


async def test_a_record_the_database_rejects_is_dead_lettered_and_the_rest_go_through(
    services: Services, db_url: str, topics: Topics, db_conn: asyncpg.Connection
) -> None:
    # A constraint that only this test's database has: the record breaks it at insert time.
    await db_conn.execute(
        "ALTER TABLE trading_signals ADD CONSTRAINT no_poison CHECK (symbol <> 'POISON')"
    )
    account = await make_account(db_conn, [None])
    await set_sol_price(db_conn)
    messages = [
        signal_message(account.user_id, TOKEN_A, symbol="OK1"),
        signal_message(account.user_id, TOKEN_B, symbol="POISON"),
        signal_message(account.user_id, TOKEN_C, symbol="OK2"),
    ]
    async with running_worker(make_settings(services, db_url, topics)):
        await publish(services.kafka_bootstrap, topics.signals, messages)
        [dead] = await read_topic(services.kafka_bootstrap, topics.dlq, 1)
        await wait_for_count(db_url, "SELECT count(*) FROM signal_executions", 2)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["error"].startswith("database rejected it: CheckViolationError")
    assert b'"POISON"' in dead.value
    symbols = {r["symbol"] for r in await db_conn.fetch("SELECT symbol FROM trading_signals")}
    assert symbols == {"OK1", "OK2"}
    assert await find_violations(db_conn) == []
