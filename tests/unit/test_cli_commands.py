"""The command line's commands built from flags (no services): each publishes the wire
model's JSON, validated as the worker reads it, and a bad flag is refused in one line."""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from worker.__main__ import _parser
from worker.commands.agent_commands import (
    agent_command,
    complete_config,
    create_agent,
    create_user,
    pretty_json,
    render_agents,
)
from worker.commands.command_client import Outgoing, describe_changes, outcome_line
from worker.db.agent_listing import AgentListing, AgentOwner, CommandResult
from worker.domain.config import DEFAULT_TRADING_CONFIG, resolve_config
from worker.domain.config_reading import OversizedConfig
from worker.domain.exact_json import loads_exact
from worker.errors import UsageError, WorkerError
from worker.messages import (
    ClosePositionsV1,
    CreateAgentV1,
    CreateUserV1,
    DepositV1,
    PatchConfigV1,
    PauseV1,
    RenameAgentV1,
    ReplaceConfigV1,
    ResumeV1,
    WithdrawV1,
    decode_command,
)

MINT = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
OWNER = AgentOwner(uuid.uuid4(), uuid.uuid4(), "Momentum")


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


def _on_agent(*argv: str) -> Outgoing:
    args = _args(*argv)
    action = args.agents_command if args.command == "agents" else args.positions_command
    return agent_command(args, action, OWNER)


def _sent(outgoing: Outgoing) -> dict[str, object]:
    """The record value as the worker reads it (and the JSON object itself)."""
    assert decode_command(outgoing.raw) == outgoing.command
    value = loads_exact(outgoing.raw.decode())
    assert isinstance(value, dict)
    return value


def test_users_create_makes_a_user_id_and_a_key_and_names_the_user() -> None:
    out = create_user(_args("users", "create", "--email", "ann@example.com"))
    assert isinstance(out.command, CreateUserV1)
    assert out.command.email == "ann@example.com"
    assert out.key.startswith("cli-") and len(out.key) == 36
    assert out.subject == f"user {out.command.user_id}"
    assert f"--user-id {out.command.user_id}" in out.again and f"--key {out.key}" in out.again
    assert _sent(out)["command"] == "create_user"


def test_users_create_keeps_the_given_id_and_key() -> None:
    user_id = uuid.uuid4()
    out = create_user(
        _args("users", "create", "--email", "a@b.io", "--user-id", str(user_id), "--key", "k1")
    )
    assert (out.command.user_id, out.key) == (user_id, "k1")
    # A re-run with --key is the same command: the same record value.
    again = create_user(
        _args("users", "create", "--email", "a@b.io", "--user-id", str(user_id), "--key", "k1")
    )
    assert again.raw == out.raw


def test_a_bad_email_is_refused_here_in_one_line() -> None:
    with pytest.raises(UsageError, match=r"^invalid create_user command: email: ") as caught:
        create_user(_args("users", "create", "--email", "  "))
    assert "\n" not in str(caught.value)


def test_agents_create_without_config_leaves_the_default_to_the_worker() -> None:
    user_id = uuid.uuid4()
    out = create_agent(_args("agents", "create", "--user", str(user_id), "--name", "Steady"))
    assert isinstance(out.command, CreateAgentV1)
    sent = _sent(out)
    assert "config" not in sent and "sol" not in sent and "agent_id" not in sent
    assert (sent["user_id"], sent["name"]) == (str(user_id), "Steady")
    assert sent["trading_mode"] == "simulation"


def test_agents_create_sends_the_config_file_with_its_numbers_exact(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"purchaseLimits": {"minimumAgentBalance": 0.10000000000000000001}}')
    agent_id = uuid.uuid4()
    out = create_agent(
        _args("agents", "create", "--user", str(uuid.uuid4()), "--name", "A", "--mode", "live",
              "--config", str(config), "--sol", "12.5", "--agent-id", str(agent_id))
    )  # fmt: skip
    assert isinstance(out.command, CreateAgentV1)
    assert out.command.config == {
        "purchaseLimits": {"minimumAgentBalance": Decimal("0.10000000000000000001")}
    }
    assert b"0.10000000000000000001" in out.raw
    assert (out.command.sol, out.command.agent_id) == (Decimal("12.5"), agent_id)
    assert out.command.trading_mode == "live"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ("{", "not JSON"),
    ],
)
def test_agents_create_refuses_a_config_file_that_is_not_one_json_object(
    tmp_path: Path, text: str, reason: str
) -> None:
    config = tmp_path / "c.json"
    config.write_text(text)
    with pytest.raises(UsageError, match=reason) as caught:
        create_agent(
            _args("agents", "create", "--user", str(uuid.uuid4()), "--name", "A",
                  "--config", str(config))
        )  # fmt: skip
    assert str(caught.value).startswith(f"--config {config}: ")


def test_a_missing_config_file_is_named() -> None:
    with pytest.raises(UsageError, match=r"^--config /nonexistent/x.json: no such file$"):
        create_agent(
            _args("agents", "create", "--user", str(uuid.uuid4()), "--name", "A",
                  "--config", "/nonexistent/x.json")
        )  # fmt: skip


@pytest.mark.parametrize("sol", ["0", "-1", "abc", "1_000", "1e400"])
def test_agents_create_refuses_a_starting_sol_the_worker_would_refuse(sol: str) -> None:
    with pytest.raises(UsageError, match=r"^invalid create_agent command: sol: "):
        create_agent(
            _args("agents", "create", "--user", str(uuid.uuid4()), "--name", "A", "--sol", sol)
        )


def test_every_agent_command_is_keyed_by_the_agents_user_and_names_the_agent(
    tmp_path: Path,
) -> None:
    patch = tmp_path / "p.json"
    patch.write_text('{"stopLoss": {"defaultPercentage": -20}, "dca": null}')
    full = tmp_path / "full.json"
    full.write_text(json.dumps(DEFAULT_TRADING_CONFIG))
    agent = str(OWNER.agent_id)
    cases: list[tuple[tuple[str, ...], type[object]]] = [
        (("agents", "config", agent, "--set", str(full)), ReplaceConfigV1),
        (("agents", "config", agent, "--patch", f"@{patch}"), PatchConfigV1),
        (("agents", "config", agent, "--patch", '{"dca": {"enabled": true}}'), PatchConfigV1),
        (("agents", "pause", agent), PauseV1),
        (("agents", "resume", agent, "--mode", "live"), ResumeV1),
        (("agents", "fund", agent, "1.5"), DepositV1),
        (("agents", "withdraw", agent, "0.25"), WithdrawV1),
        (("agents", "rename", agent, "New name"), RenameAgentV1),
        (("positions", "close", agent, "--token", MINT), ClosePositionsV1),
        (("positions", "close", agent, "--all"), ClosePositionsV1),
    ]
    for argv, model in cases:
        out = _on_agent(*argv)
        assert type(out.command) is model, argv
        assert out.command.user_id == OWNER.user_id
        assert out.command.model_dump()["agent_id"] == OWNER.agent_id
        assert out.subject == f"agent {OWNER.agent_id} (Momentum)"
        _sent(out)


def test_agent_commands_carry_what_their_flags_say() -> None:
    agent = str(OWNER.agent_id)
    patch = _on_agent("agents", "config", agent, "--patch", '{"stopLoss": null, "x": 1.50}')
    assert isinstance(patch.command, PatchConfigV1)
    assert patch.command.patch == {"stopLoss": None, "x": Decimal("1.50")}
    pause = _on_agent("agents", "pause", agent)
    assert isinstance(pause.command, PauseV1) and pause.command.mode == "all"
    resume = _on_agent("agents", "resume", agent, "--mode", "simulation")
    assert isinstance(resume.command, ResumeV1) and resume.command.mode == "simulation"
    fund = _on_agent("agents", "fund", agent, "1.5", "--key", "top-up-1")
    assert isinstance(fund.command, DepositV1)
    assert (fund.command.amount, fund.key) == (Decimal("1.5"), "top-up-1")
    close = _on_agent("positions", "close", agent, "--all")
    assert isinstance(close.command, ClosePositionsV1) and close.command.token_address is None
    one = _on_agent("positions", "close", agent, "--token", MINT)
    assert isinstance(one.command, ClosePositionsV1) and one.command.token_address == MINT


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("agents", "fund", "{a}", "abc"), r"^invalid deposit command: amount: "),
        (("agents", "withdraw", "{a}", "-1"), r"^invalid withdraw command: amount: "),
        (("agents", "rename", "{a}", " "), r"^invalid rename_agent command: name: "),
        (("positions", "close", "{a}", "--token", "0OIl"), r"^invalid close_positions command: "),
        (("agents", "config", "{a}", "--patch", "[1]"), r"^--patch: must be a JSON object"),
        (("agents", "config", "{a}", "--patch", "nope"), r"^--patch: not JSON"),
    ],
)
def test_a_bad_flag_of_an_agent_command_is_refused_here(
    argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        _on_agent(*(a.replace("{a}", str(OWNER.agent_id)) for a in argv))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "argv",
    [
        ("agents", "config", "{a}"),
        ("agents", "config", "{a}", "--set", "f", "--patch", "{}"),
        ("positions", "close", "{a}"),
        ("positions", "close", "{a}", "--all", "--token", MINT),
        ("agents", "fund", "not-a-uuid", "1"),
        ("agents", "pause", "{a}", "--mode", "both"),
        ("agents", "fund", "{a}", "1", "--timeout", "0"),
        ("agents", "fund", "{a}", "1", "--timeout", "nan"),
    ],
)
def test_the_parser_refuses_incomplete_or_contradictory_flags(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        _args(*(a.replace("{a}", str(OWNER.agent_id)) for a in argv))
    assert exited.value.code == 2


def test_the_timeout_and_no_wait_flags() -> None:
    args = _args("agents", "pause", str(OWNER.agent_id))
    assert (args.timeout, args.no_wait) == (30.0, False)
    args = _args("agents", "pause", str(OWNER.agent_id), "--timeout", "1.5", "--no-wait")
    assert (args.timeout, args.no_wait) == (1.5, True)


# ------------------------------------------------------------------ what the user reads


def _result(command: str, status: str, *, reason: str | None = None, changes: str | None = None,
            agent_id: uuid.UUID | None = None) -> CommandResult:  # fmt: skip
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return CommandResult(command, status, reason, agent_id, changes, at)


def test_an_applied_result_says_what_changed_in_one_line() -> None:
    out = _on_agent("agents", "fund", str(OWNER.agent_id), "1.5")
    changes = '{"balance": {"from": 10.0, "to": 11.5}, "transaction": {"type": "DEPOSIT"}}'
    line = outcome_line(out, _result("deposit", "applied", changes=changes))
    assert line == (
        f"applied: deposit agent {OWNER.agent_id} (Momentum): balance: 10 -> 11.5, "
        "transaction.type: DEPOSIT"
    )


def test_a_refused_result_gives_the_reason() -> None:
    out = _on_agent("agents", "withdraw", str(OWNER.agent_id), "99")
    line = outcome_line(out, _result("withdraw", "refused", reason="only 1.5 SOL"))
    assert line == f"refused: withdraw agent {OWNER.agent_id} (Momentum): only 1.5 SOL"


def test_a_created_agents_id_comes_from_the_result() -> None:
    out = create_agent(_args("agents", "create", "--user", str(OWNER.user_id), "--name", "N"))
    agent_id = uuid.uuid4()
    line = outcome_line(out, _result("create_agent", "applied", changes='{"name": "N"}',
                                     agent_id=agent_id))  # fmt: skip
    assert line == f"applied: create_agent user {OWNER.user_id}: agent {agent_id}; name: N"


def test_a_key_used_before_for_another_command_is_not_this_commands_result() -> None:
    out = _on_agent("agents", "pause", str(OWNER.agent_id), "--key", "k")
    line = outcome_line(out, _result("deposit", "applied", changes="{}"))
    assert line.startswith(f"refused: pause agent {OWNER.agent_id} (Momentum): the key 'k' ")
    assert "deposit" in line


def test_a_key_used_before_for_the_same_command_with_other_values_is_not_this_ones() -> None:
    out = _on_agent("agents", "fund", str(OWNER.agent_id), "1000", "--key", "k")
    stored = _on_agent("agents", "fund", str(OWNER.agent_id), "1", "--key", "k")
    result = replace(_result("deposit", "applied", changes="{}"),
                     payload=stored.command.payload_json())  # fmt: skip
    line = outcome_line(out, result)
    assert line.startswith(f"refused: deposit agent {OWNER.agent_id} (Momentum): the key 'k' ")
    assert "other values" in line
    # The same command again (a re-run): its stored result is this one's.
    again = replace(result, payload=out.command.payload_json())
    assert outcome_line(out, again).startswith("applied: deposit")


def test_changes_are_told_briefly_and_a_name_cannot_break_the_line() -> None:
    assert describe_changes(None) == "no change recorded"
    assert describe_changes("{}") == "nothing changed"
    assert describe_changes('{"a": {"b": [1, 2]}, "c": true}') == "a.b: [1,2], c: true"
    assert describe_changes('{"mode": {"old": "all", "new": null}}') == "mode: all -> null"
    long = describe_changes(json.dumps({"config": "x" * 500}))
    assert long == "config: " + "x" * 120 + "…"
    owner = AgentOwner(OWNER.agent_id, OWNER.user_id, "evil\nname\x1b[2J")
    out = agent_command(_args("agents", "pause", str(owner.agent_id)), "pause", owner)
    line = outcome_line(out, _result("pause", "applied", changes='{"x": "a\\nb"}'))
    assert "\n" not in line and "\x1b" not in line


# ---------------------------------------------------------------------- list and show


def test_show_config_is_the_complete_config_with_exact_numbers_and_round_trips() -> None:
    stored = '{"stopLoss": {"defaultPercentage": -20.50}, "mine": 1, "dca": null}'
    merged = complete_config(stored)
    assert merged["stopLoss"]["defaultPercentage"] == Decimal("-20.50")
    assert merged["stopLoss"]["mode"] == "fixed"
    assert merged["mine"] == 1  # kept: `agents lint` reports it; it is not dropped silently
    # The defaults' decimal strings are printed as the numbers they are.
    assert merged["purchaseLimits"]["minimumAgentBalance"] == Decimal("0.5")
    assert merged["takeProfit"]["levels"][0] == {
        "targetPercent": 50,
        "sellPercent": 25,
    }
    text = pretty_json(merged)
    assert loads_exact(text) == merged
    assert '"defaultPercentage": -20.50' in text
    resolve_config(loads_exact(text))  # valid as it stands: ready for `agents config --set`
    assert loads_exact(pretty_json(complete_config(None))) == complete_config("{}")


def test_show_config_of_an_unreadable_stored_config_says_why() -> None:
    with pytest.raises(WorkerError, match="over the 10-byte cap"):
        complete_config(OversizedConfig(100, 10))
    with pytest.raises(WorkerError, match="not a JSON object"):
        complete_config("[1]")


def test_the_agents_list_as_table_and_json() -> None:
    rows = [
        AgentListing(OWNER.agent_id, OWNER.user_id, "Mo\x1bmentum", "simulation", True, False,
                     Decimal("10.500000000000000000"), 2, datetime(2026, 1, 1, tzinfo=UTC)),
        AgentListing(uuid.uuid4(), OWNER.user_id, "Bare", "live", False, False, None, 0,
                     datetime(2026, 1, 2, tzinfo=UTC)),
    ]  # fmt: skip
    table = render_agents(rows, "table").splitlines()
    assert table[0].split() == ["agent", "user", "name", "mode", "simulation", "live", "SOL",
                                "open"]  # fmt: skip
    assert table[1].split() == [
        str(OWNER.agent_id), str(OWNER.user_id), "Mo\\x1bmentum", "simulation", "on", "paused",
        "10.5", "2",
    ]  # fmt: skip
    assert table[2].split()[-4:] == ["paused", "paused", "-", "0"]
    data = json.loads(render_agents(rows, "json"))
    assert data[0]["sol_balance"] == "10.5" and data[1]["sol_balance"] is None
    assert data[0]["automated_trading_live"] is False and data[0]["open_positions"] == 2
