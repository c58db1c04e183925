"""Issue 23's pure parts: the commands' wire models, exact JSON, merge patch, config checks,
and a user's commands in the one order with its signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.domain.commands import check_config, default_config_text, mode_switches
from worker.domain.config_reading import read_config
from worker.domain.exact_json import dumps_exact, loads_exact, merge_patch
from worker.errors import InvalidMessage
from worker.messages import COMMAND_NAMES, decode_command
from worker.pipeline.timeline import RANK_COMMAND, RANK_SIGNAL, RANK_SOL_TICK, Timeline

USER = "6f1c1a52-5d4e-4c0e-9b1a-1c2d3e4f5a6b"
AGENT = "7f1c1a52-5d4e-4c0e-9b1a-1c2d3e4f5a6b"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _raw(**fields: object) -> bytes:
    return json.dumps({"user_id": USER, **fields}).encode()


# ------------------------------------------------------------------ wire models


def test_every_command_decodes_with_its_fields() -> None:
    cases: dict[str, dict[str, object]] = {
        "create_user": {"email": "a@b.c"},
        "create_agent": {"name": "alpha", "sol": "1.5", "config": {"dca": {"enabled": False}}},
        "rename_agent": {"agent_id": AGENT, "name": "beta"},
        "replace_config": {"agent_id": AGENT, "config": {}},
        "patch_config": {"agent_id": AGENT, "patch": {"signals": {"minScore": 3}}},
        "pause": {"agent_id": AGENT},
        "resume": {"agent_id": AGENT, "mode": "live"},
        "deposit": {"agent_id": AGENT, "amount": 2},
        "withdraw": {"agent_id": AGENT, "amount": "0.25"},
        "close_positions": {"agent_id": AGENT},
    }
    assert sorted(cases) == sorted(COMMAND_NAMES)
    for kind, fields in cases.items():
        command = decode_command(_raw(command=kind, **fields))
        domain = command.to_domain(coordinates="c:0:7", at=T0)
        assert domain.kind == kind
        assert domain.key == "c:0:7"  # no idempotency key: the coordinates
        assert json.loads(domain.payload)["command"] == kind
    raw = _raw(command="create_agent", name="a").replace(b"}", b', "config": {"x": 1.10}}')
    create = decode_command(raw)
    # Numbers stay exact from the wire to the stored payload.
    assert create.to_domain(coordinates="c:0:1", at=T0).payload.endswith('"config":{"x":1.10}}')


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[]", "a command must be a JSON object, not an array"),
        (_raw(command="explode"), "command must be one of create_user"),
        (_raw(), "command must be one of"),
        (_raw(command="deposit", agent_id=AGENT, amount="-1"), "must be greater than 0"),
        (_raw(command="deposit", agent_id=AGENT, amount=1.5e300), "numeric(30,18)"),
        (_raw(command="withdraw", agent_id=AGENT), "amount: Field required"),
        (_raw(command="pause", agent_id=AGENT, mode="paper"), "mode"),
        (_raw(command="create_agent", name="   "), "name"),
        (_raw(command="create_user", email="x"), "email"),
        (_raw(command="close_positions", agent_id=AGENT, token_address="not base58!"), "mint"),
        (_raw(command="patch_config", agent_id=AGENT, patch=[1]), "patch"),
        (_raw(command="create_agent", name="a", trading_mode="paper"), "trading_mode"),
        # What jsonb cannot hold, anywhere in a config or patch (stored, it would fail the
        # whole transaction): an invalid dead letter saying where.
        (
            _raw(command="patch_config", agent_id=AGENT, patch={"a": {"b": "x\u0000"}}),
            "patch: must not contain NUL characters (\\u0000) (at 'a.b')",
        ),
        (_raw(command="replace_config", agent_id=AGENT, config={"k\u0000": 1}), "NUL"),
        (
            _raw(command="create_agent", name="a", config={"x": ["\ud800"]}),
            "unpaired surrogates (invalid Unicode) (at 'x[0]')",
        ),
        (
            _raw(command="patch_config", agent_id=AGENT).replace(
                b"}", b', "patch": {"x": 1e131072}}'
            ),
            "patch: holds a number PostgreSQL's numeric cannot store (at 'x')",
        ),
        (
            _raw(command="patch_config", agent_id=AGENT).replace(
                b"}", b', "patch": {"x": 1.5e-16383}}'
            ),
            "numeric cannot store",
        ),
        (
            _raw(
                command="patch_config", agent_id=AGENT, patch={"x": json.loads("[" * 64 + "]" * 64)}
            ),
            "patch: is nested more than 64 levels deep",
        ),
        # Deeper than the payload's serialiser goes (it raised while applying).
        (
            _raw(
                command="patch_config",
                agent_id=AGENT,
                patch={"x": json.loads("[" * 300 + "]" * 300)},
            ),
            "nested more than 64 levels",
        ),
    ],
)
def test_invalid_commands_are_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_command(raw)
    assert reason in str(info.value)
    assert len(str(info.value)) < 1200


# ------------------------------------------------------------------ exact JSON, merge patch


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**30), 10**30)
        | st.decimals(allow_nan=False, allow_infinity=False, places=6)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_exact_json_round_trips(value: object) -> None:
    assert loads_exact(dumps_exact(value)) == value


# RFC 7396, appendix A.
RFC_7396 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396)
def test_merge_patch_follows_rfc_7396(target: object, patch: object, result: object) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == result
    assert json.dumps(target) == before  # the target is not changed


# ------------------------------------------------------------------ configs


def test_a_config_is_checked_as_a_stored_config_is() -> None:
    defaults = check_config(None, 65_536)
    assert defaults.error is None
    assert read_config(default_config_text()).error is None
    assert '"minScore":1' in defaults.text  # numbers written as numbers, complete
    bad = check_config({"takeProfit": {"mode": "custom", "levels": "x"}}, 65_536)
    assert bad.error is not None and bad.error.startswith("invalid trading_config")
    unknown = check_config({"colour": "red"}, 65_536)
    assert unknown.error is None and unknown.unknown_keys == ("colour",)
    big = check_config({"tokenNotes": "x" * 100}, 64)
    assert big.error is not None and "AGENT_CONFIG_MAX_BYTES" in big.error


def test_pause_and_resume_set_the_switches_of_their_mode() -> None:
    assert mode_switches("all", on=False) == (False, False)
    assert mode_switches("simulation", on=False) == (False, None)
    assert mode_switches("live", on=True) == (None, True)


# ------------------------------------------------------------------ the one order


def _line(*sources: tuple[str, int, int | None]) -> Timeline[str]:
    line: Timeline[str] = Timeline(timedelta(0))
    for source, rank, group in sources:
        line.open(source, lowest_rank=rank, last_at=None, group=group)
    return line


def test_a_users_command_waits_for_its_signals_partition_not_for_others() -> None:
    line = _line(
        ("signals-0", RANK_SIGNAL, 0),
        ("signals-1", RANK_SIGNAL, 1),
        ("commands-0", RANK_COMMAND, 0),
        ("prices-0", RANK_SOL_TICK, None),
    )
    line.place("commands-0", 0, T0 + timedelta(seconds=5), RANK_COMMAND, (0,), "pause")
    # signals-0 may still bring a signal before the command: the command waits.
    line.promise({"prices-0": T0 + timedelta(seconds=9), "signals-1": T0})
    assert line.release() == []
    assert line.waiting_on() == ["signals-0"]
    # Its own users' signals partition says nothing earlier can come: it goes, while
    # signals-1 (other users) is still behind.
    line.promise({"signals-0": T0 + timedelta(seconds=9)})
    assert [e.payload for e in line.release()] == ["pause"]


def test_a_signal_and_a_command_of_one_user_at_one_time_go_signal_first() -> None:
    line = _line(("signals-0", RANK_SIGNAL, 0), ("commands-0", RANK_COMMAND, 0))
    at = T0 + timedelta(seconds=1)
    line.place("commands-0", 0, at, RANK_COMMAND, (0,), "command")
    line.place("signals-0", 0, at, RANK_SIGNAL, (0,), "signal")
    line.promise(dict.fromkeys(["signals-0", "commands-0"], T0 + timedelta(seconds=5)))
    assert [e.payload for e in line.release()] == ["signal", "command"]


def test_a_command_after_its_groups_released_signal_is_decided_after_it() -> None:
    line = _line(("signals-0", RANK_SIGNAL, 0), ("commands-0", RANK_COMMAND, 0))
    line.place("signals-0", 0, T0 + timedelta(seconds=3), RANK_SIGNAL, (0,), "signal")
    line.promise(dict.fromkeys(["signals-0", "commands-0"], T0 + timedelta(seconds=5)))
    assert [e.payload for e in line.release()] == ["signal"]
    # A command stamped before the released signal comes late: decided after it, never
    # before what its user's order has applied.
    late = line.place("commands-0", 0, T0 + timedelta(seconds=1), RANK_COMMAND, (0,), "cmd")
    assert late.late and late.at > T0 + timedelta(seconds=3)


def test_decimals_in_payloads_never_pass_through_float() -> None:
    command = decode_command(_raw(command="deposit", agent_id=AGENT, amount="0.1"))
    assert command.to_domain(coordinates="c:0:1", at=T0).amount == Decimal("0.1")
