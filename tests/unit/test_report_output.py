"""`report` and `replay` output of names anybody can set: no terminal escapes, no forged
rows, no spreadsheet formulas (issue 20, item 11)."""

from __future__ import annotations

import argparse
import csv
import io
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from worker.commands.options import chart_arg, time_arg
from worker.commands.report import render
from worker.domain.results import AgentResult, Close, summarize

EVIL = "\x1b[2J\x1b[Hok\nforged-row  1/0/0  9  100.0  +1000\r\u202eevil"


def _result(name: str) -> AgentResult:
    return summarize(
        uuid.UUID(int=1),
        name,
        executions={"success": 1},
        closes=[Close(Decimal("-1.5"), Decimal(3), 60.0)],
        holdings=[],
        prices_sol={},
        balance_sol=Decimal("8.5"),
    )


def test_a_table_shows_control_characters_in_names_as_escapes() -> None:
    table = render([("", _result(EVIL)), ("=cmd|' /C calc'!A0", _result("b"))], "table")
    assert not any(c in table for c in "\x1b\r\u202e")
    results, figures = table.split("\n\n")
    for lines in (results.split("\n"), figures.split("\n")):
        assert len(lines) == 3  # the header and two rows: no forged one
        assert lines[1].startswith("\\x1b[2J\\x1b[Hok\\nforged-row")
        assert "\\r\\u202eevil" in lines[1]


def test_csv_neutralises_formula_cells_but_keeps_negative_numbers() -> None:
    rows = [
        ("", _result('=HYPERLINK("http://x","click")')),
        ("", _result("+1")),
        ("", _result("-2")),
        ("", _result("@SUM(A1)")),
        ("", _result("\tx")),
        ("", _result("\rx")),
        ("", _result("plain - name")),
    ]
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"), newline="")))
    assert [r["name"] for r in parsed] == [
        "'=HYPERLINK(\"http://x\",\"click\")", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx",
        "plain - name",
    ]  # fmt: skip
    assert {r["realised_pnl_sol"] for r in parsed} == {"-1.5"}  # a number stays a number
    labelled = list(csv.DictReader(io.StringIO(render([("-x.json", _result("a"))], "csv"))))
    assert labelled[0]["label"] == "'-x.json"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0001-01-01", "'0001-01-01' is not between 1970-01-01 and 9999-12-30"),
        ("9999-12-31T23:00-05:00", "not a time: '9999-12-31T23:00-05:00'"),
        ("yesterday", "not a time: 'yesterday'"),
    ],
)
def test_a_time_outside_what_messages_carry_is_refused(text: str, error: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=error):
        time_arg(text)
    assert time_arg("2026-11-01T12:00+02:00") == datetime(2026, 11, 1, 10, tzinfo=UTC)


def test_a_chart_file_must_be_a_kind_matplotlib_writes(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"written as \.png, \.svg, \.pdf"):
        chart_arg(str(tmp_path / "chart.txt"))
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        chart_arg(str(folder))
    assert chart_arg(str(tmp_path / "c.SVG")) == tmp_path / "c.SVG"
