"""Events sent cut down (larger than EVENTS_TOPIC accepts): what the published schema says
of them, and what `notify` posts for one."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from worker.domain.notify import event_text
from worker.messages import EVENT_ADAPTER, CommandResultEventV1

BASE = {
    "event_id": str(uuid.uuid4()),
    "user_id": str(uuid.uuid4()),
    "event_at": "2026-12-07T10:00:00+00:00",
}
NOT_TRADED = {
    **BASE,
    "type": "executions_not_traded",
    "signal_id": 7,
    "signal_key": "s-7",
    "token_address": "TokA",
    "token_symbol": "TOK",
}
CUT = {"fields": ["executions"], "counts": {"executions": 3120}, "max_event_bytes": 1044492}


def test_a_cut_down_event_is_valid_and_says_what_was_left_out() -> None:
    event = EVENT_ADAPTER.validate_python({**NOT_TRADED, "truncated": CUT})
    assert event.truncated is not None
    assert event.truncated.counts == {"executions": 3120}
    assert getattr(event, "executions", "absent") is None


def test_a_whole_event_is_valid_as_before() -> None:
    executions = [{"agent_id": str(uuid.uuid4()), "status": "skipped", "reason": "no SOL"}]
    event = EVENT_ADAPTER.validate_python({**NOT_TRADED, "executions": executions})
    assert event.truncated is None


@pytest.mark.parametrize(
    "truncated",
    [None, {"fields": ["changes"], "counts": {"changes": 2}, "max_event_bytes": 100_000}],
)
def test_a_list_is_absent_only_when_truncated_names_it(truncated: object) -> None:
    value = {**NOT_TRADED, **({"truncated": truncated} if truncated else {})}
    with pytest.raises(ValidationError, match="executions: absent"):
        EVENT_ADAPTER.validate_python(value)


def test_a_command_result_without_its_changes_needs_truncated_too() -> None:
    command = {
        **BASE,
        "type": "command_result",
        "agent_id": None,
        "command": "replace_config",
        "idempotency_key": "k",
        "status": "applied",
        "reason": None,
        "source_record": None,
    }
    with pytest.raises(ValidationError, match="changes: absent"):
        EVENT_ADAPTER.validate_python(command)
    cut = {"fields": ["changes"], "counts": {"changes": 40}, "max_event_bytes": 40_000}
    assert EVENT_ADAPTER.validate_python({**command, "truncated": cut}).truncated is not None
    whole = EVENT_ADAPTER.validate_python({**command, "changes": None})
    assert isinstance(whole, CommandResultEventV1) and whole.changes is None


def test_notify_says_how_many_agents_and_where_their_reasons_are() -> None:
    text = event_text(json.loads(json.dumps({**NOT_TRADED, "truncated": CUT})))
    assert "3,120 agents did not buy TOK" in text
    assert "signal_executions" in text
