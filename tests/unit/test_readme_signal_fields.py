"""The README's table of signal fields against the wire model (`SignalV1`) and the flags of
`signal-worker publish`: the same fields, the same required ones, and no default for the flag
of a required field (issue 25, item 9)."""

from __future__ import annotations

import argparse
import re
import uuid
from pathlib import Path

import pytest

from tests.helpers.books import TOKEN_A
from worker.__main__ import _parser
from worker.commands.publish import _signal_from_flags
from worker.errors import UsageError
from worker.messages import SignalV1

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = "| field | | flag of `publish` |"


def _table() -> list[list[str]]:
    """The rows of the signal table in 'Publishing a signal': cells, stripped."""
    section = README.read_text(encoding="utf-8").split("\n## Publishing a signal\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    lines = section.splitlines()
    start = lines.index(HEADER)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _rows() -> dict[str, tuple[bool, list[str]]]:
    """Per field: whether the README says it is required, and its flags."""
    fields: dict[str, tuple[bool, list[str]]] = {}
    for name_cell, rule, flag_cell in _table():
        flags = [f for f in _names(flag_cell) if f.startswith("--")]
        for name in _names(name_cell):
            assert name not in fields, f"{name} twice in the README's table"
            fields[name] = (rule.startswith("required"), flags)
    return fields


def _publish() -> argparse.ArgumentParser:
    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    publish: argparse.ArgumentParser = subparsers.choices["publish"]
    return publish


def test_the_readme_table_names_exactly_the_wire_models_fields() -> None:
    assert sorted(_rows()) == sorted(SignalV1.model_fields)


def test_the_readme_table_says_which_fields_are_required_as_the_wire_model_does() -> None:
    required = {name for name, field in SignalV1.model_fields.items() if field.is_required()}
    assert {name for name, (is_required, _) in _rows().items() if is_required} == required


@pytest.mark.parametrize("name", sorted(SignalV1.model_fields))
def test_each_field_has_the_publish_flag_the_readme_names(name: str) -> None:
    is_required, flags = _rows()[name]
    actions = {s: a for a in _publish()._actions for s in a.option_strings}
    [flag] = [f for f in flags if f == "--" + name.replace("_", "-")]
    assert flag in actions, flag
    if is_required:
        # Required in JSON, required as a flag: no value made up for the user.
        assert actions[flag].default is None, (flag, actions[flag].default)


def test_publishing_from_flags_without_a_signal_type_or_strength_is_a_usage_error() -> None:
    base = ["publish", "--user-id", str(uuid.uuid4()), "--token-address", TOKEN_A]
    for missing in (["--signal-strength", "3"], ["--signal-type", "manual"]):
        args = _parser().parse_args([*base, *missing])
        with pytest.raises(UsageError, match="--signal-type and --signal-strength"):
            _signal_from_flags(args)
    args = _parser().parse_args([*base, "--signal-type", "manual", "--signal-strength", "3"])
    assert _signal_from_flags(args)
